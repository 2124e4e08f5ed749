"""Antialiased bicubic downsampling, as Pillow's ``Image.resize(..., Image.BICUBIC)``."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .base import LinearOperator


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (support [-2, 2]); a = -0.5 as in Pillow."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * a
    return np.where(t < 1, near, np.where(t < 2, far, 0.0))


@lru_cache(maxsize=32)
def _resample_matrix(n_in: int, scale: int) -> np.ndarray:
    """(n_in // scale, n_in) weights of one axis of Pillow's bicubic reduction by ``scale``.

    Pillow stretches the kernel by the scale factor (support 2 * scale) to antialias, centres
    output pixel o at input coordinate (o + 0.5) * scale, weighs input pixel i by
    kernel((i + 0.5 - centre) / scale), drops taps outside the image and divides by the sum of
    the remaining weights. (Its tap window, [int(centre - support + 0.5), int(centre + support
    + 0.5)) clipped to the image, holds the kernel's whole support, so clipping to the image is
    the only truncation.)
    """
    centres = (np.arange(n_in // scale) + 0.5) * scale
    weights = _keys_cubic((np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / scale)
    return weights / weights.sum(axis=1, keepdims=True)


class BicubicDownsample(LinearOperator):
    """Downsampling by an integer ``scale`` >= 2 with Pillow's antialiased bicubic filter.

    ``y = R_H x R_W^T`` per channel, with the separable weight matrices of
    ``_resample_matrix``; the output is (H / scale, W / scale), and H and W must be
    multiples of ``scale``. Matches ``Image.resize((W // s, H // s), Image.BICUBIC)`` on
    float ('F' mode) images up to float32 rounding.
    """

    task = "superres"

    def __init__(self, scale: int) -> None:
        super().__init__()
        if int(scale) != scale or scale < 2:
            raise ValueError(f"super-resolution scale must be an integer >= 2, got {scale}")
        self.scale = int(scale)

    def params(self) -> dict:
        return {**super().params(), "scale": self.scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self._matrices(x)
        return rows @ x @ cols.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        rows, cols = self._matrices(y, (h * self.scale, w * self.scale))
        return rows.T @ y @ cols

    def _matrices(self, like: torch.Tensor, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """Row and column weight matrices for an image of ``size`` (default: ``like``'s)."""
        h, w = size or like.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the super-resolution scale {self.scale}"
            )
        return tuple(torch.as_tensor(_resample_matrix(n, self.scale)).to(like) for n in (h, w))
