"""The small helpers every layer shares: devices, message wording, PSNR, atomic folders."""

import math
import os
import stat
from enum import Enum

import pytest
import torch

from resample_cli.devices import DeviceUnavailableError, resolve_device
from resample_cli.fileio.atomic import make_temp_folder, replace_folder
from resample_cli.messages import first_line, format_duration
from resample_cli.metrics import psnr


class _Device(str, Enum):  # as the CLI's Device
    cpu = "cpu"
    cuda = "cuda"


def test_resolve_device_takes_names_and_str_enums():
    assert resolve_device("cpu") == resolve_device(_Device.cpu) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)  # CUDA first, then MPS, then the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_refuses_cuda_without_it():
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        resolve_device(_Device.cuda)
    assert resolve_device("auto").type != "cuda"


def test_first_line_keeps_messages_one_line_long():
    assert first_line(ValueError("bad shape\nsee the docs")) == "bad shape"
    assert first_line(ValueError("")) == "ValueError"
    err = RuntimeError("Weights only load failed. Re-running with weights_only=False may help")
    assert first_line(err, sentence=True) == "Weights only load failed"
    assert first_line(err) == str(err)


def test_format_duration_long_and_compact():
    assert format_duration(65) == "1 min 05 s"
    assert format_duration(3725) == "1 h 02 min 05 s"
    assert format_duration(65, compact=True) == "1m05s"
    assert format_duration(3725, compact=True) == "1h02m"
    assert format_duration(None, compact=True) == "?"


def test_psnr_global_and_per_image():
    ref = torch.zeros(2, 1, 4, 4)
    x = ref.clone()
    x[0] += 0.1  # image 0: MSE 1e-2 (20 dB); image 1 exact
    assert psnr(x, ref) == pytest.approx(10 * math.log10(1 / 0.005))  # the MSE over both images
    assert psnr(x, ref, per_image=True) == pytest.approx((20 + 120) / 2, abs=1e-4)  # exact: floored
    assert psnr(ref, ref) == math.inf


def test_replace_folder_swaps_whole_folders_with_plain_mkdir_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "unet"
    replace_folder(target, lambda folder: (folder / "a.txt").write_text("old"))
    replace_folder(target, lambda folder: (folder / "b.txt").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask

    def fail(folder):
        (folder / "c.txt").write_text("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        replace_folder(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]  # no temporary left behind
    assert (target / "b.txt").read_text() == "new"
    tmp = make_temp_folder(target)
    assert tmp.parent == tmp_path and tmp.name.startswith(".unet.") and tmp.name.endswith(".tmp")
