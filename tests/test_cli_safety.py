"""Safe batches: no command writes over a file it reads, a rerun does not restore its own
outputs, and what can be checked without a model is checked before one loads; a model
that cannot be had fails at once, in one line, with a JSON record for every input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ct_hu_phantom,
    env_offline,
    files_in,
    one_line_error,
    plain,
    random_grey,
    random_rgb,
    write_ct_dicom,
)
from huggingface_hub import constants

from resample_cli import pipeline
from resample_cli.priors import PriorError, load_prior

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

BLUR = ["--sigma", "1", "--kernel-size", "9"]


def _usage_error(r) -> str:
    """The usage error's text, whitespace collapsed."""
    assert r.stdout == ""
    return plain(r.stderr)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- no output replaces a file the command reads -------------------------------------


@pytest.mark.parametrize("options", [["--overwrite"], ["--skip-existing"], []], ids=" ".join)
def test_restoring_into_the_input_folder_under_the_same_name_is_refused(tmp_path, cli, no_model, options):
    same = tmp_path / "same"
    random_rgb(same / "a.png")
    before = _snapshot(same)
    r = cli("deblur", same, "-o", same, *options, expect=2)
    assert (
        f"{same / 'a.png'}, the output of {same / 'a.png'}, would replace that input itself"
        in _usage_error(r)
    )
    assert _snapshot(same) == before


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_an_output_name_that_links_to_the_input_is_refused(tmp_path, cli, no_model, link):
    source = random_rgb(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "a.png"
    if link == "symlink":
        target.symlink_to(source)
    else:
        os.link(source, target)
    before = source.read_bytes()
    r = cli("deblur", source, "-o", tmp_path / "out", "--overwrite", expect=2)
    assert f"{target}, the output of {source}, would replace that input itself" in _usage_error(r)
    assert source.read_bytes() == before


@pytest.mark.parametrize("option", ["--reference", "--kernel", "--mask"])
def test_an_output_over_a_file_an_option_names_is_refused(tmp_path, cli, no_model, option):
    source = random_rgb(tmp_path / "in" / "a.png")
    side = random_rgb(tmp_path / "side" / "a.png", seed=5)
    before = side.read_bytes()
    task = ["inpaint"] if option == "--mask" else ["deblur"]
    r = cli(*task, source, option, side, "-o", tmp_path / "side", "--overwrite", expect=2)
    assert f"would replace the {option} file {side}" in _usage_error(r)
    assert side.read_bytes() == before


def test_a_reference_folder_is_protected_file_by_file(tmp_path, cli, no_model):
    source = random_rgb(tmp_path / "in" / "a.png")
    random_rgb(tmp_path / "clean" / "a.png", seed=2)
    r = cli("deblur", source, "--reference", tmp_path / "clean", "-o", tmp_path / "clean", expect=2)
    assert f"would replace the --reference file {tmp_path / 'clean' / 'a.png'}" in _usage_error(r)


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, cli, no_model):
    random_rgb(tmp_path / "in" / "p.png")
    random_rgb(tmp_path / "in" / "p.jpg")
    r = cli("deblur", tmp_path / "in", "-o", tmp_path / "out", expect=2)
    text = _usage_error(r)
    assert f"{tmp_path / 'in' / 'p.jpg'} and {tmp_path / 'in' / 'p.png'} would both be written to" in text
    assert not (tmp_path / "out").exists()


def test_the_same_file_named_twice_is_restored_once(tmp_path, cli, model_args):
    source = random_rgb(tmp_path / "in" / "a.png")
    r = cli("deblur", source, tmp_path / "in", *BLUR, "-o", tmp_path / "out", "--json", *model_args)
    assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["written"]


def test_a_rerun_into_the_input_folder_does_not_restore_its_own_outputs(tmp_path, cli, model_args):
    same = tmp_path / "same"
    random_rgb(same / "a.png")
    run = ["deblur", same, *BLUR, "-o", same, "--suffix", "_r", "--json", *model_args]
    r = cli(*run)
    assert files_in(same) == {"a.png", "a_r.png", "a_r.report.json"}
    assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["written"]
    r = cli(*run, "--skip-existing")  # a_r.png has its report beside it: an output, not an input
    assert files_in(same) == {"a.png", "a_r.png", "a_r.report.json"}
    assert [(Path(rec["input"]).name, rec["status"]) for rec in map(json.loads, r.stdout.splitlines())] == [
        ("a.png", "skipped")
    ]
    # A folder holding nothing but outputs has no input, and says why.
    (same / "a.png").unlink()
    r = cli("superres", same, "-o", tmp_path / "up", expect=2)
    assert "no input files (left out: 1 output(s) of resample" in _usage_error(r)


# --- simulate ---------------------------------------------------------------------


def test_simulate_refuses_to_measure_into_its_input_folder(tmp_path, cli):
    clean = tmp_path / "clean"
    random_grey(clean / "a.png")
    before = _snapshot(clean)
    r = cli("simulate", "deblur", clean, "-o", clean, "--overwrite", expect=2)
    assert "would replace that input itself" in _usage_error(r)
    assert _snapshot(clean) == before


def test_simulate_refuses_a_side_file_over_its_mask(tmp_path, cli):
    """simulate inpaint writes NAME.mask.png: never over the --mask it reads."""
    source = random_rgb(tmp_path / "in" / "a.png")
    mask = random_grey(tmp_path / "meas" / "a.mask.png")
    before = mask.read_bytes()
    r = cli("simulate", "inpaint", source, "--mask", mask, "-o", tmp_path / "meas", "--overwrite", expect=2)
    assert f"would replace the --mask file {mask}" in _usage_error(r)
    assert mask.read_bytes() == before and files_in(tmp_path / "meas") == {"a.mask.png"}


def test_simulate_refuses_two_inputs_with_one_measurement_name(tmp_path, cli):
    random_grey(tmp_path / "in" / "p.png")
    random_grey(tmp_path / "in" / "p.bmp")
    r = cli("simulate", "superres", tmp_path / "in", "-o", tmp_path / "out", "--scale", "2", expect=2)
    assert "would both be written to" in _usage_error(r) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["deblur", "ct"])
def test_simulate_with_no_usable_input_is_a_usage_error(tmp_path, cli, task):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    r = cli("simulate", task, tmp_path / "empty", "-o", tmp_path / "out", expect=2)
    assert "no input files" in _usage_error(r) and not (tmp_path / "out").exists()


# --- checked before the model loads --------------------------------------------------


def test_a_reference_of_the_wrong_size_fails_before_the_model_loads(tmp_path, cli, no_model):
    """superres by 2: a 16x16 input restores to 32x32; its reference must be 32x32."""
    random_rgb(tmp_path / "in" / "a.png", 16, 16)
    random_rgb(tmp_path / "clean" / "a.png", 16, 16)  # the input's size, not the output's
    r = cli(
        "superres",
        tmp_path / "in",
        "--scale",
        "2",
        "--reference",
        tmp_path / "clean",
        "-o",
        tmp_path / "out",
        "--json",
        expect=1,
    )
    line = one_line_error(r.stderr, str(tmp_path / "in" / "a.png"), str(tmp_path / "clean" / "a.png"))
    assert "16x16" in line and "32x32" in line and "loading model" not in r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["failed"]


def test_a_reference_folder_without_the_inputs_file_fails_before_the_model_loads(tmp_path, cli, no_model):
    random_rgb(tmp_path / "in" / "a.png")
    (tmp_path / "clean").mkdir()
    r = cli("deblur", tmp_path / "in", "--reference", tmp_path / "clean", "-o", tmp_path / "out", expect=1)
    one_line_error(r.stderr, str(tmp_path / "in" / "a.png"), "no file named a.*")


def test_a_mask_of_the_wrong_size_fails_before_the_model_loads(tmp_path, cli, no_model):
    random_rgb(tmp_path / "img.png")
    np.save(tmp_path / "m.npy", np.ones((16, 16), bool))
    r = cli("inpaint", tmp_path / "img.png", "--mask", tmp_path / "m.npy", "-o", tmp_path / "out", expect=1)
    line = one_line_error(r.stderr, str(tmp_path / "img.png"), str(tmp_path / "m.npy"))
    assert "16x16" in line and "32x32" in line and "loading model" not in r.stderr


def test_a_reference_of_the_right_size_is_used(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in" / "a.png", 16, 16)
    random_rgb(tmp_path / "clean" / "a.png", 32, 32)
    scale = ["--scale", "2", "--reference", tmp_path / "clean"]
    cli("superres", tmp_path / "in", *scale, "-o", tmp_path / "out", *model_args)
    report = json.loads((tmp_path / "out" / "a.report.json").read_text())
    assert set(report["metrics"]) >= {"psnr", "ssim"}


# --- a model that cannot be had ------------------------------------------------------


def test_a_model_that_fails_to_load_gives_every_input_a_record(tmp_path, cli):
    random_rgb(tmp_path / "in" / "a.png")
    random_rgb(tmp_path / "in" / "b.png")
    (tmp_path / "out").mkdir()
    for name in ("b.png", "b.report.json"):
        (tmp_path / "out" / name).write_bytes(b"done before")
    r = cli(
        "deblur",
        tmp_path / "in",
        tmp_path / "missing.png",
        "-o",
        tmp_path / "out",
        "--skip-existing",
        "--json",
        "--model",
        "someone/missing-model",
        expect=1,
    )
    records = {Path(rec["input"]).name: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert {name: rec["status"] for name, rec in records.items()} == {
        "a.png": "failed",
        "b.png": "skipped",
        "missing.png": "failed",
    }
    assert "someone/missing-model" in records["a.png"]["error"]
    assert "no such file" in records["missing.png"]["error"]
    line = one_line_error(r.stderr, "someone/missing-model")
    assert line.endswith("or run offline with the bundled prior: --model dead-leaves")
    assert "0 written, 1 skipped, 2 failed" in r.stderr


def _refusing_endpoint() -> str:
    """A local address where nothing listens: every connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_hub_fails_without_retrying(monkeypatch):
    """The registry's celebahq is pinned to a commit, whose file listing huggingface_hub
    retried five times (sleeping 23 s) before giving up on a Hub it could not reach."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", _refusing_endpoint())
    start = time.monotonic()
    with pytest.raises(PriorError, match="the Hub cannot be reached"):
        load_prior("celebahq")
    assert time.monotonic() - start < 10


def test_an_unreachable_hub_is_one_line_under_quiet(tmp_path):
    """Not offline, with an empty cache and a Hub that refuses connections: one error line,
    the only thing on stderr under --quiet (no retry notes), naming the bundled prior."""
    random_rgb(tmp_path / "a.png")
    env = {**env_offline(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": _refusing_endpoint()}
    proc = subprocess.run(
        [sys.executable, "-m", "resample_cli", "deblur", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
        + ["--quiet", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'celebahq'"), proc.stderr
    assert "the Hub cannot be reached" in lines[0] and lines[0].endswith("--model dead-leaves")
    assert [json.loads(line)["status"] for line in proc.stdout.splitlines()] == ["failed"]


def test_ct_suggests_its_own_bundled_prior(tmp_path, cli):
    np.save(tmp_path / "s.npy", np.zeros((8, 16), np.float32))
    r = cli("ct", tmp_path / "s.npy", "--angles", "8", "-o", tmp_path / "out", "--model", "no-such", expect=1)
    assert one_line_error(r.stderr, "unknown model 'no-such'").endswith("--model ct-ellipses")


def test_ct_finds_a_sinogram_without_angles_before_the_model_loads(tmp_path, cli, no_model):
    np.save(tmp_path / "s.npy", np.zeros((8, 16), np.float32))
    r = cli("ct", tmp_path / "s.npy", "-o", tmp_path / "out", expect=1)
    assert "no angles" in one_line_error(r.stderr, str(tmp_path / "s.npy"))
    assert "loading model" not in r.stderr


def test_ct_checks_a_dicom_reference_size_before_the_model_loads(tmp_path, cli, no_model):
    np.save(tmp_path / "s.npy", np.zeros((8, 16), np.float32))  # 16 detectors: a 16x16 image
    write_ct_dicom(tmp_path / "clean.dcm", ct_hu_phantom(32))
    r = cli(
        "ct",
        tmp_path / "s.npy",
        "--angles",
        "8",
        "--reference",
        tmp_path / "clean.dcm",
        "-o",
        tmp_path / "out",
        expect=1,
    )
    line = one_line_error(r.stderr, str(tmp_path / "s.npy"), str(tmp_path / "clean.dcm"))
    assert "32x32" in line and "16x16" in line and "loading model" not in r.stderr


def test_ct_never_writes_over_its_dicom_template(tmp_path, cli, no_model):
    """A sinogram named like the template, restored into the template's folder with --overwrite."""
    (tmp_path / "src").mkdir()
    write_ct_dicom(tmp_path / "src" / "s.dcm", ct_hu_phantom(16))
    np.save(tmp_path / "s.npy", np.zeros((8, 16), np.float32))
    before = (tmp_path / "src" / "s.dcm").read_bytes()
    r = cli(
        "ct", tmp_path / "s.npy", "--angles", "8", "--dicom-template", tmp_path / "src",
        "-o", tmp_path / "src", "--overwrite", expect=2,
    )  # fmt: skip
    assert "--dicom-template" in r.stderr and (tmp_path / "src" / "s.dcm").read_bytes() == before


# --- Ctrl-C -------------------------------------------------------------------------


def test_ctrl_c_prints_the_summary_so_far_and_a_record_for_each_input_left(
    tmp_path, cli, model_args, monkeypatch
):
    for name in ("a", "b", "c"):
        random_rgb(tmp_path / "in" / f"{name}.png")
    real_restore = pipeline.restore_batch
    calls = []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_restore(*args, **kwargs)

    monkeypatch.setattr(pipeline, "restore_batch", interrupted_at_the_second)
    out = tmp_path / "out"
    r = cli("deblur", tmp_path / "in", *BLUR, "-o", out, "--json", *model_args, expect=130)
    assert "1 written, 0 skipped, 0 failed; interrupted with 2 not restored" in r.stderr
    records = [(Path(rec["input"]).name, rec["status"]) for rec in map(json.loads, r.stdout.splitlines())]
    assert records == [("a.png", "written"), ("b.png", "failed"), ("c.png", "failed")]
    assert files_in(out) == {"a.png", "a.report.json"}  # nothing of b, not even a temporary file
    assert len(calls) == 2  # c never started
