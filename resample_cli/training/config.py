"""Training settings (``TrainConfig``), the learning-rate schedule, and progress reports."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from ..train_settings import AutoencoderPart, TrainSettings
from .data import SYNTHETIC_KINDS

AE_TRAIN_PARTS = get_args(AutoencoderPart)

# The noise schedule of new priors: the one of CompVis/ldm-celebahq-256 (the paper's prior):
# 1000 steps, betas linear in sqrt from 0.0015 to 0.0195 (diffusers' "scaled_linear"), so the
# solver presets tuned on that prior keep their meaning (abar_T ~ 0.0047).
TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END, BETA_SCHEDULE = 0.0015, 0.0195, "scaled_linear"


class TrainingError(Exception):
    """Settings, data or a checkpoint that cannot be used; ``str()`` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Everything a training run depends on. Sizes in pixels, steps in optimiser steps.
    The fields, with their defaults and the options of ``resample train-prior``, are
    declared once, in ``resample_cli.train_settings`` (torch-free, which this package is not).

    Data: exactly one of ``data`` (a folder, see ``FolderSource``) and ``synthetic``
    (``"ellipses"`` or ``"dead-leaves"``). ``channels`` None: 1 for ellipses, 3 for dead
    leaves, grey/RGB as the folder's files are, or the base prior's.

    Stage (a), the autoencoder: ``autoencoder`` "kl" (``AutoencoderKL``, loss = L1 +
    ``kl_weight`` * KL, both per-element means) or "vq" (``VQModel``, loss = L1 + the
    quantiser's codebook/commitment loss, ``vq_codebook_size`` codes). One encoder/decoder
    block per entry of ``ae_channels``; each block but the last halves the size, so 3
    entries give the downsampling factor 4. ``ae_attention`` adds self-attention to the
    autoencoder's middle block (costly at 32x32 latents).

    Stage (b), the ``UNet2DModel`` predicts the noise on latents scaled to unit standard
    deviation (the scale, 1 / std of training latents, is saved as the autoencoder's
    ``scaling_factor``), with the DDPM schedule above. One level per entry of
    ``unet_channels``; the lowest ``unet_attention_levels`` levels have self-attention
    (heads of ``attention_head_dim`` channels) besides the middle block's. ``ema`` is the
    decay of the exponential moving average of its weights, which is what gets saved.

    ``base``: a prior (registry name, folder or Hub id) to fine-tune instead of new
    networks; its architecture, noise schedule and latent scale are kept (the UNet was
    trained on latents of that scale). ``ae_steps`` 0 keeps its autoencoder as it is and
    trains only the UNet; ``ae_steps`` > 0 fine-tunes the autoencoder first: all of it
    (``ae_train`` "all"), or only its decoder (``ae_train`` "decoder": the encoder, and with
    it the latent space the UNet learnt, stays as it was, so the UNet needs no retraining).

    Optimiser: AdamW (no weight decay), gradient norm clipped to ``grad_clip``, learning
    rate ``lr`` (``unet_lr`` for the UNet if set) warmed up linearly over ``warmup_steps``
    then cosine-decayed to ``lr * min_lr_ratio`` at the end of each stage.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", Path(self.output))
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
        for name in ("ae_channels", "unet_channels"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))

    # -- derived values --------------------------------------------------------------------

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample_factor

    @property
    def unet_batch(self) -> int:
        return self.unet_batch_size or self.batch_size

    @property
    def total_steps(self) -> int:
        return self.ae_steps + self.unet_steps

    def stage_lr(self, stage: str) -> float:
        return self.unet_lr if stage == "unet" and self.unet_lr is not None else self.lr

    def validate(self) -> None:
        """Raise ``TrainingError`` naming the first setting that cannot work."""
        if (self.data is None) == (self.synthetic is None):
            raise TrainingError("give exactly one data source: a folder (data) or a synthetic generator")
        if self.synthetic is not None and self.synthetic not in SYNTHETIC_KINDS:
            raise TrainingError(
                f"unknown synthetic data {self.synthetic!r}; choose from {', '.join(SYNTHETIC_KINDS)}"
            )
        if self.channels not in (None, 1, 3):
            raise TrainingError(f"channels must be 1 or 3, got {self.channels}")
        if self.autoencoder not in ("kl", "vq"):
            raise TrainingError(f"autoencoder must be 'kl' or 'vq', got {self.autoencoder!r}")
        positive = {
            "resolution": self.resolution,
            "latent_channels": self.latent_channels,
            "ae_layers_per_block": self.ae_layers_per_block,
            "unet_layers_per_block": self.unet_layers_per_block,
            "attention_head_dim": self.attention_head_dim,
            "batch_size": self.batch_size,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "sample_steps": self.sample_steps,
            "sample_grid": self.sample_grid,
            "vq_codebook_size": self.vq_codebook_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise TrainingError(f"{name} must be >= 1, got {value}")
        for name, value in {
            "ae_steps": self.ae_steps,
            "unet_steps": self.unet_steps,
            "warmup_steps": self.warmup_steps,
            "latent_pool": self.latent_pool,
        }.items():
            if value < 0:
                raise TrainingError(f"{name} must be >= 0, got {value}")
        if self.unet_batch_size is not None and self.unet_batch_size < 1:
            raise TrainingError(f"unet_batch_size must be >= 1, got {self.unet_batch_size}")
        if self.total_steps < 1:
            raise TrainingError("nothing to train: ae_steps and unet_steps are both 0")
        if self.ae_train not in AE_TRAIN_PARTS:
            raise TrainingError(f"ae_train must be one of {', '.join(AE_TRAIN_PARTS)}, got {self.ae_train!r}")
        if self.ae_train == "decoder" and self.base is None:
            raise TrainingError(
                "ae_train 'decoder' fine-tunes a trained autoencoder's decoder; it needs a base prior"
            )
        if self.base is None and self.ae_steps < 1:
            raise TrainingError(
                "ae_steps must be >= 1 when training from scratch (ae_steps 0 needs a base prior)"
            )
        for name, value in {"lr": self.lr, "unet_lr": self.unet_lr, "grad_clip": self.grad_clip}.items():
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise TrainingError(f"{name} must be a positive number, got {value}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainingError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.ema < 1:
            raise TrainingError(f"ema must lie in [0, 1), got {self.ema}")
        if not self.kl_weight >= 0:
            raise TrainingError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.base is not None:
            return  # the architecture is the base prior's
        for name in ("ae_channels", "unet_channels"):
            widths = getattr(self, name)
            if not widths or min(widths) < 1:
                raise TrainingError(f"{name} needs at least one positive width, got {widths}")
        multiple = self.downsample_factor * 2 ** (len(self.unet_channels) - 1)
        if self.resolution % multiple:
            raise TrainingError(
                f"resolution {self.resolution} must be a multiple of {multiple} (autoencoder factor "
                f"{self.downsample_factor} x {2 ** (len(self.unet_channels) - 1)} for the UNet's levels)"
            )
        if not 0 <= self.unet_attention_levels <= len(self.unet_channels):
            raise TrainingError(
                f"unet_attention_levels must lie in [0, {len(self.unet_channels)}], got {self.unet_attention_levels}"
            )
        attended = self.unet_channels[len(self.unet_channels) - self.unet_attention_levels :]
        for width in {*attended, self.unet_channels[-1]}:  # the middle block attends too
            if width % self.attention_head_dim:
                raise TrainingError(
                    f"UNet width {width} at an attention level is not a multiple of attention_head_dim "
                    f"{self.attention_head_dim}"
                )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["output"] = str(self.output)
        out["data"] = None if self.data is None else str(self.data)
        out["ae_channels"] = list(self.ae_channels)
        out["unet_channels"] = list(self.unet_channels)
        return out


# Settings a resumed run must share with its checkpoint (the networks and the data they see).
ARCHITECTURE_FIELDS = (
    "data",
    "synthetic",
    "resolution",
    "channels",
    "autoencoder",
    "ae_channels",
    "ae_layers_per_block",
    "ae_attention",
    "latent_channels",
    "vq_codebook_size",
    "ae_train",
    "unet_channels",
    "unet_layers_per_block",
    "unet_attention_levels",
    "attention_head_dim",
    "base",
)


def learning_rate(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a stage of ``total`` steps: linear
    warm-up from base / warmup to base over the first ``warmup`` steps, then a half cosine from
    base down to base * min_ratio at the last step."""
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class TrainProgress:
    """One progress report. ``step`` counts optimiser steps over both stages (autoencoder
    first), ``total`` their sum; ``stage`` is "autoencoder" or "unet"; ``loss`` the step's
    training loss; ``eta_s`` the estimated seconds left (None until measurable).
    ``event`` is "step" after each optimiser step, or "checkpoint", "samples", "latent-scale",
    "saved", "resumed" with ``message`` saying what happened."""

    step: int
    total: int
    stage: str
    loss: float | None = None
    eta_s: float | None = None
    lr: float | None = None
    event: str = "step"
    message: str = ""
