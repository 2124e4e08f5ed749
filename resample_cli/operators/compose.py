"""Wrappers that adapt an operator to the image the prior works on: padding the
image to a size the prior accepts, and grey measurements of a colour prior."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LinearOperator, Operator, _per_sample


class Cropped(LinearOperator):
    """A(x[..., top:top+h, left:left+w]): the measurement sees only the region of a
    padded image that holds the real one, so padding stays out of the data term.

    Linear exactly when the inner operator is; for a nonlinear inner operator only
    ``forward`` is used.
    """

    def __init__(self, inner: Operator, box: tuple[int, int, int, int], size: tuple[int, int]):
        super().__init__()
        self.inner = inner
        self.linear = inner.linear
        self.box = tuple(box)  # top, left, height, width of the real image
        self.size = tuple(size)  # height, width of the padded image

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        return x[..., top : top + h, left : left + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.crop(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        g = self.inner.adjoint(y)
        return F.pad(g, (left, self.size[1] - w - left, top, self.size[0] - h - top))

    def solve(self, y, x0, lam, *, tol=1e-6, max_iter=200) -> torch.Tensor:
        # Outside the box only ||x - x0||^2 acts, so x = x0 there; inside, the inner solve.
        x = x0.clone()
        top, left, h, w = self.box
        x[..., top : top + h, left : left + w] = self.inner.solve(
            y, self.crop(x0), lam, tol=tol, max_iter=max_iter
        )
        return x

    @property
    def fast_solve(self) -> bool:
        return getattr(self.inner, "fast_solve", False)

    def params(self) -> dict:
        return self.inner.params()

    def measurement_count(self, y: torch.Tensor) -> int:
        return self.inner.measurement_count(y)


class ChannelMean(LinearOperator):
    """A(mean over channels of x): a grey measurement of a colour image, so that a
    grey input can be restored with an RGB prior."""

    def __init__(self, inner: Operator, channels: int = 3):
        super().__init__()
        self.inner = inner
        self.linear = inner.linear
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.mean(1, keepdim=True))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        g = self.inner.adjoint(y)
        return g.expand(-1, self.channels, -1, -1) / self.channels

    def solve(self, y, x0, lam, *, tol=1e-6, max_iter=200) -> torch.Tensor:
        # Write x = x0 + d. For a given channel mean e of d, ||d||^2 is least (C ||e||^2)
        # with d = e in every channel, so the problem reduces to a grey solve with C lam.
        g0 = x0.mean(1, keepdim=True)
        g = self.inner.solve(y, g0, self.channels * _per_sample(lam, x0), tol=tol, max_iter=max_iter)
        return x0 + (g - g0)

    @property
    def fast_solve(self) -> bool:
        return getattr(self.inner, "fast_solve", False)

    def params(self) -> dict:
        return self.inner.params()

    def measurement_count(self, y: torch.Tensor) -> int:
        return self.inner.measurement_count(y)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Reflect-pad (N, C, H, W) images so H and W are multiples of ``multiple``; return
    the padded images and the box (top, left, H, W) of the originals."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    top, left = ph // 2, pw // 2
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (left, pw - left, top, ph - top), mode=mode), (top, left, h, w)
