"""Loading diffusers-format priors from a folder, the Hugging Face cache and the registry,
with tiny random models; never over the network."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel
from huggingface_hub import constants
from huggingface_hub.utils import LocalEntryNotFoundError
from safetensors.torch import load_file, save_file
from tiny_prior import KL_SCALING_FACTOR, make_tiny_prior

from resample_cli.priors import (
    DiffusersPrior,
    PriorError,
    fetch_prior,
    get_entry,
    load_prior,
    prior_cache_path,
)
from resample_cli.priors import loading as loading_module
from resample_cli.solvers.schedule import scheduler_grid

REPO = "tiny-owner/tiny-ldm"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def hf_cache(offline) -> Path:
    """Every test here runs offline on an empty cache of its own (conftest's ``offline``)."""
    return offline


def cache_repo(cache: Path, repo: str = REPO, commit: str = COMMIT, **tiny) -> Path:
    """Put a tiny model into ``cache`` as huggingface_hub lays out a download of ``main``."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = make_tiny_prior(storage / "snapshots" / commit, **tiny)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def write_registry(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(PriorError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading and the prior's maths ------------------------------------------------------


def test_local_folder_gives_a_working_vq_prior(tmp_path):
    prior = load_prior(str(make_tiny_prior(tmp_path / "m")))
    assert isinstance(prior, DiffusersPrior)
    assert prior.info.name == str(tmp_path / "m") and prior.info.repo is None and prior.info.revision is None
    assert (prior.image_channels, prior.latent_channels, prior.downsample_factor) == (3, 3, 4)
    assert prior.latent_scale == 1.0  # the VQ config states no scaling_factor
    assert prior.latent_shape(32, 32) == (3, 8, 8)
    assert not any(p.requires_grad for p in prior.unet.parameters())
    assert not prior.unet.training and not prior.autoencoder.training

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = prior.encode(x)
    assert z.shape == (2, 3, 8, 8) and z.dtype == torch.float32
    assert prior.decode(z).shape == (2, 3, 32, 32)
    eps = prior.eps(z, torch.tensor([10, 900]))
    assert eps.shape == z.shape and eps.dtype == torch.float32


def test_vq_decode_quantises_with_straight_through_gradient(tmp_path):
    prior = load_prior(str(make_tiny_prior(tmp_path / "m")))
    vq = prior.autoencoder
    z = torch.randn(1, 3, 8, 8, requires_grad=True)
    x = prior.decode(z)
    weight = torch.randn_like(x)
    (grad,) = torch.autograd.grad((x * weight).sum(), z)
    assert grad.abs().sum() > 0

    # The same as decoding the nearest codebook vectors, and the gradient is the decoder's
    # gradient at those vectors, passed straight through the rounding.
    quantised = vq.quantize(z.detach())[0].requires_grad_(True)
    x_q = vq.decode(quantised, force_not_quantize=True).sample
    (grad_q,) = torch.autograd.grad((x_q * weight).sum(), quantised)
    torch.testing.assert_close(x, x_q)
    torch.testing.assert_close(grad, grad_q)


def test_kl_prior_uses_posterior_mean_and_stated_scaling_factor(tmp_path):
    folder = make_tiny_prior(tmp_path / "m", autoencoder="kl")
    prior = load_prior(str(folder))
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    assert prior.latent_scale == KL_SCALING_FACTOR
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(prior.encode(x), vae.encode(x).latent_dist.mean * KL_SCALING_FACTOR)
    torch.testing.assert_close(prior.encode(x), prior.encode(x))  # deterministic
    z = torch.randn(1, 3, 8, 8, requires_grad=True)
    x_hat = prior.decode(z)
    torch.testing.assert_close(x_hat, vae.decode(z / KL_SCALING_FACTOR).sample)
    x_hat.sum().backward()
    assert z.grad.abs().sum() > 0


def test_bin_weights_load_through_weights_only_and_equal_safetensors(tmp_path, monkeypatch):
    safe = load_prior(str(make_tiny_prior(tmp_path / "safe", seed=3)))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    binary = load_prior(str(make_tiny_prior(tmp_path / "bin", seed=3, safetensors=False)))
    assert len(calls) == 2 and all(c.get("weights_only") is True for c in calls)
    for a, b in ((safe.unet, binary.unet), (safe.autoencoder, binary.autoencoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_eps_and_schedule_agree_with_diffusers(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    prior = load_prior(str(folder))
    unet = UNet2DModel.from_pretrained(folder / "unet")
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    torch.testing.assert_close(prior.eps(z, t), unet(z, t).sample)

    reference = DDIMScheduler.from_pretrained(folder / "scheduler")
    torch.testing.assert_close(prior.alphas_cumprod, reference.alphas_cumprod.double())
    reference.set_timesteps(50)
    grid = scheduler_grid(prior.scheduler, 50)
    assert [step.t for step in grid] == reference.timesteps.tolist()
    assert grid[-1].abar_next == float(reference.final_alpha_cumprod)
    assert prior.scheduler.num_inference_steps is None  # the prior's own scheduler is left alone


def test_a_ddpm_scheduler_config_becomes_ddim_with_the_same_schedule(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small_log")
    ddpm.save_pretrained(folder / "scheduler")
    prior = load_prior(str(folder))
    assert type(prior.scheduler) is DDIMScheduler
    torch.testing.assert_close(prior.alphas_cumprod, ddpm.alphas_cumprod.double())


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_types_are_converted_to_eps(tmp_path, prediction_type):
    folder = make_tiny_prior(tmp_path / "m")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": prediction_type}))
    prior = load_prior(str(folder))
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 600])
    out = prior.unet(z, t).sample
    abar = prior.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    # z = sqrt(abar) z0 + sqrt(1 - abar) eps; v = sqrt(abar) eps - sqrt(1 - abar) z0
    if prediction_type == "v_prediction":
        z0 = abar.sqrt() * z - (1 - abar).sqrt() * out
    else:
        z0 = out
    eps = prior.eps(z, t)
    torch.testing.assert_close(abar.sqrt() * z0 + (1 - abar).sqrt() * eps, z, rtol=1e-4, atol=1e-5)


def test_legacy_attention_parameter_names_load(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    expected = load_prior(str(folder))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(weights)
    renamed = {}
    for key, value in state.items():
        for new, legacy in old.items():
            key = key.replace(f".{new}.", f".{legacy}.")
        renamed[key] = value
    assert renamed.keys() != state.keys()
    save_file(renamed, weights)
    z, t = torch.randn(1, 3, 8, 8), torch.tensor([100])
    torch.testing.assert_close(load_prior(str(folder)).eps(z, t), expected.eps(z, t))


def test_float64_networks_keep_the_callers_dtype(tmp_path):
    prior = load_prior(str(make_tiny_prior(tmp_path / "m")), dtype=torch.float64)
    assert prior.dtype == torch.float64 and next(prior.unet.parameters()).dtype == torch.float64
    z = torch.randn(1, 3, 8, 8)
    assert prior.eps(z, torch.tensor([1])).dtype == torch.float32
    assert prior.decode(z).dtype == torch.float32


# --- the Hugging Face cache and the registry --------------------------------------------


def test_hub_repo_id_loads_offline_from_the_cache(hf_cache):
    snapshot = cache_repo(hf_cache)
    prior = load_prior(REPO)
    assert (prior.info.name, prior.info.repo, prior.info.revision) == (REPO, REPO, COMMIT)
    assert Path(prior.info.path) == snapshot
    assert load_prior(REPO, revision=COMMIT).info.revision == COMMIT
    assert prior_cache_path(REPO) == snapshot
    assert fetch_prior(REPO) == snapshot  # offline, fetching finds it already there
    reference = load_prior(str(snapshot))
    z, t = torch.randn(1, 3, 8, 8), torch.tensor([42])
    torch.testing.assert_close(prior.eps(z, t), reference.eps(z, t))


def test_registry_name_loads_with_its_revision_and_latent_scale(hf_cache, tmp_path):
    cache_repo(hf_cache)
    registry = write_registry(
        tmp_path / "registry.toml",
        f'[models.tiny]\nrepo = "{REPO}"\nrevision = "{COMMIT}"\nautoencoder = "vqvae"\nlatent_scale = 2.0\n',
    )
    prior = load_prior("tiny", registry=registry)
    assert (prior.info.name, prior.info.repo, prior.info.revision) == ("tiny", REPO, COMMIT)
    assert prior.latent_scale == 2.0  # the registry overrides the config
    unscaled = load_prior(REPO)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(prior.encode(x), 2.0 * unscaled.encode(x))
    z = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(prior.decode(z), unscaled.decode(z / 2.0))


def test_bundled_registry_entry_loads_from_a_path_beside_the_registry(tmp_path):
    make_tiny_prior(tmp_path / "weights" / "toy", autoencoder="kl")
    registry = write_registry(
        tmp_path / "weights" / "registry.toml", '[models.toy]\npath = "toy"\nchannels = 3\n'
    )
    entry = get_entry("toy", registry)
    assert entry.kind == "bundled" and entry.path == (tmp_path / "weights" / "toy").resolve()
    prior = load_prior("toy", registry=registry)
    assert prior.info.path == str(entry.path) and prior.latent_scale == KL_SCALING_FACTOR
    assert prior_cache_path("toy", registry=registry) == entry.path


def test_project_registry_pins_celebahq():
    entry = get_entry("celebahq")
    assert entry.repo == "CompVis/ldm-celebahq-256"
    assert entry.revision == "03978f22272a3c2502da709c3940e227c9714bdd"
    assert (entry.autoencoder, entry.latent_scale, entry.resolution, entry.channels) == ("vqvae", 1.0, 256, 3)


def test_download_fetches_safetensors_and_bin_only_where_needed(hf_cache, tmp_path, monkeypatch):
    """The online path, with snapshot_download replaced by a copy from a local 'Hub' folder."""
    remote = make_tiny_prior(tmp_path / "remote")
    make_tiny_prior(tmp_path / "bin-only", safetensors=False)
    shutil.copy(tmp_path / "bin-only/unet/diffusion_pytorch_model.bin", remote / "unet")
    (remote / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # unet: .bin only
    shutil.copy(tmp_path / "bin-only/vqvae/diffusion_pytorch_model.bin", remote / "vqvae")  # vqvae: both
    (remote / "README.md").write_text("not needed")
    requested = []

    def fake_snapshot_download(repo_id, *, revision, cache_dir, allow_patterns, local_files_only=False):
        assert repo_id == REPO and cache_dir == str(hf_cache) and not local_files_only
        requested.append(allow_patterns)
        snapshot = Path(cache_dir) / "snapshots" / COMMIT
        for file in remote.rglob("*"):
            rel = file.relative_to(remote).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, snapshot / rel)
        return str(snapshot)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading_module, "snapshot_download", fake_snapshot_download)
    folder = fetch_prior(REPO)
    fetched = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert fetched == [
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "vqvae/config.json",
        "vqvae/diffusion_pytorch_model.safetensors",
    ]
    assert requested[1] == ["unet/diffusion_pytorch_model.bin"]


# --- errors -----------------------------------------------------------------------------


def test_offline_with_an_empty_cache_says_how_to_fetch(hf_cache):
    message = one_line_error(load_prior, REPO)
    assert REPO in message and "revision main" in message and str(hf_cache) in message
    assert f"resample models download {REPO}" in message
    assert prior_cache_path(REPO) is None

    message = one_line_error(load_prior, "celebahq", device="cpu")
    assert "'celebahq'" in message and "CompVis/ldm-celebahq-256" in message
    assert "03978f22272a3c2502da709c3940e227c9714bdd" in message and str(hf_cache) in message
    assert "resample models download celebahq" in message
    assert "--revision abc" in one_line_error(fetch_prior, "celebahq", revision="abc")


def test_a_cached_snapshot_missing_weights_names_the_missing_file(hf_cache):
    snapshot = cache_repo(hf_cache)
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert prior_cache_path(REPO) is None
    message = one_line_error(load_prior, REPO)
    assert "unet/diffusion_pytorch_model.safetensors (or .bin)" in message and str(snapshot) in message
    assert f"resample models download {REPO}" in message and "HF_HUB_OFFLINE" in message


def test_a_folder_model_needs_no_registry(tmp_path, monkeypatch):
    folder = make_tiny_prior(tmp_path / "m")
    missing = tmp_path / "no-such-registry.toml"
    assert load_prior(str(folder), registry=missing).info.path == str(folder.resolve())
    assert prior_cache_path(str(folder), registry=missing) == folder.resolve()
    # A bare name that is a folder here works too when the registry cannot be read.
    monkeypatch.chdir(tmp_path)
    assert load_prior("m", registry=missing).info.path == str(folder.resolve())
    assert "cannot read the model registry" in one_line_error(load_prior, "celebahq", registry=missing)


def test_old_scheduler_keys_load_without_warnings(tmp_path, capfd):
    """The Hub's CelebA-HQ scheduler config still carries keys diffusers dropped long ago."""
    folder = make_tiny_prior(tmp_path / "m")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "timestep_values": None, "timesteps": 1000}))
    capfd.readouterr()
    prior = load_prior(str(folder))
    captured = capfd.readouterr()
    assert "timestep_values" not in captured.err + captured.out
    assert "accelerate" not in captured.err + captured.out  # diffusers' loading chatter stays quiet
    reference = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear"
    )
    torch.testing.assert_close(prior.alphas_cumprod, reference.alphas_cumprod.double())


def test_missing_subfolder_names_it_and_the_expected_layout(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    shutil.rmtree(folder / "scheduler")
    message = one_line_error(load_prior, str(folder))
    assert "scheduler/scheduler_config.json" in message and "expected unet/, vqvae/ or vae/" in message
    shutil.rmtree(folder / "vqvae")
    assert "vqvae/config.json or vae/config.json" in one_line_error(load_prior, str(folder))


def test_truncated_safetensors_file_is_named(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    weights = folder / "vqvae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    message = one_line_error(load_prior, str(folder))
    assert str(weights) in message and "corrupt" in message


def test_garbage_bin_file_is_named(tmp_path):
    folder = make_tiny_prior(tmp_path / "m", safetensors=False)
    weights = folder / "unet" / "diffusion_pytorch_model.bin"
    weights.write_bytes(b"this is not a checkpoint" * 10)
    message = one_line_error(load_prior, str(folder))
    assert str(weights) in message and "corrupt" in message
    assert "weights_only` set to `False" not in message  # torch's advice to unpickle anyway is left out


def test_bin_file_with_pickled_code_is_refused(tmp_path):
    folder = make_tiny_prior(tmp_path / "m", safetensors=False)
    weights = folder / "unet" / "diffusion_pytorch_model.bin"
    torch.save({"weight": torch.zeros(1), "payload": print}, weights)
    assert str(weights) in one_line_error(load_prior, str(folder))


def test_weights_not_matching_the_config(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "block_out_channels": [8, 24]}))
    message = one_line_error(load_prior, str(folder))
    assert "do not match unet/config.json" in message and "by the config" in message

    state = load_file(folder / "vqvae" / "diffusion_pytorch_model.safetensors")
    state.pop("quantize.embedding.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, folder / "vqvae" / "diffusion_pytorch_model.safetensors")
    make_tiny_prior(tmp_path / "fresh")
    shutil.copytree(tmp_path / "fresh" / "unet", folder / "unet", dirs_exist_ok=True)
    message = one_line_error(load_prior, str(folder))
    assert (
        "1 missing (e.g. quantize.embedding.weight)" in message
        and "1 unexpected (e.g. extra.weight)" in message
    )


def test_unet_and_autoencoder_channel_counts_must_agree(tmp_path):
    folder = make_tiny_prior(tmp_path / "m", latent_channels=4)
    make_tiny_prior(tmp_path / "other", latent_channels=3)
    shutil.copytree(tmp_path / "other" / "unet", folder / "unet", dirs_exist_ok=True)
    message = one_line_error(load_prior, str(folder))
    assert str(folder) in message and "3 to 3 channels" in message and "latent has 4" in message


def test_unknown_names(tmp_path):
    message = one_line_error(get_entry, "nope")
    assert "'nope'" in message and "celebahq" in message
    message = one_line_error(load_prior, "nope")
    assert "unknown model 'nope'" in message and "celebahq" in message and "owner/name" in message


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ('[models.x]\nrepo = "a/b"\nlatent_scael = 1.0\n', "unknown field 'latent_scael'"),
        ('[models.x]\nrepo = "a/b"\npath = "x"\n', "exactly one of 'repo'"),
        ('[models.x]\nrepo = "a/b"\nresolution = "256"\n', "'resolution' has the wrong type"),
        ('[models.x]\nrepo = "a/b"\nlatent_scale = 0\n', "'latent_scale' must be positive"),
        ("[models.x\n", "not valid TOML"),
    ],
)
def test_malformed_registry(tmp_path, body, complaint):
    registry = write_registry(tmp_path / "registry.toml", body)
    assert complaint in one_line_error(get_entry, "x", registry)


def test_revision_is_refused_for_local_folders(tmp_path):
    folder = make_tiny_prior(tmp_path / "m")
    assert "local folder" in one_line_error(load_prior, str(folder), revision="main")


def test_local_entry_not_found_is_what_an_offline_snapshot_download_raises(hf_cache):
    # The mapping of errors above relies on this huggingface_hub behaviour.
    from huggingface_hub import snapshot_download

    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(REPO, cache_dir=str(hf_cache))
