"""``--solver``: the restoring commands run the diffusion solver the registry names, with
that solver's own presets, and report which one ran; ``bench --solvers`` takes the same
names. The runs use a tiny random prior and two steps: what is checked is which solver
ran and with what settings, not the image."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from conftest import files_in, load_report, plain, random_rgb

from resample_cli import bench, pipeline, solvers
from resample_cli.cli import restore
from resample_cli.operators import GaussianBlur
from resample_cli.solvers import SOLVER_NAMES, SOLVERS, name_of_config, solver_config, solver_named
from resample_cli.solvers.diffpir import DiffPIRConfig
from resample_cli.solvers.latent_dps import LatentDPSConfig
from resample_cli.solvers.resample import ReSampleConfig

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

BLUR = ["--sigma", "1", "--kernel-size", "5"]
RESTORING = ("deblur", "superres", "inpaint", "nonlinear-deblur", "ct")


# --- the registry ----------------------------------------------------------------


def test_the_registry_lists_the_four_solvers_in_help_order():
    assert SOLVER_NAMES == ("resample", "latent-dps", "psld", "diffpir")
    assert [name for name, entry in SOLVERS.items() if entry.linear_only] == ["psld"]


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_every_solver_has_the_presets_the_help_promises(name):
    """--preset's and bench --solvers' help say every solver has 'paper' and 'fast'."""
    solve, config_class = solver_named(name)
    assert callable(solve)
    for preset in ("paper", "fast"):
        config = solver_config(name, preset, steps=3)
        assert isinstance(config, config_class) and config.steps == 3
        assert name_of_config(config) == name
        assert {"steps"} <= set(config.to_dict())
    with pytest.raises(
        ValueError, match=rf"^{name}: .*'no-such'.*paper.*fast|^{name}: .*'no-such'.*fast.*paper"
    ):
        solver_config(name, "no-such")


# --- a restoration with another solver --------------------------------------------------


def test_latent_dps_runs_and_its_report_names_it_with_its_settings(tmp_path, cli, prior_dir, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # the progress bars, priced for its steps, are drawn
    source = random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    r = cli(
        "deblur", source, *BLUR, "--solver", "latent-dps", "--steps", "2", "--model", prior_dir, "-o", out
    )
    assert files_in(out) == {"in.png", "in.report.json"}
    report = load_report(out / "in.report.json")
    fields = {f.name for f in dataclasses.fields(LatentDPSConfig)}
    assert set(report["solver"]) == {"name", "preset"} | fields  # no ReSample keys, no final_pixel_lam
    expected = dataclasses.asdict(LatentDPSConfig.preset("fast", steps=2))
    assert report["solver"] == {"name": "latent-dps", "preset": "fast", **expected}
    # Latent-DPS takes a UNet and decoder gradient at every step; ReSample's fast preset none.
    cost = report["cost"]
    assert cost["unet_forward"] == cost["unet_backward"] == 2
    assert cost["decoder_backward"] == 2
    assert report["residual"]["per_dc_step"] == [] and report["residual"]["rms"] > 0
    assert "eta" in r.stderr


def test_diffpir_runs_and_reports_the_settings_it_resolved_for_the_operator(tmp_path, cli, prior_dir):
    source = random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    cli("deblur", source, *BLUR, "--solver", "diffpir", "--steps", "2", "--model", prior_dir, "-o", out)
    report = load_report(out / "in.report.json")
    settings = report["solver"]
    assert settings["name"] == "diffpir" and settings["preset"] == "fast" and settings["steps"] == 2
    assert set(settings) == {"name", "preset"} | {f.name for f in dataclasses.fields(DiffPIRConfig)}
    resolved = DiffPIRConfig.preset("fast", steps=2).resolved(GaussianBlur(1.0, 5))
    assert (settings["lam"], settings["zeta"]) == (resolved.lam, resolved.zeta) != (None, None)
    assert report["cost"]["unet_forward"] == 2 and report["cost"]["unet_backward"] == 0
    assert len(report["residual"]["per_dc_step"]) == 2  # one data step per step


def test_the_default_solver_is_resample_with_its_final_pixel_solve(tmp_path, cli, prior_dir):
    source = random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    cli("deblur", source, *BLUR, "--steps", "2", "--model", prior_dir, "-o", out)
    settings = load_report(out / "in.report.json")["solver"]
    assert settings["name"] == "resample" and "final_pixel_lam" in settings
    assert {f.name for f in dataclasses.fields(ReSampleConfig)} <= set(settings)


# --- refused before any model loads ---------------------------------------------------


def test_an_unknown_solver_is_refused_by_the_option_parser(tmp_path, cli, no_model):
    source = random_rgb(tmp_path / "in.png")
    r = cli("deblur", source, "--solver", "dps", "-o", tmp_path / "out", expect=2)
    text = plain(r.stderr)
    assert "'--solver'" in text and "dps" in text and "latent-dps" in text
    assert not (tmp_path / "out").exists()


def test_psld_with_a_nonlinear_forward_model_is_one_usage_error(tmp_path, cli, no_model):
    source = random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    r = cli("nonlinear-deblur", source, "--solver", "psld", "-o", out, expect=2)
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert "--solver" in line and "psld needs a linear operator" in line and "NonlinearBlur" in line
    assert not out.exists()


@pytest.mark.parametrize("solver", ["resample", "latent-dps"])
def test_a_preset_the_solver_lacks_is_an_error_naming_its_presets(tmp_path, cli, no_model, solver):
    source = random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    r = cli("deblur", source, *BLUR, "--solver", solver, "--preset", "slow", "-o", out, expect=2)
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert "--preset" in line and f"{solver}: unknown preset 'slow'" in line
    assert "paper" in line and "fast" in line
    assert not out.exists()


@pytest.mark.parametrize("command", RESTORING)
def test_help_lists_the_solvers_and_says_what_preset_and_steps_apply_to(cli, command):
    text = plain(cli(command, "--help").stdout)
    assert "--solver <resample|latent-dps|psld|diffpir>" in text
    assert "[default: resample]" in text and "linear operators only" in text
    assert "Settings of the chosen --solver" in text and "Sampling steps of the chosen --solver" in text


def test_the_steps_help_states_resamples_preset_steps():
    """--steps' help writes out ReSample's steps (it must not import torch to read them)."""
    from resample_cli.cli.options import COMMON

    paper, fast = ReSampleConfig.preset("paper").steps, ReSampleConfig.preset("fast").steps
    assert f"resample: paper: {paper}, fast: {fast}" in COMMON["steps"].help


# --- progress and reports for every solver ---------------------------------------------


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_the_eta_prices_every_solver_s_steps(name):
    config = solver_config(name, "fast", steps=4)
    kinds = restore.step_kinds(config)
    costs = restore.prior_step_costs(config)
    assert set(kinds) <= set(costs)
    if name == "resample":
        assert "pixel" in kinds or "latent" in kinds
    else:
        assert kinds == [None] * 4 and costs == {None: 1.0}


def test_the_report_names_the_solver_of_its_config_unless_told(tmp_path):
    class Prior:
        info = type("Info", (), {"name": "m", "repo": None, "revision": None, "path": None})
        device = "cpu"
        space = "latent"

        def conditioning(self):
            return None

    class Operator:
        def params(self):
            return {"name": "Op"}

    restoration = pipeline.Restoration(x=None, std=None, samples=1, residual={"ratio": 1.0})
    common = {"task": "deblur", "operator": Operator(), "prior": Prior(), "preset": "fast"}
    common |= {"restoration": restoration, "seed": 0, "dtype": "float32"}
    dps = pipeline.report(config=LatentDPSConfig.preset("fast"), **common)
    assert dps["solver"]["name"] == "latent-dps" and "final_pixel_lam" not in dps["solver"]
    told = pipeline.report(config=LatentDPSConfig.preset("fast"), solver="my-name", **common)
    assert told["solver"]["name"] == "my-name"
    resample = pipeline.report(config=ReSampleConfig.preset("fast"), **common)
    assert resample["solver"]["name"] == "resample" and "final_pixel_lam" in resample["solver"]


# --- bench --solvers --------------------------------------------------------------------


def test_bench_takes_the_registry_names():
    labels = bench.parse_solvers("diffpir,latent-dps:paper,psld,resample", "deblur")
    assert labels == ["diffpir:fast", "latent-dps:paper", "psld:fast", "resample:fast"]
    with pytest.raises(ValueError, match="diffpir: unknown preset 'slow'"):
        bench.parse_solvers("diffpir:slow", "deblur")
    with pytest.raises(ValueError, match=r"diffpir\[:PRESET\]"):
        bench.parse_solvers("dps", "deblur")
    assert bench.DIFFUSION_SOLVERS is solvers.SOLVERS
    built = bench.build_solvers(
        ["psld:fast", "latent-dps:fast"],
        "deblur",
        SimpleNamespace(space="latent"),
        bench.BenchSettings(steps=2),
    )
    assert [(s.label, s.steps, s.linear_only) for s in built] == [
        ("psld:fast", 2, True),
        ("latent-dps:fast", 2, False),
    ]


def test_bench_help_names_every_solver(cli):
    text = plain(cli("bench", "deblur", "--help").stdout).replace(" ", "")  # it wraps at hyphens
    for name in SOLVER_NAMES:
        assert f"{name}[:fast|paper]" in text
    assert "psld[:fast|paper](lineartasksonly)" in text
