"""Pixel-space priors (a DDPMPipeline's unet/ and scheduler/, no autoencoder): loading from
a folder and from the Hub cache offline, identity encoder and decoder, every solver on
them from the CLI with the counts a pixel prior implies, PSLD refused, and bench running a
latent and a pixel prior side by side."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import STEPS, load_report, one_line_error, random_rgb
from tiny_pipelines import cache_as_hub_repo, make_tiny_pixel_prior

from resample_cli.operators import GaussianBlur
from resample_cli.priors import PriorError, get_entry, load_prior
from resample_cli.solvers.latent_dps import LatentDPSConfig, latent_dps
from resample_cli.solvers.schedule import scheduler_grid

REPO, COMMIT = "tiny-owner/tiny-ddpm", "00112233445566778899aabbccddeeff00112233"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory) -> Path:
    return make_tiny_pixel_prior(tmp_path_factory.mktemp("ddpm") / "ddpm")


def test_folder_and_hub_cache_load_an_identity_autoencoder_prior(pixel_dir, offline):
    prior = load_prior(str(pixel_dir))
    assert prior.space == "pixel" and prior.conditioning() is None
    assert (prior.image_channels, prior.latent_channels, prior.downsample_factor) == (3, 3, 1)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(prior.encode(x), x) and torch.equal(prior.decode(x), x)
    t = torch.tensor([250])
    with torch.no_grad():
        direct = prior.unet(x, t).sample  # epsilon prediction: eps is the UNet's output
    torch.testing.assert_close(prior.eps(x, t), direct)
    snapshot = cache_as_hub_repo(offline, REPO, COMMIT, make_tiny_pixel_prior)
    cached = load_prior(REPO)
    assert (cached.info.revision, Path(cached.info.path), cached.space) == (COMMIT, snapshot, "pixel")
    torch.testing.assert_close(cached.eps(x, t), prior.eps(x, t))


def test_without_a_model_index_a_missing_autoencoder_is_still_an_error(tmp_path, pixel_dir):
    folder = shutil.copytree(pixel_dir, tmp_path / "m")
    (folder / "model_index.json").unlink()
    with pytest.raises(PriorError, match="vqvae/config.json or vae/config.json"):
        load_prior(str(folder))


@pytest.mark.parametrize(
    ("task", "solver", "shown"),
    [
        ("deblur", "resample", "resample"),
        ("deblur", "latent-dps", "dps"),
        ("inpaint", "diffpir", "diffpir"),
        ("inpaint", "latent-dps", "dps"),
    ],
)
def test_every_solver_runs_on_a_pixel_prior(tmp_path, cli, pixel_dir, task, solver, shown):
    random_rgb(tmp_path / "clean" / "face.png")
    options = ["--sigma", "1.0", "--kernel-size", "5"] if task == "deblur" else ["--box", "12"]
    cli("simulate", task, tmp_path / "clean", "-o", tmp_path / "meas", *options)
    if task == "inpaint":
        options = ["--mask", tmp_path / "meas" / "face.mask.png"]
    source = tmp_path / "meas" / "face.png"
    cli(
        task,
        source,
        *options,
        "--model",
        pixel_dir,
        "--solver",
        solver,
        "--steps",
        STEPS,
        "-o",
        tmp_path / "out",
    )
    report = load_report(tmp_path / "out" / "face.report.json")
    assert report["model"]["space"] == "pixel" and report["model"]["conditioning"] is None
    assert report["solver"]["name"] == shown
    cost = report["cost"]
    # No autoencoder: nothing to count there; one UNet pass per step (the fast presets).
    assert cost["decoder_forward"] == cost["decoder_backward"] == cost["encoder_forward"] == 0
    assert cost["unet_forward"] == STEPS
    assert cost["unet_backward"] == (STEPS if solver == "latent-dps" else 0)
    assert report["residual"]["rms"] > 0


def test_psld_is_refused_on_a_pixel_prior(tmp_path, cli, pixel_dir):
    random_rgb(tmp_path / "in.png")
    r = cli(
        "deblur",
        tmp_path / "in.png",
        "--model",
        pixel_dir,
        "--solver",
        "psld",
        "-o",
        tmp_path / "out",
        expect=1,
    )
    one_line_error(r.stderr, "pixel-space", "psld needs a latent prior")
    assert not (tmp_path / "out" / "in.png").exists()


def test_bench_runs_a_latent_and_a_pixel_prior_side_by_side(tmp_path, cli, prior_dir, pixel_dir):
    models = f"{prior_dir},{pixel_dir}"
    cli(
        "bench", "deblur", "--synthetic", "dead-leaves", "--n", "1", "--size", "32", "--model", models,
        "--solvers", "latent-dps,psld", "--steps", "2", "--sigma", "1.0", "--kernel-size", "5",
        "-o", tmp_path / "bench", "--quiet",
    )  # fmt: skip
    with open(tmp_path / "bench" / "bench.csv") as f:
        rows = {row["solver"]: row for row in csv.DictReader(f)}
    latent, pixel = prior_dir.name, pixel_dir.name
    assert set(rows) == {
        f"latent-dps:fast@{latent}",
        f"psld:fast@{latent}",
        f"dps:fast@{pixel}",
        f"psld:fast@{pixel}",
    }
    assert rows[f"psld:fast@{pixel}"]["note"].startswith("not applicable: psld needs a latent prior")
    assert int(rows[f"dps:fast@{pixel}"]["decoder_forward"]) == 0
    assert int(rows[f"latent-dps:fast@{latent}"]["decoder_forward"]) == 3  # 2 steps and the final decode
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    assert "latent-space" in markdown and "pixel-space" in markdown


def test_registry_pins_what_it_could_confirm_and_says_what_it_could_not(cli):
    sd15, sd21, ddpm = (get_entry(name) for name in ("sd-1.5", "sd-2.1-base", "ddpm-celebahq"))
    assert sd15.repo == "stable-diffusion-v1-5/stable-diffusion-v1-5" and sd15.pinned
    assert sd21.repo == "stabilityai/stable-diffusion-2-1-base" and sd21.pinned
    assert sd15.latent_scale == sd21.latent_scale == 0.18215 and sd15.license == "creativeml-openrail-m"
    assert (ddpm.repo, ddpm.revision, ddpm.pinned) == ("google/ddpm-ema-celebahq-256", "main", False)
    assert re.search(r"^pinned\s+no: the branch main", cli("models", "info", "ddpm-celebahq").stdout, re.M)
    assert re.search(r"^pinned\s+yes$", cli("models", "info", "sd-1.5").stdout, re.M)


def test_latent_dps_on_a_pixel_prior_is_a_dps_step_as_chung_et_al_write_it(pixel_dir):
    """Two deterministic steps of latent-dps on the pixel prior against DPS redone here in
    its own [-1, 1] units: x0 = (x - sqrt(1 - a) eps) / sqrt(a), the DDIM step to a', then
    x' - zeta grad_x ||y' - A'(x0)||, with y' = 2y - 1 and A'(x') = 2 A((x' + 1) / 2) - 1."""
    prior = load_prior(str(pixel_dir))
    operator = GaussianBlur(1.0, 5)
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = operator(clean)
    config = LatentDPSConfig.preset("fast", steps=2)
    result = latent_dps(y, operator, prior, config, sigma_y=0.0, generator=torch.Generator().manual_seed(0))

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for step in scheduler_grid(prior.scheduler, 2):
        x = x.detach().requires_grad_(True)
        eps = prior.unet(x, torch.tensor([step.t])).sample
        x0 = (x - (1 - step.abar) ** 0.5 * eps) / step.abar**0.5
        moved = step.abar_next**0.5 * x0 + (1 - step.abar_next) ** 0.5 * eps
        residual = (2 * y - 1) - (2 * operator((x0 + 1) / 2) - 1)
        (grad,) = torch.autograd.grad(config.zeta * residual.norm(), x)
        x = moved.detach() - grad
    torch.testing.assert_close(result.z, x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.x, ((x + 1) / 2).clamp(0, 1), rtol=1e-4, atol=1e-5)
