"""Parallel-beam CT: a pure-PyTorch Radon transform that matches scikit-image, and FBP."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .base import LinearOperator

# Peak working set, in numbers, of one chunk of angles: N * C samples per ray point plus the
# float64 coordinates of the sampling grid (about _GRID_FLOATS float32-sized numbers per point).
_CHUNK_ELEMENTS = 1 << 24
_GRID_FLOATS = 8
# The back-projection matrix is kept while it has at most this many entries (4 per ray
# sample point; about 100 MB of values and indices kept, 170 MB while it is built):
# 128x128 images up to 128 angles, 256x256 up to 32.
_CACHED_ENTRIES = 1 << 23
FBP_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


class ParallelBeamCT(LinearOperator):
    """Parallel-beam Radon transform of square ``image_size`` x ``image_size`` images.

    Geometry, as ``skimage.transform.radon``: unit pixels, rotation centre at pixel
    (n // 2, n // 2) with n = ``image_size``, angles in degrees. At angle theta, detector d
    (offset u = d - det_count // 2 from the centre) sums the image along the ray

        col = n // 2 + u cos(theta) + s sin(theta),   row = n // 2 - u sin(theta) + s cos(theta)

    at unit steps s, sampled bilinearly with zeros outside the image. That is skimage's sum
    over the columns of the image rotated by ``warp(order=1)``; here ``F.grid_sample`` samples
    all rays of a chunk of angles at once.

    ``angles``: a count (equally spaced over [0, 180): k * 180 / count) or a list of degrees.
    ``circle=True`` (default) assumes, like skimage, that the image is zero outside its
    inscribed circle (radius n // 2): rays take n steps and ``det_count`` defaults to n.
    ``circle=False`` lets rays cross the whole image: they take ceil(sqrt(2) n) steps, the
    width skimage pads to, and ``det_count`` defaults to that width, as in skimage.

    ``forward``: (N, C, n, n) -> (N, C, n_angles, det_count), the layout on disk
    (skimage returns the transpose). The adjoint (back-projection) is the exact transpose of
    the bilinear sampling (``_backproject``).
    """

    task = "ct"

    def __init__(
        self,
        angles: int | Sequence[float],
        image_size: int,
        det_count: int | None = None,
        circle: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(angles, (int, np.integer)):
            if angles < 1:
                raise ValueError(f"number of CT angles must be positive, got {angles}")
            angles = np.arange(angles) * 180 / angles
        self.angles_deg = [float(a) for a in angles]
        if not self.angles_deg or not all(math.isfinite(a) for a in self.angles_deg):
            raise ValueError("CT angles must be a non-empty list of finite degrees")
        if image_size < 2:
            raise ValueError(f"CT image size must be at least 2, got {image_size}")
        self.image_size = int(image_size)
        self.circle = bool(circle)
        diagonal_width = image_size + math.ceil(math.sqrt(2) * image_size - image_size)  # skimage's padding
        self.ray_steps = self.image_size if circle else diagonal_width
        self.det_count = int(det_count) if det_count is not None else self.ray_steps
        if self.det_count < 1:
            raise ValueError(f"detector count must be positive, got {det_count}")
        self._transposes: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def params(self) -> dict:
        return {
            **super().params(),
            "angles_deg": list(self.angles_deg),
            "image_size": self.image_size,
            "det_count": self.det_count,
            "circle": self.circle,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, (self.image_size, self.image_size), "image")
        n, c = x.shape[:2]
        parts = [self._project(x, part) for part in self._chunks(self._elements_per_angle(n * c))]
        return torch.cat(parts, dim=2)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, (len(self.angles_deg), self.det_count), "sinogram")
        return _Backprojection.apply(y, self)

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y: each sample point of a ray spreads its ray's value back onto the four pixels
        it was interpolated from, with the same bilinear weights (the transpose of
        ``_bilinear``). Small geometries keep that map as a sparse matrix, one product per
        call (on a CPU at 128x128, 25 angles: 6x faster at batch 1, 30x at batch 8); larger
        ones take the sampler's vector-Jacobian product, switching autograd on so that it
        also works under no_grad and inference_mode."""
        n, c = y.shape[:2]
        side = self.image_size
        matrix = self._transpose(y.device, y.dtype)
        if matrix is not None:
            return (matrix @ y.detach().reshape(n * c, -1).T).T.reshape(n, c, side, side)
        # grid_sample's backward scatters the same weights (faster than indexing them here).
        with torch.inference_mode(False), torch.enable_grad():
            x = y.new_zeros(n, c, side, side, requires_grad=True)
            back = None
            for part in self._chunks(self._elements_per_angle(n * c)):
                (grad,) = torch.autograd.grad(self._project(x, part), x, y[:, :, part].detach())
                back = grad if back is None else back + grad
        return back

    def _transpose(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """A^T as a sparse CSR matrix (pixels x rays), built once per device and dtype, or
        None when it would hold more than ``_CACHED_ENTRIES`` entries."""
        angles = len(self.angles_deg)
        if 4 * angles * self.ray_steps * self.det_count > _CACHED_ENTRIES:
            return None
        if (device, dtype) not in self._transposes:
            pixels, ray, weight = self._footprint(device, dtype)
            shape = (self.image_size**2, angles * self.det_count)
            coo = torch.sparse_coo_tensor(torch.stack([pixels, ray]), weight, shape, check_invariants=False)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": it is used for one product
                warnings.simplefilter("ignore", UserWarning)
                self._transposes[(device, dtype)] = coo.coalesce().to_sparse_csr()
        return self._transposes[(device, dtype)]

    def _footprint(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixel, ray, weight) of every bilinear weight inside the image of every sample
        point: pixel = row * size + column, ray = angle * det_count + detector."""
        col, row = self._coordinates(slice(0, len(self.angles_deg)), device)
        side, det = self.image_size, self.det_count
        ray = torch.arange(col.shape[0] * det, device=device).view(-1, 1, det).expand_as(col)
        c0, r0 = col.floor(), row.floor()
        fc, fr = (col - c0).to(dtype), (row - r0).to(dtype)
        c0, r0 = c0.long(), r0.long()
        corners = ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc))
        pixels, rays, weights = [], [], []
        for dr, dc, weight in corners:
            r, cc = r0 + dr, c0 + dc
            inside = (r >= 0) & (r < side) & (cc >= 0) & (cc < side)
            pixels.append((r * side + cc)[inside])
            rays.append(ray[inside])
            weights.append(weight[inside])
        return torch.cat(pixels), torch.cat(rays), torch.cat(weights)

    def fbp(self, sino: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection, as ``skimage.transform.iradon`` with linear interpolation.

        Each projection (with ``circle``, first zero-padded to the image diagonal,
        ceil(sqrt(2) det_count)) is zero-padded to max(64, the next power of two >= twice
        its length) and filtered in Fourier space by ``filter`` (one of ``FBP_FILTERS``,
        built as skimage builds them); every pixel then adds each filtered projection,
        linearly interpolated at its detector offset t = u cos(theta) - v sin(theta)
        ((u, v) = (column, row) offsets from the centre), times pi / (2 n_angles). With
        ``circle``, pixels outside the inscribed circle are set to 0.
        """
        if filter not in FBP_FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; choose one of {', '.join(FBP_FILTERS)}")
        self._check(sino, (len(self.angles_deg), self.det_count), "sinogram")
        if self.circle:
            width = math.ceil(math.sqrt(2) * self.det_count)
            before = width // 2 - self.det_count // 2
            sino = F.pad(sino, (before, width - self.det_count - before))
        width = sino.shape[-1]
        size = max(64, 1 << (2 * width - 1).bit_length())
        response = _fourier_filter(size, filter).to(sino.device, sino.dtype)
        filtered = torch.fft.ifft(torch.fft.fft(sino, n=size, dim=-1) * response, dim=-1).real[..., :width]

        n, c = sino.shape[:2]
        side = self.image_size
        image = sino.new_zeros(n * c, side, side)
        offsets = _centred(side, sino.device)
        for part in self._chunks((n * c + _GRID_FLOATS) * side * side):
            cos, sin = self._cos_sin(part, sino.device)
            detector = offsets[None, None, :] * cos + (width // 2 - offsets[None, :, None] * sin)
            # Each projection is sampled as a one-pixel-high image.
            rows = filtered[:, :, part].permute(2, 0, 1, 3).reshape(-1, n * c, 1, width)
            image = image + _bilinear(rows, detector, torch.zeros_like(detector)).sum(0)
        if self.circle:
            image = image * (offsets[:, None].square() + offsets[None, :].square() <= (side // 2) ** 2)
        return (image * (math.pi / (2 * len(self.angles_deg)))).reshape(n, c, side, side)

    def _project(self, x: torch.Tensor, part: slice) -> torch.Tensor:
        """Projections of ``x`` at the angles ``part``: (N, C, angles in part, det_count)."""
        n, c, h, w = x.shape
        col, row = self._coordinates(part, x.device)
        samples = _bilinear(
            x.reshape(1, n * c, h, w), col.reshape(1, -1, self.det_count), row.reshape(1, -1, self.det_count)
        )
        return samples.reshape(n, c, -1, self.ray_steps, self.det_count).sum(3)

    def _coordinates(self, part: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel coordinates (column, row), float64, (angles in part, ray_steps, det_count), of
        the points each ray of the angles ``part`` is sampled at."""
        cos, sin = self._cos_sin(part, device)
        s = _centred(self.ray_steps, device)[None, :, None]
        u = _centred(self.det_count, device)[None, None, :]
        centre = self.image_size // 2
        return u * cos + (s * sin + centre), s * cos + (centre - u * sin)

    def _cos_sin(self, part: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles ``part``, in float64, shaped (angles, 1, 1)."""
        theta = torch.deg2rad(torch.tensor(self.angles_deg[part], dtype=torch.float64, device=device))
        return theta.cos()[:, None, None], theta.sin()[:, None, None]

    def _elements_per_angle(self, images: int) -> int:
        return (images + _GRID_FLOATS) * self.ray_steps * self.det_count

    def _chunks(self, elements_per_angle: int) -> Iterator[slice]:
        step = max(1, _CHUNK_ELEMENTS // elements_per_angle)
        for start in range(0, len(self.angles_deg), step):
            yield slice(start, start + step)

    @staticmethod
    def _check(t: torch.Tensor, size: tuple[int, int], what: str) -> None:
        if t.ndim != 4 or tuple(t.shape[-2:]) != size:
            raise ValueError(
                f"expected a CT {what} of shape (N, C, {size[0]}, {size[1]}), got {tuple(t.shape)}"
            )


def _centred(n: int, device: torch.device) -> torch.Tensor:
    """Offsets of n samples from the centre sample n // 2, in float64."""
    return torch.arange(n, dtype=torch.float64, device=device) - n // 2


class _Backprojection(torch.autograd.Function):
    """y -> A^T y, whose own gradient is the projection A: differentiating the adjoint (as
    PSLD's gluing term does) then needs no derivative of the bilinear sampler's backward,
    which CUDA's samplers lack (seen on an H200, 2026-11-30)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, operator: ParallelBeamCT) -> torch.Tensor:
        ctx.operator = operator
        return operator._backproject(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.operator(grad), None


def _bilinear(image: torch.Tensor, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``image`` (B, C, H, W) at pixel coordinates ``col``, ``row`` (B, h, w),
    zero outside the image: the interpolation of skimage's ``warp(order=1)``, and of
    ``np.interp`` inside its range."""
    h, w = image.shape[-2:]
    grid = image.new_empty(*col.shape, 2)
    # grid_sample with align_corners=True puts -1 and 1 on the centres of the first and last pixels.
    grid[..., 0] = col * (2 / max(w - 1, 1)) - 1
    grid[..., 1] = row * (2 / max(h - 1, 1)) - 1
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _fourier_filter(size: int, name: str) -> torch.Tensor:
    """FBP filter over the ``size`` FFT frequencies (float64), as skimage's ``_get_fourier_filter``.

    The ramp is the FFT of the band-limited ramp's spatial kernel (Kak & Slaney, ch. 3,
    eq. 61), which avoids the DC bias of sampling |f| directly; the others window it.
    """
    k = torch.arange(size, dtype=torch.float64)
    distance = torch.minimum(k, size - k)
    kernel = torch.where(k % 2 == 1, -1 / (math.pi * distance).square(), torch.zeros_like(k))
    kernel[0] = 0.25
    ramp = 2 * torch.fft.fft(kernel).real
    if name == "ramp":
        return ramp
    if name == "shepp-logan":
        omega = math.pi * torch.fft.fftfreq(size, dtype=torch.float64)
        return ramp * torch.where(omega == 0, torch.ones_like(omega), omega.sin() / omega)
    if name == "cosine":
        window = (k * (math.pi / size)).sin()
    elif name == "hamming":
        window = torch.hamming_window(size, periodic=False, dtype=torch.float64)
    else:
        window = torch.hann_window(size, periodic=False, dtype=torch.float64)
    return ramp * torch.fft.fftshift(window)
