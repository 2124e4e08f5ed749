"""The settings of a training run, declared once: each field's type and default, and how
``resample train-prior`` offers it (help, panel, flag, range) in ``metadata["option"]``, as
``resample_cli.cli.options.options_of`` reads it.

``training.config.TrainConfig`` adds its checks and derived values to these fields, and
``cli/train.py`` makes the command's options, its call of ``TrainConfig`` and the command
line recorded in the model card from them. Only the standard library here, and outside
``resample_cli.training``, whose ``__init__`` imports torch: ``train-prior --help`` reads
these fields, and must not wait for torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SyntheticKind = Literal["ellipses", "dead-leaves"]  # resample_cli.training.data.SYNTHETIC_KINDS
AutoencoderKind = Literal["kl", "vq"]
AutoencoderPart = Literal["all", "decoder"]  # what autoencoder fine-tuning trains

DATA = "Data"
AE = "Autoencoder (stage 1)"
UNET = "Denoiser UNet (stage 2)"
SCHEDULE = "Optimisation"
RUN = "Run"


def offered(
    default: Any, help: str, panel: str, *, flag: str | None = None, network: bool = False, **settings: Any
) -> Any:
    """A setting that ``resample train-prior`` offers as an option: ``flag`` when it is not
    the field's name, ``settings`` as typer.Option's (``min``, ``max``) and a ``check`` that
    raises ValueError. ``network``: the setting shapes new networks, so that a --base run,
    which takes the base's, does not use it."""
    option = {"help": help, "rich_help_panel": panel, **settings, **({"flags": (flag,)} if flag else {})}
    return dataclasses.field(default=default, metadata={"option": option, "network": network})


def _grey_or_rgb(value: int | None) -> None:
    if value not in (None, 1, 3):
        raise ValueError(f"must be 1 (grey) or 3 (RGB), got {value}")


def _positive(value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"must be > 0, got {value}")


@dataclass(frozen=True)
class TrainSettings:
    """The fields of ``TrainConfig`` (which documents them), in the order of the options."""

    output: Path = dataclasses.field(
        metadata={
            "option": {
                "argument": True,
                "metavar": "OUT",
                "show_default": False,
                "help": "Output folder: the trained prior in diffusers layout (vae/ or vqvae/, unet/, scheduler/), "
                "model_card.md, losses.csv, checkpoints/ and samples/. Created if missing.",
            }
        }
    )
    # data
    data: Path | None = offered(
        None,
        "Folder of training images (PNG, JPEG, TIFF, BMP, .npy in [0, 1]) and/or CT DICOM slices (.dcm, "
        ".dicom; HU clamped to [-1024, 3072] and mapped to [0, 1]), searched recursively. Random square crops "
        "(half to all of the shorter side) are resized to --resolution.",
        DATA,
    )
    synthetic: SyntheticKind | None = offered(
        None,
        "Built-in generator instead of --data: 'ellipses' (random ellipse phantoms, grey) or 'dead-leaves' "
        "(occluding disks with radii ∝ r^-3). A fresh batch every step.",
        DATA,
    )
    resolution: int = offered(
        128,
        "Training image side in pixels; a multiple of the autoencoder factor x 2^(UNet levels - 1).",
        DATA,
        min=4,
    )
    channels: int | None = offered(
        None,
        "Image channels, 1 (grey) or 3 (RGB). [default: 1 for ellipses, 3 for dead-leaves, grey if every "
        "--data file is grey else 3, or the --base prior's]",
        DATA,
        check=_grey_or_rgb,
        network=True,
    )
    # (a) autoencoder
    autoencoder: AutoencoderKind = offered(
        "kl",
        "Autoencoder: 'kl' (AutoencoderKL, loss L1 + --kl-weight x KL) or 'vq' (VQModel, loss L1 + "
        "codebook/commitment).",
        AE,
        network=True,
    )
    ae_channels: tuple[int, ...] = offered(
        (32, 64, 64),
        "Autoencoder block widths, comma-separated; each block after the first halves the image, so 3 blocks "
        "give downsampling factor 4.",
        AE,
        network=True,
    )
    ae_layers_per_block: int = offered(
        1, "ResNet layers per autoencoder block.", AE, flag="--ae-layers", min=1, network=True
    )
    ae_attention: bool = offered(
        False, "Self-attention in the autoencoder's middle block (slow at large latents).", AE, network=True
    )
    latent_channels: int = offered(
        3,
        "Latent channels (the latent is channels x resolution/4 x resolution/4 for factor 4).",
        AE,
        min=1,
        network=True,
    )
    kl_weight: float = offered(
        1e-6, "Weight of the KL term (per-element mean) against the L1 loss, --autoencoder kl.", AE, min=0.0
    )
    vq_codebook_size: int = offered(
        1024, "Codebook size, --autoencoder vq.", AE, flag="--vq-codes", min=2, network=True
    )
    ae_steps: int = offered(
        2000, "Autoencoder optimiser steps (with --base: 0 keeps its autoencoder unchanged).", AE, min=0
    )
    ae_train: AutoencoderPart = offered(
        "all",
        "What --ae-steps train: the whole autoencoder, or (with --base) only its decoder, which keeps the "
        "latent space and so the base's UNet valid: a sharper decoder without retraining the UNet.",
        AE,
    )
    # (b) UNet
    unet_channels: tuple[int, ...] = offered(
        (64, 128, 128),
        "UNet level widths, comma-separated; each level after the first halves the latent.",
        UNET,
        network=True,
    )
    unet_layers_per_block: int = offered(
        1, "ResNet layers per UNet block.", UNET, flag="--unet-layers", min=1, network=True
    )
    unet_attention_levels: int = offered(
        1,
        "Self-attention in this many of the lowest-resolution UNet levels (the middle block always has it).",
        UNET,
        min=0,
        network=True,
    )
    attention_head_dim: int = offered(
        32,
        "Channels per attention head; must divide the widths of attention levels.",
        UNET,
        min=1,
        network=True,
    )
    unet_steps: int = offered(
        10000, "UNet optimiser steps (noise prediction on scaled latents, DDPM schedule).", UNET, min=0
    )
    ema: float = offered(
        0.999,
        "Decay of the UNet weights' moving average, which is what gets saved.",
        UNET,
        min=0.0,
        max=0.999999,
    )
    latent_pool: int = offered(
        0,
        "Encode this many images once and draw UNet batches from them; 0 encodes every batch afresh "
        "(slower, more varied).",
        UNET,
        min=0,
    )
    # schedule
    batch_size: int = offered(
        16, "Images per optimiser step (both stages unless --unet-batch-size).", SCHEDULE, min=1
    )
    unet_batch_size: int | None = offered(
        None, "Latents per UNet step. [default: --batch-size]", SCHEDULE, min=1
    )
    lr: float = offered(
        5e-4,
        "Peak learning rate (AdamW): linear warm-up, then cosine decay to 5 % at the end of each stage.",
        SCHEDULE,
        check=_positive,
    )
    unet_lr: float | None = offered(
        None, "Peak learning rate of the UNet stage. [default: --lr]", SCHEDULE, check=_positive
    )
    warmup_steps: int = offered(
        200, "Warm-up steps at the start of each stage.", SCHEDULE, flag="--warmup", min=0
    )
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = offered(
        0,
        "Random seed of weights, data and noise: same seed and settings give the same prior on the same device.",
        SCHEDULE,
        min=0,
    )
    # outputs
    base: str | None = offered(
        None,
        "Fine-tune this prior (registry name, folder or Hub repo id) instead of training new networks; its "
        "architecture, noise schedule and latent scale are kept.",
        RUN,
    )
    checkpoint_every: int = offered(
        500,
        "Steps between checkpoints (weights, optimiser, EMA, RNG) and sample grids in OUT/samples; an "
        "interruption loses at most this many steps.",
        RUN,
        min=1,
    )
    keep_checkpoints: int = 2
    sample_steps: int = offered(
        50, "DDIM steps for the 4x4 sample grid written at each checkpoint.", RUN, min=1
    )
    sample_grid: int = 4
    device: str = offered("cpu", "Where to train: auto picks cuda, then mps, then cpu.", RUN)
