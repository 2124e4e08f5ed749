"""Wrappers that adapt an operator to the image the prior works on: padding the image to a
size the prior accepts (``Cropped``), and grey measurements of a colour prior (``ChannelMean``).

A wrapper measures A(P x): a fixed linear map P of the image (``Crop``, ``MeanOverChannels``)
followed by the wrapped operator A. ``wrap`` builds it as a ``LinearOperator``, with adjoint
and solve, when A is one, and as a plain ``Operator`` otherwise, so that
``isinstance(op, LinearOperator)`` and ``op.linear`` agree for every wrapper.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import LinearOperator, Operator


class ImageMap(ABC):
    """A fixed linear map P of (N, C, H, W) images, applied before a wrapped operator A."""

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """P x."""

    @abstractmethod
    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """P^T g."""

    @abstractmethod
    def solve(
        self, inner: LinearOperator, y: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor, **options: Any
    ) -> torch.Tensor:
        """argmin_x ||y - A P x||^2 + lam ||x - x0||^2 through A's (``inner``'s) own solve,
        which takes ``options`` (``tol``, ``max_iter``). ``lam`` broadcasts over each batch
        element of ``x0``."""


@dataclass(frozen=True)
class Crop(ImageMap):
    """The region ``box`` (top, left, height, width) of a padded image of ``size`` (height,
    width): the measurement sees only the real image, so padding stays out of the data term."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        return x[..., top : top + h, left : left + w]

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        return F.pad(g, (left, self.size[1] - w - left, top, self.size[0] - h - top))

    def solve(
        self, inner: LinearOperator, y: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor, **options: Any
    ) -> torch.Tensor:
        # Outside the box only ||x - x0||^2 acts, so x = x0 there; inside, the inner solve.
        x = x0.clone()
        top, left, h, w = self.box
        x[..., top : top + h, left : left + w] = inner.solve(y, self(x0), lam, **options)
        return x


@dataclass(frozen=True)
class MeanOverChannels(ImageMap):
    """The mean over the ``channels`` channels: a grey measurement of a colour image, so that
    a grey input can be restored with a colour prior."""

    channels: int = 3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True)

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        return g.expand(-1, self.channels, -1, -1) / self.channels

    def solve(
        self, inner: LinearOperator, y: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor, **options: Any
    ) -> torch.Tensor:
        # Write x = x0 + d. For a given channel mean e of d, ||d||^2 is least (C ||e||^2)
        # with d = e in every channel, so the problem reduces to a grey solve with C lam.
        g0 = self(x0)
        g = inner.solve(y, g0, self.channels * lam, **options)
        return x0 + (g - g0)


class Wrapped(Operator):
    """A(P x) for a nonlinear A (``inner``): only ``forward`` exists. Reports and measurement
    counts are those of ``inner``."""

    def __init__(self, inner: Operator, image_map: ImageMap):
        super().__init__()
        self.inner = inner
        self.image_map = image_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.image_map(x))

    def params(self) -> dict:
        return self.inner.params()

    @property
    def task(self) -> str:
        return self.inner.task

    @property
    def batch_parameters(self) -> bool:
        return self.inner.batch_parameters

    def measurement_count(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.measurement_count(y)

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.observed(y)

    def extra_repr(self) -> str:
        return repr(self.image_map)


class LinearWrapped(Wrapped, LinearOperator):
    """A(P x) for a linear A (``inner``): adjoint P^T A^T, and a solve through A's own."""

    inner: LinearOperator

    @property
    def fast_solve(self) -> bool:
        return self.inner.fast_solve

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.image_map.adjoint(self.inner.adjoint(y))

    def _solve(
        self, y: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor, *, tol: float, max_iter: int
    ) -> torch.Tensor:
        return self.image_map.solve(self.inner, y, x0, lam, tol=tol, max_iter=max_iter)


def wrap(inner: Operator, image_map: ImageMap) -> Wrapped:
    """``inner`` measuring ``image_map`` of the image: a ``LinearOperator`` exactly when
    ``inner`` is one."""
    if isinstance(inner, LinearOperator):
        return LinearWrapped(inner, image_map)
    return Wrapped(inner, image_map)


def Cropped(inner: Operator, box: tuple[int, int, int, int], size: tuple[int, int]) -> Wrapped:
    """``inner`` measuring only the region ``box`` (top, left, height, width) of an image of
    ``size`` (height, width), padded around the real one (see ``padded_canvas``)."""
    return wrap(inner, Crop(tuple(box), tuple(size)))


def ChannelMean(inner: Operator, channels: int = 3) -> Wrapped:
    """``inner`` measuring the mean over the ``channels`` channels of the image."""
    return wrap(inner, MeanOverChannels(channels))


def padded_canvas(
    height: int, width: int, multiple: int
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The ``size`` and ``box`` that ``Cropped`` takes for an image of ``height`` x ``width``
    padded to multiples of ``multiple``: the smallest such (H, W), and the box (top, left,
    height, width) that centres the image in it (an odd extra row or column goes last)."""
    pad_h, pad_w = -height % multiple, -width % multiple
    return (height + pad_h, width + pad_w), (pad_h // 2, pad_w // 2, height, width)
