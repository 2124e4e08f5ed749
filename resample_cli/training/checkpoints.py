"""Training checkpoints: ``OUT/checkpoints/step-NNNNNNNN/``, written atomically.

A checkpoint folder holds

- ``autoencoder.safetensors``, ``unet.safetensors``, ``unet_ema.safetensors``: weights;
- ``optimizer.pt``: the optimiser of the stage in progress and the random number generators'
  states (``torch.save``; read back with ``torch.load(weights_only=True)``, so no pickle code
  runs);
- ``state.json``: the step counts, latent scale, timings, loss history, the run's settings
  and the networks' and scheduler's configs (enough to rebuild them without the base prior).

It is written in a hidden temporary folder and renamed into place (``fileio.atomic.replace_folder``),
so a folder named ``step-*`` is always complete: an interrupted save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..fileio.atomic import replace_folder
from .config import TrainingError
from .models import plain_config

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})$")
VERSION = 1


@dataclass
class TrainState:
    """The counters a run carries across checkpoints."""

    ae_step: int = 0
    unet_step: int = 0
    latent_scale: float | None = None
    elapsed_s: float = 0.0  # wall time of all sessions so far, checkpoints and samples included
    stage_s: dict[str, float] = field(default_factory=lambda: {"autoencoder": 0.0, "unet": 0.0})
    history: list[list[Any]] = field(default_factory=list)  # [step, stage, loss] per optimiser step

    @property
    def step(self) -> int:
        return self.ae_step + self.unet_step


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: TrainState
    config: dict[str, Any]
    autoencoder_class: str
    autoencoder_config: dict[str, Any]
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    autoencoder: dict[str, torch.Tensor]
    unet: dict[str, torch.Tensor]
    unet_ema: dict[str, torch.Tensor]
    optimizer_stage: str
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def remove_partial(root: Path) -> None:
    """Remove the hidden folders an interrupted save left behind (``replace_folder``'s new
    ``.*.tmp`` and replaced ``.*.old`` ones)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".") and path.name.endswith((".tmp", ".old")):
                shutil.rmtree(path, ignore_errors=True)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    root: Path,
    *,
    state: TrainState,
    config: dict[str, Any],
    autoencoder: torch.nn.Module,
    unet: torch.nn.Module,
    unet_ema: torch.nn.Module,
    scheduler_config: dict[str, Any],
    optimizer_stage: str,
    optimizer: torch.optim.Optimizer | None,
    rng: dict[str, torch.Tensor],
    keep: int,
) -> Path:
    """Write the checkpoint of ``state.step`` and drop all but the ``keep`` newest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.step)

    def write(folder: Path) -> None:
        save_file(_tensors(autoencoder), folder / "autoencoder.safetensors")
        save_file(_tensors(unet), folder / "unet.safetensors")
        save_file(_tensors(unet_ema), folder / "unet_ema.safetensors")
        torch.save(
            {
                "stage": optimizer_stage,
                "optimizer": optimizer.state_dict() if optimizer is not None else {},
                "rng": {k: v.to("cpu") for k, v in rng.items()},
            },
            folder / "optimizer.pt",
        )
        body = {
            "version": VERSION,
            "step": state.step,
            "ae_step": state.ae_step,
            "unet_step": state.unet_step,
            "latent_scale": state.latent_scale,
            "elapsed_s": state.elapsed_s,
            "stage_s": state.stage_s,
            "config": config,
            "autoencoder_class": type(autoencoder).__name__,
            "autoencoder_config": plain_config(autoencoder),
            "unet_config": plain_config(unet),
            "scheduler_config": scheduler_config,
            "history": state.history,
        }
        (folder / "state.json").write_text(json.dumps(body), encoding="utf-8")

    replace_folder(final, write)  # the same step may be saved again (a resumed run that had finished)
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder; ``TrainingError`` if it is not a whole, readable one."""
    try:
        body = json.loads((path / "state.json").read_text(encoding="utf-8"))
        extra = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        weights = {
            name: load_file(path / f"{name}.safetensors") for name in ("autoencoder", "unet", "unet_ema")
        }
    except Exception as err:  # OSError, JSON, safetensors and unpickling errors alike
        raise TrainingError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if body.get("version") != VERSION:
        raise TrainingError(f"checkpoint {path} has format version {body.get('version')}; expected {VERSION}")
    state = TrainState(
        ae_step=int(body["ae_step"]),
        unet_step=int(body["unet_step"]),
        latent_scale=body["latent_scale"],
        elapsed_s=float(body["elapsed_s"]),
        stage_s={k: float(v) for k, v in body["stage_s"].items()},
        history=body["history"],
    )
    return Checkpoint(
        path=path,
        state=state,
        config=body["config"],
        autoencoder_class=body["autoencoder_class"],
        autoencoder_config=body["autoencoder_config"],
        unet_config=body["unet_config"],
        scheduler_config=body["scheduler_config"],
        autoencoder=weights["autoencoder"],
        unet=weights["unet"],
        unet_ema=weights["unet_ema"],
        optimizer_stage=extra["stage"],
        optimizer=extra["optimizer"],
        rng=extra["rng"],
    )
