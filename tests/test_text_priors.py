"""Text-conditioned latent priors (the Stable Diffusion layout): loading from a folder and
from the Hub cache offline, the prompt reaching the UNet, classifier-free guidance against
the formula, the CLI round trip with its pass counts, and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import STEPS, load_report, one_line_error, random_rgb
from tiny_pipelines import SD_SCALING_FACTOR, cache_as_hub_repo, make_tiny_text_prior

from resample_cli.priors import PriorError, load_prior
from resample_cli.priors.text import Prompt, TextConditionedPrior

REPO, COMMIT = "tiny-owner/tiny-sd", "fedcba9876543210fedcba9876543210fedcba98"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return make_tiny_text_prior(tmp_path_factory.mktemp("sd") / "sd")


def test_folder_and_hub_cache_load_the_same_text_conditioned_prior(sd_dir, offline):
    prior = load_prior(str(sd_dir))
    assert isinstance(prior, TextConditionedPrior) and prior.space == "latent"
    assert prior.latent_scale == SD_SCALING_FACTOR and prior.image_channels == 3
    assert prior.conditioning() == {
        "kind": "text",
        "prompt": "",
        "negative_prompt": "",
        "guidance_scale": 1.0,
    }
    snapshot = cache_as_hub_repo(offline, REPO, COMMIT, make_tiny_text_prior)
    cached = load_prior(REPO)
    assert (cached.info.repo, cached.info.revision, Path(cached.info.path)) == (REPO, COMMIT, snapshot)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 700])
    torch.testing.assert_close(cached.eps(z, t), prior.eps(z, t))


def test_the_prompt_reaches_the_unet_and_guidance_follows_its_formula(sd_dir):
    prior = load_prior(str(sd_dir))
    z, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([400])

    def by_hand(text: str) -> torch.Tensor:
        """The UNet's output on the text encoder's last hidden state, called directly."""
        ids = prior.tokenizer(text, padding="max_length", max_length=16, return_tensors="pt").input_ids
        with torch.no_grad():
            embedding = prior.text_encoder(ids).last_hidden_state
            return prior.unet(z, t, encoder_hidden_states=embedding).sample

    prior.set_prompt(Prompt("a cat"))
    cat = prior.eps(z, t)
    prior.set_prompt(Prompt("a dog"))
    dog = prior.eps(z, t)
    assert (cat - dog).abs().max() > 1e-3  # same latent, same timestep, another prompt
    torch.testing.assert_close(cat, by_hand("a cat"))
    prior.set_prompt(Prompt("a cat", "a dog", guidance_scale=4.0))
    assert prior.unet_passes == 2
    expected = by_hand("a dog") + 4.0 * (by_hand("a cat") - by_hand("a dog"))
    torch.testing.assert_close(prior.eps(z, t), expected, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_keeps_the_gradients(sd_dir):
    prior = load_prior(str(sd_dir))
    z = torch.randn(1, 4, 8, 8, requires_grad=True)

    def gradient() -> torch.Tensor:
        (grad,) = torch.autograd.grad(
            prior.decode(z).square().sum() + prior.eps(z, torch.tensor([500])).square().sum(), z
        )
        return grad

    plain = gradient()
    prior.enable_gradient_checkpointing()
    assert prior.autoencoder.decoder.gradient_checkpointing and prior.unet.is_gradient_checkpointing
    torch.testing.assert_close(gradient(), plain)


@pytest.mark.parametrize(
    ("task", "simulate", "restore", "solver"),
    [
        (
            "deblur",
            ["--sigma", "1.0", "--kernel-size", "5"],
            ["--sigma", "1.0", "--kernel-size", "5"],
            "resample",
        ),
        ("inpaint", ["--box", "12"], [], "latent-dps"),
    ],
)
def test_simulate_restore_report_with_a_prompt_and_guidance(
    tmp_path, cli, sd_dir, task, simulate, restore, solver
):
    random_rgb(tmp_path / "clean" / "photo.png")
    cli("simulate", task, tmp_path / "clean", "-o", tmp_path / "meas", *simulate)
    if task == "inpaint":
        restore = ["--mask", tmp_path / "meas" / "photo.mask.png"]
    common = [
        tmp_path / "meas" / "photo.png",
        *restore,
        "--model",
        sd_dir,
        "--steps",
        STEPS,
        "--solver",
        solver,
    ]
    prompted = ["--prompt", "a cat", "--negative-prompt", "a dog", "--guidance-scale", "5"]
    cli(task, *common, "-o", tmp_path / "guided", *prompted)
    cli(task, *common, "-o", tmp_path / "plain", "--prompt", "a cat")
    guided = load_report(tmp_path / "guided" / "photo.report.json")
    plain = load_report(tmp_path / "plain" / "photo.report.json")
    assert guided["model"]["space"] == "latent" and guided["solver"]["name"] == solver
    assert guided["model"]["conditioning"] == {
        "kind": "text",
        "prompt": "a cat",
        "negative_prompt": "a dog",
        "guidance_scale": 5.0,
    }
    assert plain["model"]["conditioning"]["guidance_scale"] == 1.0
    # fast: one eps per step (ReSample without look-ahead, Latent-DPS), two UNet passes each with guidance.
    assert plain["cost"]["unet_forward"] == STEPS and guided["cost"]["unet_forward"] == 2 * STEPS
    if solver == "latent-dps":  # a DPS gradient goes back through both passes
        assert plain["cost"]["unet_backward"] == STEPS and guided["cost"]["unet_backward"] == 2 * STEPS
    assert guided["cost"]["decoder_forward"] == plain["cost"]["decoder_forward"] > 0


def test_without_transformers_a_text_model_names_the_extra(tmp_path, cli, sd_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(PriorError, match=r"pip install 'resample-cli\[text\]'"):
        load_prior(str(sd_dir))
    random_rgb(tmp_path / "in.png")
    r = cli("deblur", tmp_path / "in.png", "--model", sd_dir, "-o", tmp_path / "out", expect=1)
    assert "resample-cli[text]" in one_line_error(r.stderr, "transformers")
    assert not (tmp_path / "out" / "in.png").exists()


def test_prompt_errors(tmp_path, cli, sd_dir, prior_dir):
    random_rgb(tmp_path / "in.png")
    args = [tmp_path / "in.png", "--steps", STEPS, "-o", tmp_path / "out"]
    r = cli("deblur", *args, "--model", sd_dir, "--negative-prompt", "blur", expect=2)
    assert "guidance-scale" in r.stderr
    r = cli("deblur", *args, "--model", prior_dir, "--prompt", "a cat", expect=1)
    one_line_error(r.stderr, "is not text-conditioned")
    r = cli("deblur", *args, "--model", sd_dir, "--prompt", "cat " * 20, expect=1)
    one_line_error(r.stderr, "tokens", "takes at most 14")
    assert not (tmp_path / "out" / "in.png").exists()
    with pytest.raises(ValueError, match="at least 1"):
        Prompt(guidance_scale=0.5)
