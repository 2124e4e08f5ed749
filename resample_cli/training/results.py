"""What a finished training run hands back (``TrainResult``), apart from the trainer so that
the model card and the command can name it without importing the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. Losses are means over the last steps of each stage."""

    output: Path
    steps: int
    ae_steps: int
    unet_steps: int
    latent_scale: float
    final_losses: dict[str, float]
    ae_psnr: float  # autoencoder reconstruction PSNR (dB) of held-out images, [0, 1] units
    wall_time_s: float
    sample_grid: Path
    model_card: Path
    weights_bytes: int  # the saved safetensors files together
