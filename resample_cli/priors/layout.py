"""The diffusers folder layout a prior is loaded from:

unet/config.json + unet/diffusion_pytorch_model.safetensors (or .bin)
vqvae/ or vae/     the same two files for the autoencoder; none for a pixel-space model,
                   whose model_index.json (a DDPMPipeline's) names no autoencoder
text_encoder/      config.json + model.safetensors (or pytorch_model.bin), and
tokenizer/         vocab.json + merges.txt (or tokenizer.json): only for a text-conditioned
                   UNet (UNet2DConditionModel, the Stable Diffusion layout)
scheduler/scheduler_config.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import PriorError

CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
SAFETENSORS = "diffusion_pytorch_model.safetensors"
BIN = "diffusion_pytorch_model.bin"
MODEL_INDEX = "model_index.json"
# transformers' weight file names (the text encoder's), safetensors first.
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))  # either set
TEXT_UNET = "UNet2DConditionModel"
AUTOENCODER_FOLDERS = ("vqvae", "vae")  # tried in this order when a registry entry names none
EXPECTED = (
    "expected unet/, vqvae/ or vae/ (each with config.json and diffusion_pytorch_model.safetensors "
    "or .bin; a pixel-space model has no autoencoder and a model_index.json naming none), "
    "scheduler/scheduler_config.json, and for a text-conditioned UNet text_encoder/ and tokenizer/"
)


@dataclass(frozen=True)
class ModelLayout:
    """The folders of one model, each checked to hold its config and (for networks) weights.
    ``autoencoder`` is None for a pixel-space model; ``text_encoder`` and ``tokenizer`` are
    set for a text-conditioned one."""

    unet: Path
    autoencoder: Path | None
    scheduler: Path
    text_encoder: Path | None = None
    tokenizer: Path | None = None


def weights_file(folder: Path, names: tuple[str, ...] = (SAFETENSORS, BIN)) -> Path | None:
    """A network folder's weight file, safetensors preferred."""
    for filename in names:
        if (folder / filename).is_file():
            return folder / filename
    return None


def find_layout(
    root: Path, name: str, *, unet: str = "unet", autoencoder: str | None = None, scheduler: str = "scheduler"
) -> ModelLayout:
    """Check ``root`` holds a whole model; a one-line ``PriorError`` naming what is missing if not."""
    _check_network(root, unet, name)
    if autoencoder is None:
        found = [sub for sub in AUTOENCODER_FOLDERS if (root / sub / CONFIG).is_file()]
        if not found and not names_no_autoencoder(root):
            raise _missing(name, root, " or ".join(f"{sub}/{CONFIG}" for sub in AUTOENCODER_FOLDERS))
        autoencoder = found[0] if found else None
    if autoencoder is not None:
        _check_network(root, autoencoder, name)
    if not (root / scheduler / SCHEDULER_CONFIG).is_file():
        raise _missing(name, root, f"{scheduler}/{SCHEDULER_CONFIG}")
    text_encoder = tokenizer = None
    if _unet_class(root / unet / CONFIG) == TEXT_UNET:
        text_encoder, tokenizer = root / "text_encoder", root / "tokenizer"
        if not (text_encoder / CONFIG).is_file():
            raise _missing(name, root, f"text_encoder/{CONFIG} (its UNet is text-conditioned)")
        if weights_file(text_encoder, TEXT_WEIGHTS) is None:
            raise _missing(name, root, f"text_encoder/{TEXT_WEIGHTS[0]} (or {TEXT_WEIGHTS[1]})")
        if not any(all((tokenizer / f).is_file() for f in files) for files in TOKENIZER_FILES):
            raise _missing(name, root, "tokenizer/vocab.json and merges.txt (or tokenizer.json)")
    return ModelLayout(
        root / unet,
        None if autoencoder is None else root / autoencoder,
        root / scheduler,
        text_encoder,
        tokenizer,
    )


def names_no_autoencoder(root: Path) -> bool:
    """Whether the folder's ``model_index.json`` (a diffusers pipeline's list of its parts)
    says the model is pixel-space: it names a UNet and neither a VAE nor a VQ-VAE."""
    try:
        index = json.loads((root / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    # Each part is [library, class]; an absent optional one is [null, null].
    parts = {key for key, value in index.items() if isinstance(value, list) and any(value)}
    return "unet" in parts and not parts.intersection(AUTOENCODER_FOLDERS)


def _check_network(root: Path, sub: str, name: str) -> None:
    if not (root / sub / CONFIG).is_file():
        raise _missing(name, root, f"{sub}/{CONFIG}")
    if weights_file(root / sub) is None:
        raise _missing(name, root, f"{sub}/{SAFETENSORS} (or .bin)")


def _unet_class(config: Path) -> str | None:
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):  # unreadable: the loader names the problem
        return None


def _missing(name: str, root: Path, what: str) -> PriorError:
    return PriorError(f"model {name!r}: {root} has no {what}; {EXPECTED}")
