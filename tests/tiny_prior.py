"""Tiny random latent diffusion models in the diffusers folder layout, for tests.

``make_tiny_prior`` writes ``unet/``, ``vqvae/`` or ``vae/``, and ``scheduler/`` the way
``save_pretrained`` does. The autoencoder downsamples by 4, so an 8x8 latent decodes to a
32x32 image. The VQ config leaves ``scaling_factor`` out, as CompVis/ldm-celebahq-256 does
(latent scale 1.0); the KL config states ``scaling_factor`` = ``KL_SCALING_FACTOR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel, VQModel

KL_SCALING_FACTOR = 0.5


def tiny_unet(channels: int, sample_size: int) -> UNet2DModel:
    """The tiny two-level noise predictor of the test priors, latent or pixel space."""
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=4,
    )


def make_tiny_prior(
    folder: Path,
    *,
    autoencoder: Literal["vq", "kl"] = "vq",
    image_channels: int = 3,
    latent_channels: int = 3,
    seed: int = 0,
    safetensors: bool = True,
) -> Path:
    """Write a tiny random model under ``folder`` and return ``folder``."""
    folder = Path(folder)
    torch.manual_seed(seed)
    blocks = {
        "in_channels": image_channels,
        "out_channels": image_channels,
        "block_out_channels": (8, 8, 8),  # three blocks: downsampling factor 4
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 1,
        "latent_channels": latent_channels,
        "norm_num_groups": 4,
        "sample_size": 32,
    }
    if autoencoder == "vq":
        ae = VQModel(**blocks, num_vq_embeddings=16)
        subfolder = "vqvae"
    else:
        ae = AutoencoderKL(**blocks, scaling_factor=KL_SCALING_FACTOR)
        subfolder = "vae"
    unet = tiny_unet(latent_channels, sample_size=8)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear"
    )
    ae.save_pretrained(folder / subfolder, safe_serialization=safetensors)
    unet.save_pretrained(folder / "unet", safe_serialization=safetensors)
    scheduler.save_pretrained(folder / "scheduler")
    if autoencoder == "vq":
        config_file = folder / subfolder / "config.json"
        config = json.loads(config_file.read_text())
        del config["scaling_factor"]
        config_file.write_text(json.dumps(config, indent=2))
    return folder
