"""Batches, samples, existing outputs, determinism, exit codes, Ctrl-C, and the CLI run
as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    STEPS,
    env_offline,
    files_in,
    load_report,
    one_line_error,
    random_grey,
    random_rgb,
    read_unit,
)
from PIL import Image

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

BLUR = ["--sigma", "1", "--kernel-size", "9"]


def _mode_and_size(path: Path) -> tuple[str, tuple[int, int]]:
    with Image.open(path) as im:
        return im.mode, im.size


def test_a_folder_batch_keeps_each_image_grey_or_colour_its_size_and_bit_depth(tmp_path, cli, model_args):
    clean = tmp_path / "clean"
    random_rgb(clean / "rgb.png")
    random_grey(clean / "odd.png", h=22, w=30)
    random_grey(clean / "deep.png", h=24, w=20, bits=16)
    (clean / "notes.txt").write_text("not an image: a folder yields only image files")
    cli("simulate", "deblur", clean, "-o", tmp_path / "meas", *BLUR)
    assert files_in(tmp_path / "meas") == {"rgb.png", "odd.png", "deep.png"}
    assert _mode_and_size(tmp_path / "meas" / "deep.png")[0] == "I;16"  # simulate keeps 16 bits

    out = tmp_path / "out"
    r = cli("deblur", tmp_path / "meas", *BLUR, "-o", out, "--json", *model_args)
    assert files_in(out) == {f"{n}{ext}" for n in ("rgb", "odd", "deep") for ext in (".png", ".report.json")}
    assert _mode_and_size(out / "rgb.png") == ("RGB", (32, 32))
    assert _mode_and_size(out / "odd.png") == ("L", (30, 22))  # grey through an RGB prior, padded and cropped
    assert _mode_and_size(out / "deep.png") == ("I;16", (20, 24))
    deep = np.asarray(Image.open(out / "deep.png"))
    assert deep.dtype == np.uint16 and len(np.unique(deep)) > 256  # real 16-bit values, not 8-bit scaled
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(rec["input"] for rec in records) == sorted(
        str(tmp_path / "meas" / f"{n}.png") for n in ("rgb", "odd", "deep")
    )
    for rec in records:
        assert rec["status"] == "written"
        assert rec["residual"] == load_report(Path(rec["report"]))["residual"]
    assert "3 written, 0 skipped, 0 failed" in r.stderr
    # Written through a temporary file, yet with the permissions a plain open() gives.
    umask = os.umask(0)
    os.umask(umask)
    for path in [*out.iterdir(), *(tmp_path / "meas").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_samples_write_the_mean_and_a_nonzero_std_map(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    cli(
        "deblur",
        tmp_path / "in.png",
        *BLUR,
        "-o",
        out,
        "--samples",
        "3",
        "--batch-size",
        "2",
        "--plot",
        "--suffix",
        "_r",
        *model_args,
    )
    names = {"in_r.png", "in_r.report.json", "in_r.std.png", "in_r.std.npy", "in_r.residual.png"}
    assert files_in(out) == names
    report = load_report(out / "in_r.report.json")
    assert report["samples"] == 3
    assert report["cost"]["unet_forward"] == 3 * STEPS  # three samples, in batches of 2 and 1
    std = np.load(out / "in_r.std.npy")
    assert std.shape == (32, 32, 3) and std.min() >= 0 and std.max() > 1e-3
    scale = report["uncertainty"]["std_png_scale"]
    assert scale == pytest.approx(float(std.max()))
    std_png = read_unit(out / "in_r.std.png").transpose(1, 2, 0)
    np.testing.assert_allclose(std_png, std / scale, atol=0.5 / 255 + 1e-6)
    assert _mode_and_size(out / "in_r.residual.png")[1] == (640, 400)

    # One sample is not the mean of three: the mean really averages other draws.
    cli("deblur", tmp_path / "in.png", *BLUR, "-o", tmp_path / "one", *model_args)
    assert files_in(tmp_path / "one") == {"in.png", "in.report.json"}
    assert (read_unit(tmp_path / "one" / "in.png") != read_unit(out / "in_r.png")).any()


def test_existing_outputs_are_refused_skipped_or_overwritten(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    run = ["deblur", tmp_path / "in.png", *BLUR, "-o", out, *model_args]
    cli(*run)
    before = {name: (out / name).stat() for name in files_in(out)}
    assert set(before) == {"in.png", "in.report.json"}

    def unchanged() -> bool:
        now = {name: (out / name).stat() for name in files_in(out)}
        return set(now) == set(before) and all(
            (now[n].st_ino, now[n].st_mtime_ns) == (before[n].st_ino, before[n].st_mtime_ns) for n in now
        )

    r = cli(*run, "--skip-existing", "--json")
    assert unchanged()
    assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["skipped"]
    assert "0 written, 1 skipped, 0 failed" in r.stderr

    r = cli(*run, expect=1)  # the default: refuse
    assert unchanged()
    line = one_line_error(r.stderr, str(out / "in.png"))
    assert "output exists" in line and "--overwrite" in line and "--skip-existing" in line

    cli(*run, "--seed", "5", "--overwrite")
    after = {name: (out / name).stat() for name in files_in(out)}
    assert set(after) == set(before)
    assert all(after[n].st_ino != before[n].st_ino for n in after)  # replaced by a rename
    assert load_report(out / "in.report.json")["seed"] == 5

    r = cli(*run, "--skip-existing", "--overwrite", expect=2)
    assert "exclude each other" in r.stderr


def test_same_seed_same_bytes_other_seed_other_image(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in.png")
    for folder, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = cli(
            "deblur", tmp_path / "in.png", *BLUR, "-o", tmp_path / folder, "--seed", seed, "-q", *model_args
        )
        assert r.stderr == "" and r.stdout == ""  # --quiet: nothing but errors
    a, b, c = ((tmp_path / f / "in.png").read_bytes() for f in "abc")
    assert a == b and a != c
    ra, rb = (load_report(tmp_path / f / "in.report.json") for f in "ab")
    assert ra["residual"] == rb["residual"] and ra["cost"] == rb["cost"]


def test_globs_expand_alpha_is_dropped_with_a_warning_and_16_bit_tiff_stays_16_bit(tmp_path, cli, model_args):
    rng = np.random.default_rng(4)
    save = tmp_path / "in"
    save.mkdir()
    Image.fromarray(rng.integers(0, 256, (24, 16, 4), dtype=np.uint8)).save(save / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (24, 16), dtype=np.uint16)).save(save / "deep.tif")
    Image.fromarray(rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)).save(save / "photo.jpg")
    (save / "skip.txt").write_text("not matched by the glob")
    out = tmp_path / "out"
    r = cli("deblur", str(save / "*.*g"), str(save / "*.tif"), *BLUR, "-o", out, *model_args)
    assert files_in(out) == {f"{n}{ext}" for n in ("rgba", "photo") for ext in (".png", ".report.json")} | {
        "deep.tif",
        "deep.report.json",
    }
    assert f"warning: {save / 'rgba.png'}: alpha channel dropped" in r.stderr
    assert _mode_and_size(out / "rgba.png") == ("RGB", (16, 24))
    assert _mode_and_size(out / "photo.png") == ("RGB", (16, 24))
    assert _mode_and_size(out / "deep.tif") == ("I;16", (16, 24))


def test_bfloat16_networks_still_write_a_full_report(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in.png")
    cli("deblur", tmp_path / "in.png", *BLUR, "-o", tmp_path / "out", "--dtype", "bfloat16", *model_args)
    report = load_report(tmp_path / "out" / "in.report.json")
    assert report["dtype"] == "bfloat16" and report["cost"]["unet_forward"] == STEPS
    assert np.isfinite(report["residual"]["rms"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_is_a_usage_error(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in.png")
    r = cli("deblur", tmp_path / "in.png", "-o", tmp_path / "out", "--device", "cuda", *model_args, expect=2)
    assert "CUDA is not available" in r.stderr and not (tmp_path / "out").exists()


def test_a_failed_input_does_not_stop_the_batch_and_exits_1(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in" / "good.png")
    data = (random_rgb(tmp_path / "in" / "broken.png", seed=3)).read_bytes()
    (tmp_path / "in" / "broken.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    r = cli("deblur", tmp_path / "in", *BLUR, "-o", out, "--json", *model_args, expect=1)
    assert files_in(out) == {"good.png", "good.report.json"}
    broken = str(tmp_path / "in" / "broken.png")
    one_line_error(r.stderr, broken, "not a readable image")
    summary = r.stderr.split("1 input(s) failed:")[1]
    assert broken in summary and "good.png" not in summary
    status = {Path(rec["input"]).name: rec["status"] for rec in map(json.loads, r.stdout.splitlines())}
    assert status == {"good.png": "written", "broken.png": "failed"}


# --- Ctrl-C -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["image file", "report"])
def test_ctrl_c_while_writing_removes_what_was_written(tmp_path, cli, model_args, monkeypatch, where):
    """Interrupted in the middle of the first file (its temporary file complete, not yet
    renamed) or at the last one (the image, std maps and plot already in place): either
    way the input yields no files at all, temporaries included."""
    random_rgb(tmp_path / "in.png")
    if where == "image file":
        real_save = Image.Image.save

        def save_then_interrupt(self, fp, *args, **kwargs):
            real_save(self, fp, *args, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    else:
        from resample_cli.cli import restore

        def write_report(path, report):
            assert {"in.png", "in.std.png", "in.std.npy", "in.residual.png"} <= files_in(path.parent)
            raise KeyboardInterrupt

        monkeypatch.setattr(restore, "write_report", write_report)
    out = tmp_path / "out"
    cli("deblur", tmp_path / "in.png", *BLUR, "-o", out, "--samples", "2", "--plot", *model_args, expect=130)
    assert files_in(out) == set()


# --- as a real process --------------------------------------------------------------


def _resample_script() -> str:
    script = Path(sys.executable).with_name("resample")
    assert script.is_file(), "the console script is installed beside the interpreter"
    return str(script)


def test_subprocess_json_lines_on_stdout_logs_on_stderr(tmp_path, prior_dir):
    random_rgb(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"")  # an empty file: fails, the batch goes on
    out = tmp_path / "out"
    args = [
        "deblur",
        str(tmp_path / "in"),
        *BLUR,
        "-o",
        str(out),
        "--json",
        "--model",
        str(prior_dir),
        "--steps",
        str(STEPS),
    ]
    env = env_offline(tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, "-m", "resample_cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [
        ("a.png", "written"),
        ("b.png", "failed"),
    ]
    assert records[0]["output"] == str(out / "a.png") and (out / "a.png").is_file()
    assert "empty file" in records[1]["error"]
    assert "loading model" in proc.stderr and "1 written, 0 skipped, 1 failed" in proc.stderr
    assert f"error: {tmp_path / 'in' / 'b.png'}: empty file" in proc.stderr
    assert "\x1b[" not in proc.stderr  # not a terminal: no progress bars or colour

    # The installed console script, on the same inputs: all outputs exist, so --skip-existing
    # skips a.png, and with b.png removed nothing fails.
    (tmp_path / "in" / "b.png").unlink()
    proc = subprocess.run(
        [_resample_script(), *args, "--skip-existing"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["status"] for line in proc.stdout.splitlines()] == ["skipped"]
    assert "0 written, 1 skipped, 0 failed" in proc.stderr


def test_subprocess_usage_error_exits_2(tmp_path):
    env = env_offline(tmp_path / "hf")
    proc = subprocess.run(
        [
            _resample_script(),
            "superres",
            str(tmp_path / "x.png"),
            "--scale",
            "1",
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--scale" in proc.stderr and not (tmp_path / "out").exists()
    assert os.access(_resample_script(), os.X_OK)
