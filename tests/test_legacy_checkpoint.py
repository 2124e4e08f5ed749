"""The checkpoint format of CompVis/ldm-celebahq-256, written by an early diffusers, loads with
the current one and computes what the old release computed.

The fixture is a tiny random model with the real one's block types and config keys (two levels
per network, one layer per block, widths 32 and 64; see the generator's docstring for why no
smaller one keeps the UNet sensitive to the timestep), written by diffusers 0.2.4 (CPython
3.11.7, torch 2.13.0+cpu, huggingface_hub 0.10.1, numpy 1.26.4, safetensors 0.8.0) in a side
virtualenv, never this project's:

    python3.11 -m venv /tmp/olddiff
    /tmp/olddiff/bin/pip install torch==2.13.0 diffusers==0.2.4 huggingface_hub==0.10.1 \\
        "numpy<2" safetensors==0.8.0
    OMP_NUM_THREADS=1 /tmp/olddiff/bin/python tests/fixtures/make_legacy_ldm.py

tests/fixtures/ldm-celebahq-legacy/ holds that release's save_pretrained output (.bin weights
with the old attention names query/key/value/proj_attn), the Hub's scheduler config (old keys
``timesteps`` and ``timestep_values``, no ``num_train_timesteps``) and expected.npz (fixed
inputs and the old release's UNet eps, VQ encode and quantising VQ decode);
tests/fixtures/ldm-celebahq-legacy-safetensors/ the same tensors under the same old names as
safetensors. The weights are stored as float16 (about 1.9 MB a form rather than 3.7 MB): the
old release computed the expected outputs in float32 from exactly those values, and the loader
copies them into float32 networks, so the two agree to float32 rounding. Each form is laid out
as the Hub's cache of the real repository at the project's pinned commit and loaded through a
registry entry like ``celebahq``, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from resample_cli.priors import load_prior

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FORMS = {
    "bin": FIXTURES / "ldm-celebahq-legacy",
    "safetensors": FIXTURES / "ldm-celebahq-legacy-safetensors",
}
EXPECTED = FIXTURES / "ldm-celebahq-legacy" / "expected.npz"
REPO = "CompVis/ldm-celebahq-256"
COMMIT = "03978f22272a3c2502da709c3940e227c9714bdd"  # weights/registry.toml's pin
LEGACY_NAMES = {"query", "key", "value", "proj_attn"}
NEW_NAMES = {"to_q", "to_k", "to_v", "to_out"}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}  # float32; old and new diffusers agree to ~3e-6


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    with np.load(EXPECTED) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def cache_like_the_hub(cache: Path, model: Path) -> Path:
    """Lay ``model``'s files out as a download of REPO's main branch at COMMIT: content-named
    blobs (sha256 for LFS weights, git's blob sha1 otherwise) that the snapshot links to."""
    storage = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    for file in sorted(model.rglob("*")):
        if not file.is_file() or file == EXPECTED:
            continue
        data = file.read_bytes()
        if file.suffix in (".bin", ".safetensors"):
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


def celebahq_registry(path: Path) -> Path:
    path.write_text(
        "[models.celebahq]\n"
        f'repo = "{REPO}"\n'
        f'revision = "{COMMIT}"\n'
        'unet = "unet"\nautoencoder = "vqvae"\nscheduler = "scheduler"\n'
        "latent_scale = 1.0\n"
    )
    return path


def assert_reproduces_the_old_release(prior, expected: dict[str, torch.Tensor]) -> None:
    z = expected["unet_z"]
    for t, eps in zip(expected["timesteps"].tolist(), expected["unet_eps"], strict=True):
        torch.testing.assert_close(prior.eps(z, torch.tensor([t])), eps, **TOLERANCE)
    torch.testing.assert_close(
        prior.eps(z, expected["unet_t_mixed"]), expected["unet_eps_mixed"], **TOLERANCE
    )
    torch.testing.assert_close(prior.encode(expected["vq_x"]), expected["vq_latents"], **TOLERANCE)
    torch.testing.assert_close(prior.decode(expected["vq_z"]), expected["vq_decoded"], **TOLERANCE)


def test_the_fixture_is_in_the_old_format():
    """Guards against the fixture being remade with a newer diffusers by mistake."""
    for form, folder in FORMS.items():
        for sub in ("unet", "vqvae"):
            if form == "bin":
                state = torch.load(folder / sub / "diffusion_pytorch_model.bin", weights_only=True)
            else:
                with safe_open(folder / sub / "diffusion_pytorch_model.safetensors", "pt") as f:
                    state = {key: f.get_tensor(key) for key in f.keys()}
            names = {part for key in state for part in key.split(".")}
            assert LEGACY_NAMES <= names and not NEW_NAMES & names, (form, sub)
            assert {value.dtype for value in state.values()} == {torch.float16}, (form, sub)
            config = json.loads((folder / sub / "config.json").read_text())
            assert config["_diffusers_version"] == "0.2.4"
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["timesteps"] == 1000 and "timestep_values" in scheduler
        assert "num_train_timesteps" not in scheduler


@pytest.mark.parametrize("form", FORMS)
def test_registry_entry_loads_the_cached_hub_model_and_matches_the_old_release(
    form, offline, tmp_path, expected
):
    snapshot = cache_like_the_hub(offline, FORMS[form])
    prior = load_prior("celebahq", registry=celebahq_registry(tmp_path / "registry.toml"))
    assert (prior.info.name, prior.info.repo, prior.info.revision) == ("celebahq", REPO, COMMIT)
    assert Path(prior.info.path) == snapshot
    assert prior.latent_scale == 1.0
    assert_reproduces_the_old_release(prior, expected)


def test_the_old_scheduler_config_gives_the_scaled_linear_schedule(offline, tmp_path, expected):
    cache_like_the_hub(offline, FORMS["bin"])
    prior = load_prior("celebahq", registry=celebahq_registry(tmp_path / "registry.toml"))
    abar = prior.scheduler.alphas_cumprod
    assert abar.shape == (1000,)
    # Closed form, in float64: betas linear in sqrt(beta) from 0.0015 to 0.0195.
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(abar.double(), torch.cumprod(1 - betas, 0), rtol=1e-5, atol=0)
    torch.testing.assert_close(abar.float(), expected["alphas_cumprod"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", FORMS)
def test_the_old_folder_loads_directly(form, expected):
    prior = load_prior(str(FORMS[form]))
    assert prior.info.repo is None and prior.latent_scale == 1.0  # no scaling_factor in the config
    networks = (prior.unet, prior.autoencoder)
    assert {p.dtype for net in networks for p in net.parameters()} == {torch.float32}
    assert_reproduces_the_old_release(prior, expected)
