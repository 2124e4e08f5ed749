"""The torch device the networks run on, for the command line and the library alike."""

from __future__ import annotations

from enum import Enum

import torch


class DeviceUnavailableError(ValueError):
    """A device was asked for that torch cannot use on this machine; ``str()`` is one line."""


def mps_available() -> bool:
    # torch builds without Apple's backend have no ``torch.backends.mps``.
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str) -> torch.device:
    """The device ``name`` stands for. ``"auto"`` picks CUDA, then MPS, then the CPU; any other
    name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or a str ``Enum`` holding one) is that
    device, and a ``DeviceUnavailableError`` when it is CUDA or MPS and torch cannot use it."""
    if isinstance(name, Enum):  # the CLI's ``Device``: its value, not ``str()``'s "Device.cpu"
        name = name.value
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("CUDA is not available on this machine")
    if device.type == "mps" and not mps_available():
        raise DeviceUnavailableError("MPS is not available on this machine")
    return device
