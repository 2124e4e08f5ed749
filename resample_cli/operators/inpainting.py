"""Inpainting: observe the pixels a mask keeps; mask makers for simulations."""

from __future__ import annotations

import numpy as np
import torch

from .base import LinearOperator


class Inpainting(LinearOperator):
    """y = mask * x, full size, zero where a pixel is missing (mask 1 = observed, 0 = missing).

    ``mask`` is (H, W), (1, 1, H, W), (N, 1, H, W) or (N, C, H, W) and broadcasts over the
    batch and channels. A measurement should be zero where the mask is (``op(y)`` makes
    it so): only the observed entries count as data (``measurement_count``).
    """

    fast_solve = True
    task = "inpainting"

    def __init__(self, mask: torch.Tensor | np.ndarray) -> None:
        super().__init__()
        m = mask.detach() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.array(mask))
        if m.ndim == 2:
            m = m[None, None]
        if m.ndim != 4:
            raise ValueError(f"mask must be (H, W) or (N, C, H, W), got shape {tuple(m.shape)}")
        self.register_buffer("mask", m.to(torch.float64))

    @property
    def batch_parameters(self) -> bool:
        return self.mask.shape[0] > 1

    def params(self) -> dict:
        return {
            **super().params(),
            "mask_shape": list(self.mask.shape),
            "observed_fraction": float(self.mask.mean()),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mask(x) * x

    def measurement_count(self, y: torch.Tensor) -> torch.Tensor:
        """Only observed pixels are measurements, counted per image (a mask may be one per
        image); missing ones are zero in ``forward``."""
        return self._mask(y).to(torch.float64).expand_as(y).flatten(1).sum(1)

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        return self._mask(y) * y

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._mask(y) * y

    def _solve(
        self, y: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor, *, tol: float, max_iter: int
    ) -> torch.Tensor:
        """Closed form, pixel by pixel: (m y + lam x0) / (m^2 + lam) (m^2 = m for a binary mask).

        Written as x0 + m (y - m x0) / (m^2 + lam) so that a missing pixel keeps x0 even when
        lam = 0. ``tol`` and ``max_iter`` are unused: the solution is exact.
        """
        m = self._mask(x0)
        return x0 + m * (y - m * x0) / (m.square() + lam).clamp_min(torch.finfo(x0.dtype).tiny)

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[-2:] != self.mask.shape[-2:]:
            raise ValueError(
                f"image is {like.shape[-2]}x{like.shape[-1]} but the inpainting mask is "
                f"{self.mask.shape[-2]}x{self.mask.shape[-1]}"
            )
        return self.mask.to(like)


def random_mask(
    shape: tuple[int, ...], missing_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(1, 1, H, W) float mask with exactly round(missing_ratio * H * W) pixels missing (0),
    the same for all channels, chosen uniformly with ``generator`` (on its device).

    ``shape`` is (H, W) or any shape ending in (H, W).
    """
    if not 0 <= missing_ratio <= 1:
        raise ValueError(f"missing ratio must be in [0, 1], got {missing_ratio}")
    h, w = shape[-2:]
    device = generator.device if generator is not None else None
    missing = torch.randperm(h * w, generator=generator, device=device)[: round(missing_ratio * h * w)]
    mask = torch.ones(h * w, device=device)
    mask[missing] = 0
    return mask.reshape(1, 1, h, w)


def box_mask(shape: tuple[int, ...], size: int, center: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, 1, H, W) float mask with a ``size`` x ``size`` missing box (0), clipped to the image.

    The box covers rows [cy - size // 2, cy - size // 2 + size) and likewise for columns, with
    ``center`` = (cy, cx) defaulting to (H // 2, W // 2), which centres it.
    """
    if size < 1:
        raise ValueError(f"box size must be positive, got {size}")
    h, w = shape[-2:]
    cy, cx = center if center is not None else (h // 2, w // 2)
    top, left = cy - size // 2, cx - size // 2
    mask = torch.ones(1, 1, h, w)
    mask[..., max(top, 0) : max(top + size, 0), max(left, 0) : max(left + size, 0)] = 0
    return mask
