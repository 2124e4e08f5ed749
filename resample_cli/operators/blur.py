"""Blur by a 2-D kernel with reflect boundaries, computed by FFT."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import LinearOperator


def _period(n: int) -> int:
    """Period of the mirror extension of an axis of length n."""
    return max(2 * n - 2, 1)


def _fast_length(n: int) -> int:
    """The smallest length >= n whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _circular(z: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """Circular convolution over the last two axes, given the kernel's rfft2."""
    return torch.fft.irfft2(torch.fft.rfft2(z) * spectrum, s=z.shape[-2:])


def _mirror_index(n: int, device: torch.device, length: int | None = None, start: int = 0) -> torch.Tensor:
    """Source pixel of positions ``start .. start + length - 1`` (default: one period,
    2n - 2, from 0) of the mirror extension of an axis of length n."""
    period = _period(n)
    i = (torch.arange(period if length is None else length, device=device) + start) % period
    return torch.where(i < n, i, period - i)


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return x.index_select(-2, rows).index_select(-1, cols)


def _scatter(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Transpose of ``_gather``: add every copy back onto the pixel it came from."""
    summed = z.new_zeros(*z.shape[:-1], w).index_add(-1, cols, z)
    return summed.new_zeros(*z.shape[:-2], h, w).index_add(-2, rows, summed)


class Blur(LinearOperator):
    """Same-size blur y = k * x of each channel, with reflect padding.

    The padding is torch's ``reflect`` (the edge pixel is not repeated: ``c b | a b c | b a``),
    which scipy.ndimage calls ``mode="mirror"`` (scipy's own ``"reflect"`` repeats the edge).
    The result equals ``scipy.ndimage.convolve(x, kernel, mode="mirror")`` per channel: a true
    convolution (not a correlation) whose kernel origin is element ``(kh // 2, kw // 2)``.

    The kernel is used as given, never renormalised: a kernel summing to s scales flat regions
    by s. Kernels larger than the image are allowed: the padding keeps mirroring (the image's
    mirror extension is periodic with period 2n - 2), exactly as scipy's ``"mirror"`` mode does.

    Computation: the blurred image needs the (H + kh - 1) x (W + kw - 1) window of the mirror
    extension around it (gathered by index, so kernels larger than the image work too); its
    linear convolution with the kernel is computed exactly by FFT, zero-padded to the next
    size with prime factors 2, 3 and 5 only (mirror-periodic FFTs of 2H - 2 are often slow
    sizes such as 510), and cropped. The adjoint is the exact transpose: place, correlate,
    then add the window back onto the pixels it copied. Kernel spectra are cached per size.
    """

    fast_solve = True
    task = "blur"

    def __init__(self, kernel: torch.Tensor | np.ndarray) -> None:
        super().__init__()
        k = kernel.detach() if isinstance(kernel, torch.Tensor) else torch.as_tensor(np.array(kernel))
        if k.ndim != 2 or k.numel() == 0:
            raise ValueError(f"blur kernel must be a non-empty 2-D array, got shape {tuple(k.shape)}")
        if not bool(torch.isfinite(k).all()) or not bool(k.any()):
            raise ValueError("blur kernel must be finite and not all zeros")
        self.register_buffer("kernel", k.to(torch.float64))
        self._spectra: dict[tuple, torch.Tensor] = {}

    def params(self) -> dict:
        return {
            **super().params(),
            "kernel_shape": list(self.kernel.shape),
            "kernel_sum": float(self.kernel.sum()),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        kh, kw = self.kernel.shape
        rows, cols = self._window(h, w, x.device)
        fh, fw = _fast_length(h + kh - 1), _fast_length(w + kw - 1)
        window = torch.nn.functional.pad(_gather(x, rows, cols), (0, fw - len(cols), 0, fh - len(rows)))
        return _circular(window, self._cached_spectrum("linear", x))[
            ..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w
        ]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        kh, kw = self.kernel.shape
        rows, cols = self._window(h, w, y.device)
        fh, fw = _fast_length(h + kh - 1), _fast_length(w + kw - 1)
        placed = torch.nn.functional.pad(y, (kw - 1, fw - (kw - 1) - w, kh - 1, fh - (kh - 1) - h))
        correlated = _circular(placed, self._cached_spectrum("linear", y).conj())
        return _scatter(correlated[..., : len(rows), : len(cols)], rows, cols, h, w)

    def _preconditioner(
        self, like: torch.Tensor, lam: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For ``solve``'s conjugate gradients, which run on the exact operator (so the result
        is exact at the borders too, up to the CG tolerance). When the kernel is symmetric in
        each axis (Gaussian blur, for one) CG is preconditioned by the FFT (circulant) inverse
        of (A^T A + lam I) on the mirror-periodic extension, P = S+ (|K|^2 + lam)^-1 S+^T with
        S+ the average over mirrored copies. It differs from the exact inverse only along the
        image's edge rows and columns, by a bounded factor, so CG converges in a handful of
        iterations whatever lam is. For other kernels the circulant approximation is poor at
        the borders and plain CG (None) is used.
        """
        if not self._mirror_symmetric(like):
            return None
        h, w = like.shape[-2:]
        power = self._cached_spectrum("period", like).abs().square()
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

    def _window(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Source pixels of the mirror-extended window (h + kh - 1) x (w + kw - 1) that the
        blurred image needs, from kh - 1 - kh // 2 rows (columns alike) before the image."""
        kh, kw = self.kernel.shape
        rows = _mirror_index(h, device, h + kh - 1, -(kh - 1 - kh // 2))
        cols = _mirror_index(w, device, w + kw - 1, -(kw - 1 - kw // 2))
        return rows, cols

    def _cached_spectrum(self, kind: str, like: torch.Tensor) -> torch.Tensor:
        """The kernel's rfft2, computed once per image size, dtype and device: zero-padded
        to the fast FFT size of the linear convolution (``linear``) or wrapped onto one
        period of the mirror extension (``period``, for the preconditioner)."""
        h, w = like.shape[-2:]
        key = (kind, h, w, like.dtype, like.device)
        if key not in self._spectra:
            kh, kw = self.kernel.shape
            if kind == "linear":
                size = (_fast_length(h + kh - 1), _fast_length(w + kw - 1))
                spectrum = torch.fft.rfft2(self.kernel.to(like), s=size)
            else:
                spectrum = torch.fft.rfft2(self._wrapped_kernel(h, w).to(like))
            self._spectra[key] = spectrum
        return self._spectra[key]

    @staticmethod
    def _extend(x: torch.Tensor) -> torch.Tensor:
        """One period of the mirror extension of ``x`` (its first H x W block is ``x``)."""
        h, w = x.shape[-2:]
        return _gather(x, _mirror_index(h, x.device), _mirror_index(w, x.device))

    @staticmethod
    def _fold(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Transpose of ``_extend``."""
        return _scatter(z, _mirror_index(h, z.device), _mirror_index(w, z.device), h, w)


class GaussianBlur(Blur):
    """``Blur`` with the Gaussian kernel exp(-(i^2 + j^2) / (2 sigma^2)) sampled on a
    ``kernel_size`` x ``kernel_size`` grid centred on the middle element and normalised to sum 1."""

    task = "gaussian-blur"

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
