"""Shared fixtures for the command-line tests: tiny random priors built once per
session, a CliRunner call, and small image, report and CT-file helpers."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from tiny_prior import make_tiny_prior
from typer.testing import CliRunner, Result

from resample_cli.cli.app import app
from resample_cli.solvers.resample import ReSampleConfig, dc_schedule

STEPS = 3  # DDIM steps of every restoring run: about a second each on a CPU

# The report's fixed keys (docs/design.md, "Measurement-residual report").
REPORT_KEYS = {
    "version",
    "resample_version",
    "task",
    "input",
    "output",
    "operator",
    "model",
    "solver",
    "seed",
    "device",
    "dtype",
    "residual",
    "cost",
    "timing",
}
RESIDUAL_KEYS = {"rms", "sigma_y", "ratio", "relative", "per_dc_step"}
COST_KEYS = {
    "unet_forward",
    "unet_backward",
    "decoder_forward",
    "decoder_backward",
    "encoder_forward",
    "operator_calls",
}


@pytest.fixture(scope="session")
def prior_dir(tmp_path_factory) -> Path:
    # The KL autoencoder: a tiny random VQ decoder barely moves under latent optimisation.
    return make_tiny_prior(tmp_path_factory.mktemp("priors") / "kl", autoencoder="kl")


@pytest.fixture(scope="session")
def grey_prior_dir(tmp_path_factory) -> Path:
    """A one-channel VQ prior, as a CT model would be."""
    return make_tiny_prior(tmp_path_factory.mktemp("priors") / "vq_grey", autoencoder="vq", image_channels=1)


@pytest.fixture
def model_args(prior_dir) -> list[str]:
    return ["--model", str(prior_dir), "--steps", str(STEPS)]


@pytest.fixture
def one_thread():
    """Torch on one thread: on a small shared machine a second intra-op thread that
    busy-waits for a busy core makes the tiny FFTs and convolutions 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline(monkeypatch, tmp_path_factory) -> Path:
    """No Hub: offline, with an empty cache of its own (returned). huggingface_hub reads
    its environment once at import, so its constants are patched as well."""
    cache = tmp_path_factory.mktemp("hf_cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: whatever the run reports, it found without one."""
    from resample_cli.cli import restore

    def load_prior(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(restore, "load_prior", load_prior)


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run ``resample ARGS...`` in-process; a crash (not a clean exit) fails the test."""
    runner = CliRunner()

    def invoke(*args, expect: int | None = 0):
        result = runner.invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code}, expected {expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    return invoke


# --- files --------------------------------------------------------------------------


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write (H, W) or (H, W, 3) uint8/uint16 as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def random_rgb(path: Path, h: int = 32, w: int = 32, seed: int = 0) -> Path:
    """A smooth-ish random colour image (blurred noise), so blur and scale change it visibly."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return save_png(path, big)


def random_grey(path: Path, h: int = 32, w: int = 32, seed: int = 0, bits: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    top = 255 if bits == 8 else 65535
    data = rng.integers(0, top + 1, (h, w)).astype(np.uint8 if bits == 8 else np.uint16)
    return save_png(path, data)


def read_unit(path: Path) -> np.ndarray:
    """A written image or array as float64 (C, H, W) in [0, 1]."""
    if path.suffix == ".npy":
        arr = np.load(path).astype(np.float64)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    with Image.open(path) as im:
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else 255.0
    arr = arr / top
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def files_in(folder: Path) -> set[str]:
    """Names of the files in ``folder`` (hidden temporaries included), or none."""
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


# --- CT ---------------------------------------------------------------------------


def ct_hu_phantom(n: int = 32) -> np.ndarray:
    """Air around a water disk with a bone insert, in HU."""
    yy, xx = np.mgrid[:n, :n] - n / 2
    hu = np.full((n, n), -1000.0)
    hu[yy**2 + xx**2 < (0.4 * n) ** 2] = 40.0
    hu[(yy - 3) ** 2 + (xx + 4) ** 2 < 9] = 1200.0
    return hu


def ct_dataset(path, shape: tuple[int, int], *, slope: float, intercept: float) -> FileDataset:
    """What every test CT file has: file meta, SOP UIDs, 16-bit signed monochrome pixels of
    ``shape`` and the rescale; the caller adds patient, study, series and pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    return ds


def write_ct_dicom(
    path, hu: np.ndarray, *, modality: str = "CT", pixels: bool = True, padding: np.ndarray | None = None
) -> None:
    """A minimal single-frame CT slice: stored values HU + 1024, intercept -1024; where
    ``padding`` is true the PixelPaddingValue 5000 (which read as HU would be bone)."""
    ds = ct_dataset(path, hu.shape, slope=1, intercept=-1024)
    ds.PatientName, ds.PatientID = "Phantom^Water", "PH-7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    stored = np.round(hu + 1024).astype(np.int16)
    if padding is not None:
        ds.PixelPaddingValue = 5000
        stored[padding] = 5000
    if pixels:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


# --- reports ------------------------------------------------------------------------


def load_report(path: Path) -> dict:
    return json.loads(path.read_text())


def check_report(
    report: dict,
    *,
    task: str,
    source: Path,
    output: Path,
    model: Path,
    noise: float = 0.005,
    steps: int = STEPS,
    samples: int = 1,
    seed: int = 0,
) -> None:
    """The fixed keys of docs/design.md, with the values this run must have."""
    assert REPORT_KEYS <= set(report), REPORT_KEYS - set(report)
    assert report["version"] == 1 and report["task"] == task
    assert report["resample_version"] == importlib.metadata.version("resample-cli")
    assert report["input"] == str(source) and report["output"] == str(output)
    assert isinstance(report["operator"], dict) and report["operator"]["name"]
    assert report["model"] == {**report["model"], "name": str(model), "repo": None, "revision": None}
    assert {"name", "repo", "revision"} <= set(report["model"])
    assert report["solver"]["name"] == "resample" and report["solver"]["preset"] == "fast"
    assert report["solver"]["steps"] == steps
    assert report["seed"] == seed and report["device"] == "cpu" and report["dtype"] == "float32"
    res = report["residual"]
    assert RESIDUAL_KEYS <= set(res)
    assert res["sigma_y"] == noise
    assert res["rms"] > 0 and math.isfinite(res["rms"])
    assert res["ratio"] == pytest.approx(res["rms"] / noise)
    # One entry per data-consistency step of the schedule the fast preset runs.
    n_dc = sum(s is not None for s in dc_schedule(ReSampleConfig.preset("fast", steps=steps)))
    assert len(res["per_dc_step"]) == n_dc >= 1
    assert all(v > 0 and math.isfinite(v) for v in res["per_dc_step"])
    assert COST_KEYS <= set(report["cost"])
    assert report["cost"]["unet_forward"] == steps * samples  # the fast preset: no look-ahead
    assert report["cost"]["decoder_forward"] >= samples and report["cost"]["operator_calls"] > 0
    assert report["timing"]["total_s"] > 0


def check_residual(
    report: dict,
    y: np.ndarray | torch.Tensor,
    fit: np.ndarray | torch.Tensor,
    atol: float,
    m: int | None = None,
) -> None:
    """rms = ||y - A(x)|| / sqrt(m) and relative = ||y - A(x)|| / ||y||, recomputed
    independently from the written output, within ``atol`` (the output's quantisation).
    ``m``: the number of entries that are data (default: all of y)."""
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    fit = torch.as_tensor(np.asarray(fit), dtype=torch.float64)
    assert y.shape == fit.shape
    diff = (y - fit).flatten()
    m = diff.numel() if m is None else m
    rms = float(diff.norm()) / math.sqrt(m)
    res = report["residual"]
    assert res["rms"] == pytest.approx(rms, abs=atol)
    # relative = rms * sqrt(m) / ||y||, so its tolerance scales the same way.
    scale = math.sqrt(m) / float(y.norm())
    assert res["relative"] == pytest.approx(rms * scale, abs=atol * scale)


def apply(op, image: np.ndarray) -> np.ndarray:
    """A resample_cli operator on one (C, H, W) image; the (C, ...) measurement."""
    with torch.no_grad():
        return op(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])[0].numpy()


def one_line_error(stderr: str, *needles: str) -> str:
    """The ``error: ...`` line of stderr that holds every needle; it is one line."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:") and all(n in ln for n in needles)]
    assert lines, f"no 'error:' line with {needles} in:\n{stderr}"
    return lines[0]


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """Help text with colour codes removed and whitespace collapsed (it wraps)."""
    return " ".join(ANSI.sub("", text).split())


def env_offline(cache: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, one torch thread (see ``one_thread``)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
