"""The ``model_card.md`` a training run writes beside the prior."""

from __future__ import annotations

import datetime
import json
import platform
from typing import Any

import diffusers
import torch

from ..messages import format_duration
from ..priors.diffusers_prior import downsample_factor, latent_channels
from .config import BETA_END, BETA_SCHEDULE, BETA_START, TrainConfig
from .results import TrainResult


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rate(steps: int, seconds: float) -> str:
    return f" ({steps / seconds:.3g} it/s)" if steps and seconds > 0 else ""


def model_card(
    config: TrainConfig,
    result: TrainResult,
    *,
    source: str,
    stage_s: dict[str, float],
    command: str | None,
    autoencoder: torch.nn.Module,
    unet: torch.nn.Module,
    scheduler_config: dict[str, Any],
    device: torch.device,
) -> str:
    ae_kind = type(autoencoder).__name__
    ae_folder = "vqvae" if ae_kind == "VQModel" else "vae"
    ae_cfg, unet_cfg = autoencoder.config, unet.config
    factor = downsample_factor(autoencoder)
    latent = result.latent_scale
    losses = result.final_losses
    schedule = (
        f"{scheduler_config.get('num_train_timesteps')} steps, {scheduler_config.get('beta_schedule')} betas "
        f"{scheduler_config.get('beta_start')}..{scheduler_config.get('beta_end')}, "
        f"prediction {scheduler_config.get('prediction_type')}"
    )
    if config.ae_train == "decoder":
        ae_loss = "L1, decoder only (encoder, latent space and scale kept from the base)"
    elif ae_kind == "AutoencoderKL":
        ae_loss = f"L1 + {config.kl_weight:g} x KL (per-element means)"
    else:
        ae_loss = "L1 + VQ codebook/commitment loss"
    ae_from_base = bool(config.base) and not result.ae_steps  # kept as the base had it
    unet_from_base = bool(config.base) and not result.unet_steps  # a trained UNet, kept as it was
    sampled = bool(result.unet_steps) or unet_from_base  # else the grid shows reconstructions
    weights = "the base's weights" if unet_from_base else f"EMA weights, decay {config.ema}"
    lines = [
        f"# Latent diffusion prior: {config.output.name}",
        "",
        f"Trained with `resample train-prior` on {datetime.date.today().isoformat()}"
        + (f", fine-tuned from `{config.base}`" if config.base else "")
        + ". Load it with `load_prior(folder)` or `--model FOLDER`.",
        "",
    ]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        "## Data",
        "",
        source,
        "",
        "## Model",
        "",
        "| part | folder | details | parameters |",
        "|---|---|---|---|",
        f"| autoencoder | `{ae_folder}/` | {ae_kind}, widths {list(ae_cfg.block_out_channels)}, "
        f"{ae_cfg.layers_per_block} layer(s) per block, downsampling factor {factor}, latent "
        f"{latent_channels(autoencoder)} x {config.resolution // factor} x {config.resolution // factor} "
        f"at {config.resolution} x {config.resolution}, scaling_factor {latent:.6g} | {_count(autoencoder):,} |",
        f"| denoiser | `unet/` | UNet2DModel ({weights}), widths "
        f"{list(unet_cfg.block_out_channels)}, blocks {list(unet_cfg.down_block_types)}, "
        f"{unet_cfg.layers_per_block} layer(s) per block | {_count(unet):,} |",
        f"| schedule | `scheduler/` | DDIMScheduler: {schedule} | |",
        "",
        f"Weights: {result.weights_bytes / 1e6:.2f} MB of safetensors. Images in [0, 1] map to the "
        "autoencoder's [-1, 1]; latents are multiplied by the scaling factor (1 / std of training latents) "
        "before diffusion.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| seed | {config.seed} |",
        (
            "| autoencoder | the base's, not trained further |"
            if ae_from_base
            else f"| autoencoder | {result.ae_steps} steps, batch {config.batch_size}, loss {ae_loss} |"
        ),
        (
            "| UNet | the base's, not trained further |"
            if unet_from_base
            else f"| UNet | {result.unet_steps} steps, batch {config.unet_batch}, noise-prediction MSE |"
        ),
        f"| optimiser | AdamW, lr {config.lr:g} (UNet {config.stage_lr('unet'):g}), {config.warmup_steps} warm-up "
        f"steps then cosine to x{config.min_lr_ratio:g}, gradient norm clipped at {config.grad_clip:g} |",
        f"| latent pool | {config.latent_pool or 'none (every batch encoded afresh)'} |",
        f"| device | {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {platform.machine()} |",
        f"| wall time | {format_duration(result.wall_time_s)} in all; optimiser steps: autoencoder "
        f"{format_duration(stage_s.get('autoencoder', 0.0))}{_rate(result.ae_steps, stage_s.get('autoencoder', 0.0))}, "
        f"UNet {format_duration(stage_s.get('unet', 0.0))}{_rate(result.unet_steps, stage_s.get('unet', 0.0))} |",
        "",
        "## Results",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    if "autoencoder" in losses:
        lines.append(
            f"| final autoencoder training loss (mean of the last 100 steps) | {losses['autoencoder']:.5f} |"
        )
    lines.append(f"| autoencoder reconstruction PSNR, 64 held-out images | {result.ae_psnr:.2f} dB |")
    if "unet" in losses:
        lines.append(
            f"| final UNet training loss (noise MSE, mean of the last 100 steps) | {losses['unet']:.5f} |"
        )
    if not sampled:
        lines += ["", "**The UNet is untrained (0 steps): this folder is not a usable prior yet.**"]
    grid = result.sample_grid.relative_to(config.output)
    lines += [
        "",
        f"Samples ({'DDIM, ' + str(config.sample_steps) + ' steps, EMA UNet' if sampled else 'autoencoder reconstructions'}): "
        f"`{grid.as_posix()}`",
        "",
        f"![samples]({grid.as_posix()})",
        "",
        "Per-step losses: `losses.csv`.",
        "",
        "## All settings",
        "",
        "```json",
        json.dumps(config.to_json(), indent=2),
        "```",
        "",
        f"New priors use the DDPM schedule of CompVis/ldm-celebahq-256 ({BETA_SCHEDULE}, "
        f"{BETA_START}..{BETA_END}); a fine-tuned prior keeps its base's.",
        "",
    ]
    return "\n".join(lines)
