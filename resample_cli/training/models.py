"""Building the networks a training run optimises, new or from a base prior, and saving the
result in the diffusers layout that ``resample_cli.priors.load_prior`` reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel, VQModel

from ..fileio.atomic import replace_folder
from ..priors import load_prior
from ..priors.diffusers_prior import AUTOENCODER_CLASSES, Autoencoder
from .config import BETA_END, BETA_SCHEDULE, BETA_START, TRAIN_TIMESTEPS, TrainConfig, TrainingError


def norm_groups(widths: tuple[int, ...] | list[int]) -> int:
    """The largest of 32, 16, ..., 1 that divides every width (GroupNorm needs it)."""
    for groups in (32, 16, 8, 4, 2, 1):
        if all(w % groups == 0 for w in widths):
            return groups
    return 1


def new_autoencoder(config: TrainConfig, channels: int) -> Autoencoder:
    widths = config.ae_channels
    kwargs = {
        "in_channels": channels,
        "out_channels": channels,
        "down_block_types": ("DownEncoderBlock2D",) * len(widths),
        "up_block_types": ("UpDecoderBlock2D",) * len(widths),
        "block_out_channels": widths,
        "layers_per_block": config.ae_layers_per_block,
        "latent_channels": config.latent_channels,
        "norm_num_groups": norm_groups(widths),
        "sample_size": config.resolution,
        "mid_block_add_attention": config.ae_attention,
    }
    if config.autoencoder == "vq":
        return VQModel(**kwargs, num_vq_embeddings=config.vq_codebook_size)
    return AutoencoderKL(**kwargs)


def new_unet(config: TrainConfig) -> UNet2DModel:
    widths = config.unet_channels
    levels = len(widths)
    attended = [i >= levels - config.unet_attention_levels for i in range(levels)]
    return UNet2DModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=widths,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attended),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)),
        layers_per_block=config.unet_layers_per_block,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=norm_groups(widths),
    )


def new_scheduler() -> DDIMScheduler:
    """The DDPM training schedule (see ``config.BETA_*``) as the DDIM scheduler priors carry;
    no clipping (latents are not bounded), the final step to abar_0 as CompVis' DDIM."""
    return DDIMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )


def from_base(spec: str) -> tuple[Autoencoder, UNet2DModel, DDIMScheduler, float]:
    """A base prior's networks made trainable again, its scheduler and latent scale."""
    prior = load_prior(spec)
    autoencoder = prior.autoencoder.train().requires_grad_(True)
    unet = prior.unet.train().requires_grad_(True)
    return autoencoder, unet, prior.scheduler, float(prior.latent_scale)


def plain_config(model: Any) -> dict[str, Any]:
    """A network's or scheduler's config as JSON-ready data (tuples as lists)."""
    return json.loads(json.dumps(dict(model.config), default=list))


def autoencoder_from_config(class_name: str, config: dict[str, Any]) -> Autoencoder:
    if class_name not in AUTOENCODER_CLASSES:
        raise TrainingError(f"checkpoint holds an unknown autoencoder class {class_name!r}")
    return AUTOENCODER_CLASSES[class_name].from_config(config)


def save_diffusers_layout(
    folder: Path, autoencoder: Autoencoder, unet: UNet2DModel, scheduler: DDIMScheduler, latent_scale: float
) -> None:
    """Write ``vae/`` or ``vqvae/`` (with ``scaling_factor`` = ``latent_scale``), ``unet/`` and
    ``scheduler/`` under ``folder`` with safetensors weights. Each subfolder is written beside
    its final place and renamed into it, so a folder is whole or absent."""
    autoencoder.register_to_config(scaling_factor=float(latent_scale))
    sub = "vqvae" if isinstance(autoencoder, VQModel) else "vae"
    other = "vae" if sub == "vqvae" else "vqvae"
    shutil.rmtree(folder / other, ignore_errors=True)  # a stale autoencoder of the other kind
    for name, save in (
        (sub, lambda p: autoencoder.save_pretrained(p, safe_serialization=True)),
        ("unet", lambda p: unet.save_pretrained(p, safe_serialization=True)),
        ("scheduler", lambda p: scheduler.save_pretrained(p)),
    ):
        replace_folder(folder / name, save)
