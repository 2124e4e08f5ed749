"""Start-up: ``--version`` and every ``--help`` import no torch (nor diffusers,
huggingface_hub, numpy, scipy, PIL); the errors that need no model come before one is
loaded, and a batch with nothing to do loads none. Also: the option defaults written
out to keep torch away from ``--help`` agree with the settings they stand for."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import env_offline, files_in, one_line_error, plain, random_rgb

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

HEAVY = ("torch", "diffusers", "huggingface_hub", "numpy", "scipy", "PIL")
TASKS = ("deblur", "superres", "inpaint", "nonlinear-deblur", "ct")

# Runs ``resample ARGS...`` in a fresh interpreter, then prints, as its last line, the exit
# code and which of HEAVY the run imported.
PROBE = f"""
import json, sys
from resample_cli.cli.app import app
try:
    app(sys.argv[1:], prog_name="resample")
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def probe(*args, tmp_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env_offline(tmp_path / "hf"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.splitlines()[-1]), "stdout": proc.stdout, "stderr": proc.stderr}


LIGHT_COMMANDS = [
    ["--version"],
    ["--help"],
    *([task, "--help"] for task in TASKS),
    ["simulate", "--help"],
    *(["simulate", task, "--help"] for task in TASKS),
    ["bench", "--help"],
    *(["bench", task, "--help"] for task in TASKS),
    ["train-prior", "--help"],
    ["models", "--help"],
    *(["models", command, "--help"] for command in ("list", "info", "download")),
]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_version_and_help_import_no_torch(tmp_path, args):
    run = probe(*args, tmp_path=tmp_path)
    assert run["code"] == 0, run["stderr"]
    assert run["heavy"] == []
    assert "resample" in run["stdout"]


def test_restoring_help_offers_the_solvers_without_torch(tmp_path):
    run = probe("deblur", "--help", tmp_path=tmp_path)
    assert run["code"] == 0 and run["heavy"] == []
    assert "--solver" in run["stdout"] and "resample|latent-dps|psld|diffpir" in plain(run["stdout"])


def test_the_console_script_imports_no_torch_for_its_version(tmp_path):
    """``python -X importtime``, through ``python -m resample_cli`` as ``resample`` runs."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "resample_cli", "--version"],
        capture_output=True,
        text=True,
        env=env_offline(tmp_path / "hf"),
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("resample ")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "resample_cli.cli.app" in imported
    assert not {name.split(".")[0] for name in imported} & set(HEAVY)


# --- errors that need no model come first --------------------------------------------


def test_a_missing_input_is_one_line_and_no_model_is_looked_at(tmp_path, cli, no_model):
    missing = tmp_path / "nowhere.png"
    r = cli("deblur", missing, "-o", tmp_path / "out", "--model", tmp_path / "no-such-model", expect=1)
    one_line_error(r.stderr, str(missing), "no such file")
    assert "no-such-model" not in r.stderr and "loading model" not in r.stderr
    assert "0 written, 0 skipped, 1 failed" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing to write: the folder is not even made


def test_a_missing_input_among_others_is_reported_before_the_model_loads(tmp_path, cli, model_args):
    random_rgb(tmp_path / "a.png")
    missing = tmp_path / "b.png"
    out = tmp_path / "out"
    r = cli("deblur", tmp_path / "a.png", missing, "-o", out, "--json", *model_args, expect=1)
    line = one_line_error(r.stderr, str(missing), "no such file")
    assert r.stderr.index(line) < r.stderr.index("loading model")
    assert files_in(out) == {"a.png", "a.report.json"}  # the batch went on
    status = {Path(rec["input"]).name: rec["status"] for rec in map(json.loads, r.stdout.splitlines())}
    assert status == {"a.png": "written", "b.png": "failed"}
    assert "1 written, 0 skipped, 1 failed" in r.stderr


def test_an_existing_output_without_overwrite_fails_before_the_model_loads(tmp_path, cli, no_model):
    random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "in.png").write_bytes(b"an earlier result")
    r = cli("deblur", tmp_path / "in.png", "-o", out, expect=1)
    line = one_line_error(r.stderr, str(out / "in.png"), "output exists")
    assert "--overwrite" in line and "--skip-existing" in line and "loading model" not in r.stderr
    assert (out / "in.png").read_bytes() == b"an earlier result"


def _make_input(task: str, folder: Path) -> tuple[Path, list[str]]:
    """An input of ``task`` and the names of the outputs it yields."""
    if task == "ct":
        np.save(folder / "in.npy", np.zeros((8, 16), np.float32))
        return folder / "in.npy", ["in.png", "in.npy", "in.report.json"]
    return random_rgb(folder / "in.png"), ["in.png", "in.report.json"]


def _task_options(task: str, folder: Path) -> list:
    if task == "ct":
        return ["--angles", "8"]
    return ["--mask", random_rgb(folder / "mask.png")] if task == "inpaint" else []


@pytest.mark.parametrize("task", TASKS)
def test_every_output_present_with_skip_existing_loads_no_model(tmp_path, cli, no_model, task):
    source, outputs = _make_input(task, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for name in outputs:
        (out / name).write_bytes(b"done before")
    r = cli(task, source, *_task_options(task, tmp_path), "-o", out, "--skip-existing", "--json")
    assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["skipped"]
    assert "0 written, 1 skipped, 0 failed" in r.stderr and "loading model" not in r.stderr


@pytest.mark.parametrize(
    ("task", "option"), [("deblur", "--reference"), ("inpaint", "--mask"), ("ct", "--dicom-template")]
)
def test_an_option_naming_no_file_is_a_usage_error_before_any_work(tmp_path, cli, no_model, task, option):
    source, _ = _make_input(task, tmp_path)
    options = _task_options(task, tmp_path) if task == "ct" else []
    r = cli(task, source, *options, option, tmp_path / "no-such-file", "-o", tmp_path / "out", expect=2)
    assert option in plain(r.stderr) and "no such file or folder" in plain(r.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("skip", [False, True], ids=["missing input", "every output present"])
def test_a_batch_with_nothing_to_restore_never_imports_torch(tmp_path, skip):
    source = random_rgb(tmp_path / "in.png") if skip else tmp_path / "nowhere.png"
    out = tmp_path / "out"
    if skip:
        out.mkdir()
        for name in ("in.png", "in.report.json"):
            (out / name).write_bytes(b"done before")
    run = probe("deblur", source, "-o", out, *(["--skip-existing"] if skip else []), tmp_path=tmp_path)
    assert run["code"] == (0 if skip else 1), run["stderr"]
    assert "torch" not in run["heavy"] and "diffusers" not in run["heavy"]
    assert ("1 skipped" if skip else "no such file") in run["stderr"]


# --- defaults written out, so that --help needs no torch -----------------------------


def test_bench_defaults_agree_with_the_bench_module():
    from resample_cli import bench as bench_module
    from resample_cli.cli import bench
    from resample_cli.cli.train import Synthetic
    from resample_cli.training.data import SYNTHETIC_KINDS

    assert bench.DEFAULT_TIKHONOV_LAM == bench_module.DEFAULT_TIKHONOV_LAM
    assert (
        inspect.signature(bench.bench).parameters["tikhonov_lam"].default == bench_module.DEFAULT_TIKHONOV_LAM
    )
    assert tuple(kind.value for kind in Synthetic) == SYNTHETIC_KINDS


def test_train_prior_defaults_are_train_configs(tmp_path, cli, monkeypatch):
    """The command run with no settings but the data and the device makes the TrainConfig
    whose every other field is the dataclass's default."""
    from resample_cli.cli import train
    from resample_cli.training import TrainConfig, TrainingError

    made = []

    def run_training(config, **kwargs):
        made.append(config)
        raise TrainingError("stopped by the test")

    monkeypatch.setattr(train, "run_training", run_training)
    out = tmp_path / "prior"
    r = cli("train-prior", out, "--synthetic", "ellipses", "--device", "cpu", expect=1)
    assert "stopped by the test" in r.stderr
    assert made == [TrainConfig(output=out, synthetic="ellipses", device="cpu")]
