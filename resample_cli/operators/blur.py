"""Blur by a 2-D kernel with reflect boundaries, computed by FFT."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import LinearOperator, _per_sample, conjugate_gradient


def _period(n: int) -> int:
    """Period of the mirror extension of an axis of length n."""
    return max(2 * n - 2, 1)


def _circular(z: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """Circular convolution over the last two axes, given the kernel's rfft2."""
    return torch.fft.irfft2(torch.fft.rfft2(z) * spectrum, s=z.shape[-2:])


def _mirror_index(n: int, device: torch.device) -> torch.Tensor:
    """Source pixel of each position of one period (2n - 2) of the mirror extension of an axis."""
    period = _period(n)
    i = torch.arange(period, device=device)
    return torch.where(i < n, i, period - i)


class Blur(LinearOperator):
    """Same-size blur y = k * x of each channel, with reflect padding.

    The padding is torch's ``reflect`` (the edge pixel is not repeated: ``c b | a b c | b a``),
    which scipy.ndimage calls ``mode="mirror"`` (scipy's own ``"reflect"`` repeats the edge).
    The result equals ``scipy.ndimage.convolve(x, kernel, mode="mirror")`` per channel: a true
    convolution (not a correlation) whose kernel origin is element ``(kh // 2, kw // 2)``.

    The kernel is used as given, never renormalised: a kernel summing to s scales flat regions
    by s. Kernels larger than the image are allowed: the padding keeps mirroring (the image's
    mirror extension is periodic with period 2n - 2), exactly as scipy's ``"mirror"`` mode does.

    Computation: the reflect-padded image is a window of that periodic extension, so the
    linear convolution of the padded image, cropped to the image, equals a circular
    convolution over one period, cropped. It is computed exactly by FFT over one period
    (2H - 2, 2W - 2), whatever the kernel size (one exact path for all sizes keeps forward,
    adjoint and the solve's preconditioner consistent). The adjoint is the exact transpose of
    extend -> convolve -> crop: zero-fill, correlate, then fold the extension back onto the
    pixels it copied.
    """

    def __init__(self, kernel: torch.Tensor | np.ndarray) -> None:
        super().__init__()
        k = kernel.detach() if isinstance(kernel, torch.Tensor) else torch.as_tensor(np.array(kernel))
        if k.ndim != 2 or k.numel() == 0:
            raise ValueError(f"blur kernel must be a non-empty 2-D array, got shape {tuple(k.shape)}")
        if not bool(torch.isfinite(k).all()) or not bool(k.any()):
            raise ValueError("blur kernel must be finite and not all zeros")
        self.register_buffer("kernel", k.to(torch.float64))

    def params(self) -> dict:
        return {
            **super().params(),
            "kernel_shape": list(self.kernel.shape),
            "kernel_sum": float(self.kernel.sum()),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return _circular(self._extend(x), self._spectrum(x))[..., :h, :w]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        ph, pw = _period(h), _period(w)
        zero_filled = torch.nn.functional.pad(y, (0, pw - w, 0, ph - h))
        return self._fold(_circular(zero_filled, self._spectrum(y).conj()), h, w)

    def solve(
        self,
        y: torch.Tensor,
        x0: torch.Tensor,
        lam: float | torch.Tensor,
        *,
        tol: float = 1e-6,
        max_iter: int = 200,
    ) -> torch.Tensor:
        """argmin_x ||y - A x||^2 + lam ||x - x0||^2 by (preconditioned) conjugate gradients.

        CG runs on the exact operator, so the result is exact at the borders too, up to the CG
        tolerance. When the kernel is symmetric in each axis (Gaussian blur, for one) CG is
        preconditioned by the FFT (circulant) inverse of (A^T A + lam I) on the mirror-periodic
        extension, P = S+ (|K|^2 + lam)^-1 S+^T with S+ the average over mirrored copies. It
        differs from the exact inverse only along the image's edge rows and columns, by a
        bounded factor, so CG converges in a handful of iterations whatever lam is. For other
        kernels the circulant approximation is poor at the borders and plain CG is used.
        """
        lam = _per_sample(lam, x0)
        rhs = self.adjoint(y) + lam * x0
        precond = self._preconditioner(x0, lam) if self._mirror_symmetric(x0) else None
        return conjugate_gradient(
            lambda v: self.normal(v) + lam * v, rhs, x0, tol=tol, max_iter=max_iter, precond=precond
        )

    def _preconditioner(
        self, like: torch.Tensor, lam: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        h, w = like.shape[-2:]
        power = self._spectrum(like).abs().square()
        # The floor keeps the preconditioner bounded when lam = 0 and the kernel has spectral zeros.
        inverse = 1 / (power + lam).clamp_min(torch.finfo(power.dtype).eps * float(power.max()))
        copies = self._fold(torch.ones_like(self._extend(like[:1, :1])), h, w)

        def apply(r: torch.Tensor) -> torch.Tensor:
            return self._fold(_circular(self._extend(r / copies), inverse), h, w) / copies

        return apply

    def _mirror_symmetric(self, like: torch.Tensor) -> bool:
        """Whether convolution maps mirror-symmetric extensions to mirror-symmetric ones."""
        grid = self._wrapped_kernel(*like.shape[-2:])
        rows, cols = grid.shape
        flip_rows = (-torch.arange(rows, device=grid.device)) % rows
        flip_cols = (-torch.arange(cols, device=grid.device)) % cols
        flipped = grid[flip_rows][:, flip_cols]
        return bool(torch.allclose(grid, flipped, rtol=0, atol=1e-12 * float(grid.abs().max())))

    def _wrapped_kernel(self, h: int, w: int) -> torch.Tensor:
        """The kernel wrapped, origin first, onto one period of the mirror extension of an h x w image."""
        kh, kw = self.kernel.shape
        rows = ((torch.arange(kh) - kh // 2) % _period(h)).to(self.kernel.device)
        cols = ((torch.arange(kw) - kw // 2) % _period(w)).to(self.kernel.device)
        grid = self.kernel.new_zeros(_period(h), _period(w))
        return grid.index_put_(
            (rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), self.kernel, accumulate=True
        )

    def _spectrum(self, like: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(self._wrapped_kernel(*like.shape[-2:]).to(like))

    @staticmethod
    def _extend(x: torch.Tensor) -> torch.Tensor:
        """One period of the mirror extension of ``x`` (its first H x W block is ``x``)."""
        h, w = x.shape[-2:]
        return x.index_select(-2, _mirror_index(h, x.device)).index_select(-1, _mirror_index(w, x.device))

    @staticmethod
    def _fold(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Transpose of ``_extend``: add every copy back onto the pixel it came from."""
        cols = z.new_zeros(*z.shape[:-1], w).index_add(-1, _mirror_index(w, z.device), z)
        return cols.new_zeros(*z.shape[:-2], h, w).index_add(-2, _mirror_index(h, z.device), cols)


class GaussianBlur(Blur):
    """``Blur`` with the Gaussian kernel exp(-(i^2 + j^2) / (2 sigma^2)) sampled on a
    ``kernel_size`` x ``kernel_size`` grid centred on the middle element and normalised to sum 1."""

    def __init__(self, sigma: float, kernel_size: int = 61) -> None:
        if sigma <= 0:
            raise ValueError(f"Gaussian blur sigma must be positive, got {sigma}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Gaussian kernel size must be a positive odd integer, got {kernel_size}")
        offsets = np.arange(kernel_size) - kernel_size // 2
        profile = np.exp(-(offsets**2) / (2 * sigma**2))
        kernel = np.outer(profile, profile)
        super().__init__(kernel / kernel.sum())
        self.sigma = float(sigma)
        self.kernel_size = int(kernel_size)

    def params(self) -> dict:
        return {**super().params(), "sigma": self.sigma, "kernel_size": self.kernel_size}
