"""Nonlinear forward models: a blurring, saturating camera, and user modules loaded by path."""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from ..messages import first_line
from .base import Operator
from .blur import GaussianBlur


class NonlinearBlur(Operator):
    """Gaussian blur followed by a saturating camera response, with no learned weights:

        y = tanh(gain * b) / tanh(gain),    b = GaussianBlur(sigma, kernel_size)(x).

    The response maps [0, 1] onto [0, 1] and is smooth and increasing, with slope
    gain / tanh(gain) at 0 and gain (1 - tanh(gain)^2) / tanh(gain) at 1 (about 2.07 and 0.15
    for the default gain 2), so highlights are compressed; as gain -> 0 it tends to the
    identity and the model to plain Gaussian blur. Blur boundaries are as in ``Blur``.
    """

    linear = False
    task = "nonlinear-blur"

    def __init__(self, sigma: float = 3.0, kernel_size: int = 61, gain: float = 2.0) -> None:
        super().__init__()
        if gain <= 0:
            raise ValueError(f"camera response gain must be positive, got {gain}")
        self.blur = GaussianBlur(sigma, kernel_size)
        self.gain = float(gain)

    def params(self) -> dict:
        return {
            **super().params(),
            "sigma": self.blur.sigma,
            "kernel_size": self.blur.kernel_size,
            "gain": self.gain,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gain * self.blur(x)) / math.tanh(self.gain)


class ModuleOperator(Operator):
    """Any ``nn.Module`` mapping (N, C, H, W) images to measurements, as a nonlinear operator."""

    linear = False

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def params(self) -> dict:
        kind = type(self.module)
        return {**super().params(), "module": f"{kind.__module__}.{kind.__qualname__}"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class OperatorLoadError(ValueError):
    """An operator named as ``"package.module:Class"`` could not be loaded."""


def load_operator(path: str, **kwargs) -> Operator:
    """Import ``"package.module:Class"`` and build it with ``kwargs``.

    An ``nn.Module`` that is not an ``Operator`` is wrapped in ``ModuleOperator``. The result
    is put in eval mode with its parameters frozen, as befits a fixed forward model. Every
    failure raises ``OperatorLoadError`` with a one-line message naming ``path``.
    """
    module_name, colon, attr = path.partition(":")
    if not (colon and module_name and attr):
        raise OperatorLoadError(f"operator {path!r} must be written as 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any failure at import time means the module is unusable
        raise OperatorLoadError(
            f"cannot import module {module_name!r} for operator {path!r}: {first_line(e)}"
        ) from e
    if not hasattr(module, attr):
        raise OperatorLoadError(f"module {module_name!r} has no attribute {attr!r} (operator {path!r})")
    try:
        built = getattr(module, attr)(**kwargs)
    except Exception as e:  # the user's constructor may fail in any way
        raise OperatorLoadError(f"cannot construct operator {path!r} with {kwargs}: {first_line(e)}") from e
    if not isinstance(built, nn.Module):
        raise OperatorLoadError(f"operator {path!r} built a {type(built).__name__}, not a torch.nn.Module")
    operator = built if isinstance(built, Operator) else ModuleOperator(built)
    return operator.eval().requires_grad_(False)
