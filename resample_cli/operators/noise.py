"""Additive measurement noise."""

from __future__ import annotations

import torch
from torch import nn


class GaussianNoise(nn.Module):
    """Additive white Gaussian noise of standard deviation ``sigma`` (in [0, 1] image units)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"noise sigma must be non-negative, got {sigma}")
        self.sigma = float(sigma)

    def params(self) -> dict:
        return {"name": type(self).__name__, "sigma": self.sigma}

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.noise(y, generator)

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y + sigma * N(0, 1), drawn on the generator's device so a seed gives the same noise
        wherever ``y`` lives."""
        device = generator.device if generator is not None else y.device
        draw = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype)
        return y + self.sigma * draw.to(y.device)
