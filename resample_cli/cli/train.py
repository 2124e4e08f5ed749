"""``resample train-prior``: train or fine-tune a latent diffusion prior (see
``resample_cli.training``). Register with ``app.command("train-prior")(train_prior)``.

The options' defaults are TrainConfig's, written out here because ``resample_cli.training``
imports torch and ``--help`` must not (tests/test_cli_startup.py checks that they agree).
Training imports it when it starts."""

from __future__ import annotations

import shlex
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..io.errors import InputError
from .options import Device, positive

if TYPE_CHECKING:
    from ..training import TrainConfig, TrainResult

DATA = "Data"
AE = "Autoencoder (stage 1)"
UNET = "Denoiser UNet (stage 2)"
SCHEDULE = "Optimisation"
RUN = "Run"
LOG_EVERY_S = 60.0  # without a terminal, a progress line at most this often


class Synthetic(str, Enum):  # resample_cli.training.data.SYNTHETIC_KINDS
    ellipses = "ellipses"
    dead_leaves = "dead-leaves"


class AutoencoderChoice(str, Enum):
    kl = "kl"
    vq = "vq"


class AutoencoderPart(str, Enum):
    all = "all"
    decoder = "decoder"


def _widths(value: str) -> str:
    try:
        widths = [int(w) for w in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 32,64,64, got {value!r}") from None
    if not widths or min(widths) < 1:
        raise typer.BadParameter(f"widths must be positive integers, got {value!r}")
    return value


def _channels(value: int | None) -> int | None:
    if value not in (None, 1, 3):
        raise typer.BadParameter(f"must be 1 (grey) or 3 (RGB), got {value}")
    return value


def train_prior(
    out: Annotated[
        Path,
        typer.Argument(
            help="Output folder: the trained prior in diffusers layout (vae/ or vqvae/, unet/, scheduler/), "
            "model_card.md, losses.csv, checkpoints/ and samples/. Created if missing.",
            show_default=False,
            metavar="OUT",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of training images (PNG, JPEG, TIFF, BMP, .npy in [0, 1]) and/or CT DICOM slices "
            "(.dcm, .dicom; HU clamped to [-1024, 3072] and mapped to [0, 1]), searched recursively. Random square "
            "crops (half to all of the shorter side) are resized to --resolution.",
            rich_help_panel=DATA,
        ),
    ] = None,
    synthetic: Annotated[
        Synthetic | None,
        typer.Option(
            help="Built-in generator instead of --data: 'ellipses' (random ellipse phantoms, grey) or 'dead-leaves' "
            "(occluding disks with radii ∝ r^-3). A fresh batch every step.",
            rich_help_panel=DATA,
        ),
    ] = None,
    resolution: Annotated[
        int,
        typer.Option(
            min=4,
            help="Training image side in pixels; a multiple of the autoencoder factor x 2^(UNet levels - 1).",
            rich_help_panel=DATA,
        ),
    ] = 128,
    channels: Annotated[
        int | None,
        typer.Option(
            callback=_channels,
            help="Image channels, 1 (grey) or 3 (RGB). [default: 1 for ellipses, 3 for "
            "dead-leaves, grey if every --data file is grey else 3, or the --base prior's]",
            rich_help_panel=DATA,
        ),
    ] = None,
    autoencoder: Annotated[
        AutoencoderChoice,
        typer.Option(
            help="Autoencoder: 'kl' (AutoencoderKL, loss L1 + --kl-weight x KL) or 'vq' (VQModel, loss L1 + "
            "codebook/commitment).",
            rich_help_panel=AE,
        ),
    ] = AutoencoderChoice.kl,
    ae_channels: Annotated[
        str,
        typer.Option(
            callback=_widths,
            help="Autoencoder block widths, comma-separated; each block after the first halves the "
            "image, so 3 blocks give downsampling factor 4.",
            rich_help_panel=AE,
        ),
    ] = "32,64,64",
    ae_layers: Annotated[
        int, typer.Option(min=1, help="ResNet layers per autoencoder block.", rich_help_panel=AE)
    ] = 1,
    ae_attention: Annotated[
        bool,
        typer.Option(
            help="Self-attention in the autoencoder's middle block (slow at large latents).",
            rich_help_panel=AE,
        ),
    ] = False,
    latent_channels: Annotated[
        int,
        typer.Option(
            min=1,
            help="Latent channels (the latent is channels x resolution/4 x resolution/4 for factor 4).",
            rich_help_panel=AE,
        ),
    ] = 3,
    kl_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of the KL term (per-element mean) against the L1 loss, --autoencoder kl.",
            rich_help_panel=AE,
        ),
    ] = 1e-6,
    vq_codes: Annotated[
        int, typer.Option(min=2, help="Codebook size, --autoencoder vq.", rich_help_panel=AE)
    ] = 1024,
    ae_steps: Annotated[
        int,
        typer.Option(
            min=0,
            help="Autoencoder optimiser steps (with --base: 0 keeps its autoencoder unchanged).",
            rich_help_panel=AE,
        ),
    ] = 2000,
    ae_train: Annotated[
        AutoencoderPart,
        typer.Option(
            help="What --ae-steps train: the whole autoencoder, or (with --base) only its decoder, which keeps "
            "the latent space and so the base's UNet valid: a sharper decoder without retraining the UNet.",
            rich_help_panel=AE,
        ),
    ] = AutoencoderPart.all,
    unet_channels: Annotated[
        str,
        typer.Option(
            callback=_widths,
            help="UNet level widths, comma-separated; each level after the first halves the latent.",
            rich_help_panel=UNET,
        ),
    ] = "64,128,128",
    unet_layers: Annotated[
        int, typer.Option(min=1, help="ResNet layers per UNet block.", rich_help_panel=UNET)
    ] = 1,
    unet_attention_levels: Annotated[
        int,
        typer.Option(
            min=0,
            help="Self-attention in this many of the lowest-resolution UNet levels (the middle block always "
            "has it).",
            rich_help_panel=UNET,
        ),
    ] = 1,
    attention_head_dim: Annotated[
        int,
        typer.Option(
            min=1,
            help="Channels per attention head; must divide the widths of attention levels.",
            rich_help_panel=UNET,
        ),
    ] = 32,
    unet_steps: Annotated[
        int,
        typer.Option(
            min=0,
            help="UNet optimiser steps (noise prediction on scaled latents, DDPM schedule).",
            rich_help_panel=UNET,
        ),
    ] = 10000,
    ema: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.999999,
            help="Decay of the UNet weights' moving average, which is what gets saved.",
            rich_help_panel=UNET,
        ),
    ] = 0.999,
    latent_pool: Annotated[
        int,
        typer.Option(
            min=0,
            help="Encode this many images once and draw UNet batches from them; 0 encodes every batch "
            "afresh (slower, more varied).",
            rich_help_panel=UNET,
        ),
    ] = 0,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Images per optimiser step (both stages unless --unet-batch-size).",
            rich_help_panel=SCHEDULE,
        ),
    ] = 16,
    unet_batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Latents per UNet step. [default: --batch-size]", rich_help_panel=SCHEDULE),
    ] = None,
    lr: Annotated[
        float,
        typer.Option(
            callback=positive,
            help="Peak learning rate (AdamW): linear warm-up, then cosine decay to 5 % at "
            "the end of each stage.",
            rich_help_panel=SCHEDULE,
        ),
    ] = 5e-4,
    unet_lr: Annotated[
        float | None,
        typer.Option(
            callback=positive,
            help="Peak learning rate of the UNet stage. [default: --lr]",
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    warmup: Annotated[
        int, typer.Option(min=0, help="Warm-up steps at the start of each stage.", rich_help_panel=SCHEDULE)
    ] = 200,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            help="Random seed of weights, data and noise: same seed and settings give the same prior on the "
            "same device.",
            rich_help_panel=SCHEDULE,
        ),
    ] = 0,
    base: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune this prior (registry name, folder or Hub repo id) instead of training new networks; its "
            "architecture, noise schedule and latent scale are kept.",
            rich_help_panel=RUN,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue from the newest checkpoint in OUT/checkpoints (start afresh if there is none). Settings "
            "must match; step counts may be raised.",
            rich_help_panel=RUN,
        ),
    ] = False,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            min=1,
            help="Steps between checkpoints (weights, optimiser, EMA, RNG) and sample grids in OUT/samples; "
            "an interruption loses at most this many steps.",
            rich_help_panel=RUN,
        ),
    ] = 500,
    sample_steps: Annotated[
        int,
        typer.Option(
            min=1, help="DDIM steps for the 4x4 sample grid written at each checkpoint.", rich_help_panel=RUN
        ),
    ] = 50,
    device: Annotated[
        Device, typer.Option(help="Where to train: auto picks cuda, then mps, then cpu.", rich_help_panel=RUN)
    ] = Device.auto,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads for torch. [default: torch's choice]", rich_help_panel=RUN),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress or log lines; errors only.", rich_help_panel=RUN),
    ] = False,
) -> None:
    """Train a latent diffusion prior (autoencoder, then noise-prediction UNet) on a folder of images or
    DICOM slices or on synthetic data, or fine-tune one with --base; saved in the layout --model reads."""
    if (data is None) == (synthetic is None):
        raise typer.BadParameter(
            "give exactly one of --data FOLDER and --synthetic KIND", param_hint="--data"
        )
    import torch

    from ..priors import PriorError
    from ..training import TrainConfig, TrainingError, TrainProgress
    from ..training.checkpoints import CHECKPOINTS, latest_checkpoint
    from .console import Output
    from .restore import resolve_device

    output = Output(quiet=quiet)
    if threads is not None:
        torch.set_num_threads(threads)
    config = TrainConfig(
        output=out,
        data=data,
        synthetic=None if synthetic is None else synthetic.value,
        resolution=resolution,
        channels=channels,
        autoencoder=autoencoder.value,
        ae_channels=tuple(int(w) for w in ae_channels.split(",")),
        ae_layers_per_block=ae_layers,
        ae_attention=ae_attention,
        latent_channels=latent_channels,
        kl_weight=kl_weight,
        vq_codebook_size=vq_codes,
        unet_channels=tuple(int(w) for w in unet_channels.split(",")),
        unet_layers_per_block=unet_layers,
        unet_attention_levels=unet_attention_levels,
        attention_head_dim=attention_head_dim,
        ae_steps=ae_steps,
        ae_train=ae_train.value,
        unet_steps=unet_steps,
        batch_size=batch_size,
        unet_batch_size=unet_batch_size,
        lr=lr,
        unet_lr=unet_lr,
        warmup_steps=warmup,
        ema=ema,
        latent_pool=latent_pool,
        seed=seed,
        checkpoint_every=checkpoint_every,
        sample_steps=sample_steps,
        base=base,
        device=str(resolve_device(device)),
    )
    try:
        config.validate()
    except TrainingError as err:
        raise typer.BadParameter(str(err)) from None

    with output.progress() as bar:
        task = bar.add_task("starting", total=config.total_steps) if bar is not None else None
        last_log = [time.monotonic()]

        def on_progress(p: TrainProgress) -> None:
            if p.event == "saved":
                return  # the summary below says it
            if p.event != "step":
                output.log(p.message)
                return
            if bar is not None:
                bar.update(task, completed=p.step, description=f"{p.stage} loss {p.loss:.4f}")
            elif time.monotonic() - last_log[0] >= LOG_EVERY_S:
                last_log[0] = time.monotonic()
                output.log(f"step {p.step}/{p.total} {p.stage} loss {p.loss:.4f} eta {_eta(p.eta_s)}")

        output.log(
            f"training into {out} on {config.device}: {config.ae_steps} autoencoder + "
            f"{config.unet_steps} UNet steps"
        )
        try:
            result = run_training(config, resume=resume, callback=on_progress, command=command_line(config))
        except KeyboardInterrupt:
            found = latest_checkpoint(out / CHECKPOINTS)
            kept = f"the last checkpoint ({found.name}) is kept" if found else "no checkpoint was written yet"
            output.error(f"interrupted; {kept}: run the same command with --resume to continue")
            raise typer.Exit(130) from None
        except (TrainingError, PriorError, InputError, ValueError) as err:
            output.error(str(err))
            raise typer.Exit(1) from None
    losses = ", ".join(f"{stage} {value:.4g}" for stage, value in result.final_losses.items())
    output.log(
        f"saved the prior in {result.output} ({result.weights_bytes / 1e6:.2f} MB): final losses {losses}; "
        f"autoencoder PSNR {result.ae_psnr:.2f} dB; latent scale {result.latent_scale:.4g}; "
        f"{_eta(result.wall_time_s)}; samples {result.sample_grid}"
    )


def run_training(config: TrainConfig, **kwargs) -> TrainResult:
    """``resample_cli.training.train_prior``, imported when a training starts (it needs torch)."""
    from ..training import train_prior as train

    return train(config, **kwargs)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# Options that shape new networks; a --base run takes its networks from the base instead.
BASE_ARCHITECTURE_FLAGS = (
    "--channels",
    "--autoencoder",
    "--ae-channels",
    "--ae-layers",
    "--latent-channels",
    "--vq-codes",
    "--unet-channels",
    "--unet-layers",
    "--unet-attention-levels",
    "--attention-head-dim",
)


def command_line(config: TrainConfig) -> str:
    """The ``resample train-prior`` command that reproduces ``config``, every option spelled out."""
    c = config
    words = ["resample", "train-prior", str(c.output)]
    words += ["--data", str(c.data)] if c.data is not None else ["--synthetic", str(c.synthetic)]
    options = {
        "--resolution": c.resolution,
        "--channels": c.channels,
        "--autoencoder": c.autoencoder,
        "--ae-channels": ",".join(map(str, c.ae_channels)),
        "--ae-layers": c.ae_layers_per_block,
        "--latent-channels": c.latent_channels,
        "--kl-weight": c.kl_weight,
        "--vq-codes": c.vq_codebook_size,
        "--ae-steps": c.ae_steps,
        "--ae-train": c.ae_train,
        "--unet-channels": ",".join(map(str, c.unet_channels)),
        "--unet-layers": c.unet_layers_per_block,
        "--unet-attention-levels": c.unet_attention_levels,
        "--attention-head-dim": c.attention_head_dim,
        "--unet-steps": c.unet_steps,
        "--ema": c.ema,
        "--latent-pool": c.latent_pool,
        "--batch-size": c.batch_size,
        "--unet-batch-size": c.unet_batch_size,
        "--lr": c.lr,
        "--unet-lr": c.unet_lr,
        "--warmup": c.warmup_steps,
        "--seed": c.seed,
        "--base": c.base,
        "--checkpoint-every": c.checkpoint_every,
        "--sample-steps": c.sample_steps,
        "--device": c.device,
    }
    if c.base is not None:  # the networks are the base's: these settings would be ignored
        for flag in BASE_ARCHITECTURE_FLAGS:
            del options[flag]
    for flag, value in options.items():
        if value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if c.ae_attention and c.base is None:
        words.append("--ae-attention")
    return " ".join(shlex.quote(w) for w in words)
