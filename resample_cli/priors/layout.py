"""The diffusers folder layout a prior is loaded from:

unet/config.json + unet/diffusion_pytorch_model.safetensors (or .bin)
vqvae/ or vae/     the same two files for the autoencoder
scheduler/scheduler_config.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import PriorError

CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
SAFETENSORS = "diffusion_pytorch_model.safetensors"
BIN = "diffusion_pytorch_model.bin"
AUTOENCODER_FOLDERS = ("vqvae", "vae")  # tried in this order when a registry entry names none
EXPECTED = (
    "expected unet/, vqvae/ or vae/ (each with config.json and diffusion_pytorch_model.safetensors "
    "or .bin) and scheduler/scheduler_config.json"
)


@dataclass(frozen=True)
class ModelLayout:
    """The folders of one model, each checked to hold its config and (for networks) weights."""

    unet: Path
    autoencoder: Path
    scheduler: Path


def weights_file(folder: Path) -> Path | None:
    """A network folder's weight file, safetensors preferred."""
    for filename in (SAFETENSORS, BIN):
        if (folder / filename).is_file():
            return folder / filename
    return None


def find_layout(
    root: Path, name: str, *, unet: str = "unet", autoencoder: str | None = None, scheduler: str = "scheduler"
) -> ModelLayout:
    """Check ``root`` holds a whole model; a one-line ``PriorError`` naming what is missing if not."""
    if autoencoder is None:
        found = [sub for sub in AUTOENCODER_FOLDERS if (root / sub / CONFIG).is_file()]
        if not found:
            raise _missing(name, root, " or ".join(f"{sub}/{CONFIG}" for sub in AUTOENCODER_FOLDERS))
        autoencoder = found[0]
    for sub in (unet, autoencoder):
        if not (root / sub / CONFIG).is_file():
            raise _missing(name, root, f"{sub}/{CONFIG}")
        if weights_file(root / sub) is None:
            raise _missing(name, root, f"{sub}/{SAFETENSORS} (or .bin)")
    if not (root / scheduler / SCHEDULER_CONFIG).is_file():
        raise _missing(name, root, f"{scheduler}/{SCHEDULER_CONFIG}")
    return ModelLayout(root / unet, root / autoencoder, root / scheduler)


def _missing(name: str, root: Path, what: str) -> PriorError:
    return PriorError(f"model {name!r}: {root} has no {what}; {EXPECTED}")
