"""Training images: two synthetic generators and a folder of images or DICOM slices.

Every source returns float32 tensors (N, C, H, W) in [0, 1] (the image domain of docs/design.md)
drawn from a ``torch.Generator``, so a seed fixes the data stream.

- ``ellipse_phantoms``: random ellipse phantoms, the standard synthetic training set of
  learned CT reconstruction: a "body" ellipse plus a few smaller ones with random centres,
  semi-axes, rotations and additive intensities, all inside the inscribed circle, clipped
  to [0, 1].
- ``dead_leaves``: the dead-leaves model: opaque disks of random colour fall one over
  another; radii follow the scale-invariant power law p(r) ∝ r^-3 on [r_min, r_max].
- ``FolderSource``: images (via ``read_image``) and CT DICOM slices (HU through the HU
  window of ``resample_cli.fileio.ct``), random square crops resized to the training resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio.ct import hu_to_unit, read_dicom_hu
from ..fileio.errors import InputError
from ..fileio.images import IMAGE_SUFFIXES, read_image

SyntheticKind = Literal["ellipses", "dead-leaves"]
SYNTHETIC_KINDS: tuple[str, ...] = ("ellipses", "dead-leaves")
DICOM_SUFFIXES = {".dcm", ".dicom"}
FOLDER_SUFFIXES = IMAGE_SUFFIXES | {".npy"} | DICOM_SUFFIXES
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for RGB -> grey


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=generator)


# --- ellipse phantoms -----------------------------------------------------------------------


def ellipse_phantoms(
    n: int,
    size: int,
    generator: torch.Generator,
    *,
    min_ellipses: int = 3,
    max_ellipses: int = 10,
    body: bool = True,
    rim: float = 0.5,
) -> torch.Tensor:
    """``n`` random ellipse phantoms, (n, 1, size, size) float32 in [0, 1].

    Coordinates run over [-1, 1]^2 (pixel centres); every ellipse lies inside the disk of
    radius max(a, b) around its centre, and that disk inside the unit (inscribed) circle, so
    every pixel outside the circle is exactly 0. Each phantom has between ``min_ellipses``
    and ``max_ellipses`` ellipses (uniform count). With ``body`` the first is a large
    "body" (semi-axes 0.5-0.9, intensity 0.1-1.0, centred within 0.1 of the middle), as in
    a CT slice or the Shepp-Logan phantom; the others have semi-axes 0.03-0.5, centres
    uniform over the disk that keeps them inside the circle, and additive intensities in
    [-0.5, 0.5] (with ``body`` False: [0, 1]). Any rotation. With probability ``rim`` the
    second ellipse is the body shrunk by 0.8-0.95 about its centre with 50-90 % of its
    intensity subtracted, leaving a bright rim as the skull of the Shepp-Logan phantom. The
    sum is clipped to [0, 1].
    """
    if not 1 <= min_ellipses <= max_ellipses:
        raise ValueError(f"need 1 <= min_ellipses <= max_ellipses, got {min_ellipses}, {max_ellipses}")
    g = generator
    k = max_ellipses
    a = _uniform((n, k), 0.03, 0.5, g)
    b = _uniform((n, k), 0.03, 0.5, g)
    value = _uniform((n, k), -0.5, 0.5, g) if body else _uniform((n, k), 0.0, 1.0, g)
    if body:
        a[:, 0] = _uniform((n,), 0.5, 0.9, g)
        b[:, 0] = _uniform((n,), 0.5, 0.9, g)
        value[:, 0] = _uniform((n,), 0.1, 1.0, g)
    reach = torch.maximum(a, b)
    room = (1.0 - reach).clamp_min(0.0)
    if body:
        room[:, 0] = torch.minimum(room[:, 0], torch.tensor(0.1))
    rho = room * torch.rand((n, k), generator=g).sqrt()  # uniform over the disk of radius `room`
    phi = _uniform((n, k), 0.0, 2 * math.pi, g)
    cx, cy = rho * torch.cos(phi), rho * torch.sin(phi)
    theta = _uniform((n, k), 0.0, math.pi, g)
    if body and k > 1:
        shrink = _uniform((n,), 0.8, 0.95, g)
        inner = -value[:, 0] * _uniform((n,), 0.5, 0.9, g)
        ringed = torch.rand((n,), generator=g) < rim
        for arr, new in ((a, a[:, 0] * shrink), (b, b[:, 0] * shrink), (value, inner), (cx, cx[:, 0]),
                         (cy, cy[:, 0]), (theta, theta[:, 0])):  # fmt: skip
            arr[:, 1] = torch.where(ringed, new, arr[:, 1])
    count = torch.randint(min_ellipses, max_ellipses + 1, (n,), generator=g)
    active = torch.arange(k)[None, :] < count[:, None]

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    x = coords.view(1, 1, 1, size)
    y = coords.view(1, 1, size, 1)
    dx = x - cx[..., None, None]
    dy = y - cy[..., None, None]
    cos, sin = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
    u = (dx * cos + dy * sin) / a[..., None, None]
    v = (dy * cos - dx * sin) / b[..., None, None]
    inside = (u * u + v * v) <= 1.0
    weights = (value * active)[..., None, None]
    image = (inside * weights).sum(dim=1, keepdim=True)
    return image.clamp_(0.0, 1.0).contiguous()


# --- dead leaves ----------------------------------------------------------------------------


def power_law_cdf(r: torch.Tensor, r_min: float, r_max: float) -> torch.Tensor:
    """CDF of p(r) ∝ r^-3 on [r_min, r_max]: (r_min^-2 - r^-2) / (r_min^-2 - r_max^-2)."""
    r = torch.as_tensor(r, dtype=torch.float64).clamp(r_min, r_max)
    return (r_min**-2 - r**-2) / (r_min**-2 - r_max**-2)


def sample_power_law(
    shape: Sequence[int], r_min: float, r_max: float, generator: torch.Generator
) -> torch.Tensor:
    """Radii with density ∝ r^-3 on [r_min, r_max] by inverting ``power_law_cdf`` (float32)."""
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got {r_min}, {r_max}")
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    inv = r_min**-2 - u * (r_min**-2 - r_max**-2)
    return inv.rsqrt().to(torch.float32)


def mean_disk_area(r_min: float, r_max: float) -> float:
    """E[pi r^2] under p(r) ∝ r^-3 on [r_min, r_max]: 2 pi ln(r_max / r_min) / (r_min^-2 - r_max^-2)."""
    return 2 * math.pi * math.log(r_max / r_min) / (r_min**-2 - r_max**-2)


@dataclass(frozen=True)
class DeadLeaves:
    """Dead-leaves images and the disks drawn for each, front (first drawn, on top) to back.

    ``radii[i]``, ``centres[i]`` (x, y) and ``colours[i]`` are in pixels / [0, 1]; drawing
    stopped at the disk that covered the last pixel (or at the disk budget). Pixel (row i,
    column j) has its centre at (j + 0.5, i + 0.5) and lies in a disk when its centre is
    within the radius. ``uncovered[i]`` is the fraction of pixels no disk covered (they
    show ``background[i]``, a last leaf under all others): 0 unless the budget ran out.
    """

    images: torch.Tensor
    radii: list[torch.Tensor]
    centres: list[torch.Tensor]
    colours: list[torch.Tensor]
    background: torch.Tensor
    uncovered: torch.Tensor


def dead_leaves_with_disks(
    n: int,
    size: int,
    channels: int,
    generator: torch.Generator,
    *,
    r_min: float = 1.0,
    r_max: float | None = None,
    max_disks: int = 50_000,
) -> DeadLeaves:
    """``n`` dead-leaves images (n, channels, size, size) in [0, 1], with their disks.

    The model: opaque disks with centres uniform over the image, radii ∝ r^-3 on
    [r_min, r_max] pixels (default r_max: size / 2), and colours uniform in [0, 1]^C, fall
    one over another. It is simulated front to back (the exact "perfect simulation" of
    Kendall and Thönnes): each new disk lies under all earlier ones and shows only where
    they left the image uncovered, and drawing stops once every pixel is covered, or after
    ``max_disks`` disks per image.

    Vectorised: disks are drawn in chunks for all images at once, and each disk is
    rasterised on a square stencil of its radius' power-of-two bucket, so the work is about
    the disks' total area; a scatter-min keeps the first disk over each pixel.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    r_max = float(size) / 2 if r_max is None else float(r_max)
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got {r_min}, {r_max}")
    g = generator
    pixels = size * size
    none = torch.iinfo(torch.int64).max
    first = torch.full((n * pixels,), none, dtype=torch.int64)  # index of the first disk over a pixel
    chunk = max(64, math.ceil(2 * pixels / mean_disk_area(r_min, r_max)))
    radii, centres, colours = [], [], []
    drawn = 0
    covered = torch.zeros(n, dtype=torch.bool)
    while drawn < max_disks:
        k = min(chunk, max_disks - drawn)
        r = sample_power_law((n, k), r_min, r_max, g)
        xy = torch.rand((n, k, 2), generator=g) * size
        colour = torch.rand((n, k, channels), generator=g)
        radii.append(r)
        centres.append(xy)
        colours.append(colour)
        _rasterise(first, r, xy, drawn, size, ~covered)
        drawn += k
        covered = (first.view(n, pixels) != none).all(dim=1)
        if bool(covered.all()):
            break
    r_all, xy_all, colour_all = torch.cat(radii, 1), torch.cat(centres, 1), torch.cat(colours, 1)
    background = torch.rand((n, channels), generator=g)
    first = first.view(n, pixels)
    hit = first != none
    index = torch.where(hit, first, 0)
    image = colour_all.gather(1, index[..., None].expand(-1, -1, channels))
    image = torch.where(hit[..., None], image, background[:, None, :])
    images = image.view(n, size, size, channels).permute(0, 3, 1, 2).contiguous()
    used = torch.where(hit.all(dim=1), torch.where(hit, first, -1).amax(dim=1) + 1, drawn).tolist()
    return DeadLeaves(
        images=images,
        radii=[r_all[i, :m] for i, m in enumerate(used)],
        centres=[xy_all[i, :m] for i, m in enumerate(used)],
        colours=[colour_all[i, :m] for i, m in enumerate(used)],
        background=background,
        uncovered=(~hit).float().mean(dim=1),
    )


def _rasterise(
    first: torch.Tensor, r: torch.Tensor, xy: torch.Tensor, offset: int, size: int, active: torch.Tensor
) -> None:
    """Scatter-min the global index (``offset`` + column) of each disk of the (n, k) batch into
    ``first`` (n * size * size,) at the pixels it covers; rows of inactive images are skipped."""
    n, k = r.shape
    order = offset + torch.arange(k)
    bucket = torch.ceil(torch.log2(r.clamp_min(1.0))).long()  # s = 2**bucket >= r
    bucket = torch.where(active[:, None], bucket, -1)
    for b in torch.unique(bucket).tolist():
        if b < 0:
            continue
        img, j = (bucket == b).nonzero(as_tuple=True)
        s = 2**b
        steps = torch.arange(-s, s + 1)  # |px + 0.5 - x| <= r <= s  =>  floor(x) - s <= px <= floor(x) + s
        rr, cx, cy = r[img, j], xy[img, j, 0], xy[img, j, 1]
        px = torch.floor(cx).long()[:, None] + steps  # (D, P) candidate columns
        py = torch.floor(cy).long()[:, None] + steps  # (D, P) candidate rows
        dx2 = (px.float() + 0.5 - cx[:, None]).square().masked_fill_((px < 0) | (px >= size), math.inf)
        dy2 = (py.float() + 0.5 - cy[:, None]).square().masked_fill_((py < 0) | (py >= size), math.inf)
        d, iy, ix = (dy2[:, :, None] + dx2[:, None, :] <= (rr * rr)[:, None, None]).nonzero(as_tuple=True)
        flat = (img[d] * size + py[d, iy]) * size + px[d, ix]
        first.scatter_reduce_(0, flat, order[j[d]], reduce="amin")


def dead_leaves(
    n: int, size: int, channels: int, generator: torch.Generator, **options: float | None
) -> torch.Tensor:
    """``n`` dead-leaves images (n, channels, size, size) float32 in [0, 1]; see
    ``dead_leaves_with_disks`` for the model, its ``options`` (``r_min``, ``r_max``,
    ``max_disks``) and the drawn disks."""
    return dead_leaves_with_disks(n, size, channels, generator, **options).images


# --- sources --------------------------------------------------------------------------------


class ImageSource(Protocol):
    """What the trainer draws batches from."""

    resolution: int
    channels: int

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, channels, resolution, resolution) float32 in [0, 1]."""
        ...

    def describe(self) -> str:
        """One line for the model card."""
        ...


@dataclass(frozen=True)
class SyntheticSource:
    """An endless stream of fresh synthetic images: every batch is new."""

    kind: SyntheticKind
    resolution: int
    channels: int

    def __post_init__(self) -> None:
        if self.kind not in SYNTHETIC_KINDS:
            raise ValueError(
                f"unknown synthetic data {self.kind!r}; choose from {', '.join(SYNTHETIC_KINDS)}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "ellipses":
            grey = ellipse_phantoms(n, self.resolution, generator)
            return grey.expand(-1, self.channels, -1, -1).contiguous()
        return dead_leaves(n, self.resolution, self.channels, generator)

    def describe(self) -> str:
        if self.kind == "ellipses":
            return (
                f"synthetic random ellipse phantoms (3-10 ellipses, additive intensities, clipped to [0, 1]), "
                f"{self.resolution}x{self.resolution}, {self.channels} channel(s), a fresh batch every step"
            )
        return (
            f"synthetic dead leaves (disk radii ∝ r^-3 on [1, {self.resolution / 2:g}] px, uniform colours), "
            f"{self.resolution}x{self.resolution}, {self.channels} channel(s), a fresh batch every step"
        )


class FolderSource:
    """Images and CT DICOM slices under a folder (recursively), held in memory.

    Files: PNG, JPEG, TIFF, BMP, ``.npy`` (values in [0, 1]) and DICOM (``.dcm``,
    ``.dicom``; CT only, HU mapped through the HU window). Each is converted to
    ``channels`` (RGB -> grey by BT.601 luma; grey -> RGB by repetition; ``None``: grey if
    every file is grey, else RGB) and, to save memory, shrunk so its shorter side is at
    most resolution / crop_scale[0] (no batch needs more). A sample is a random square crop
    whose side is a uniform fraction ``crop_scale`` of the shorter side, resized
    (antialiased bilinear) to ``resolution``, flipped left-right with probability 1/2 when
    ``flip``.
    """

    def __init__(
        self,
        folder: str | Path,
        resolution: int,
        channels: int | None = None,
        *,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        flip: bool = True,
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "no such folder" if not folder.exists() else "not a folder")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
        if not files:
            raise InputError(
                folder, f"no training images found (looked for {', '.join(sorted(FOLDER_SUFFIXES))})"
            )
        self.folder = folder
        self.files = files
        self.resolution = resolution
        self.crop_scale = crop_scale
        self.flip = flip
        arrays = [_read_training_file(p) for p in files]
        self.channels = channels or (1 if all(a.shape[0] == 1 for a in arrays) else 3)
        longest = math.ceil(resolution / crop_scale[0])
        self.images = [_shrink(_to_channels(torch.from_numpy(a), self.channels), longest) for a in arrays]
        self.dicom_count = sum(p.suffix.lower() in DICOM_SUFFIXES for p in files)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        picks = torch.randint(len(self.images), (n,), generator=generator).tolist()
        fractions = _uniform((n,), *self.crop_scale, generator).tolist()
        u = torch.rand((n, 3), generator=generator).tolist()
        out = torch.empty(n, self.channels, self.resolution, self.resolution)
        for i, (pick, frac, (ux, uy, uf)) in enumerate(zip(picks, fractions, u, strict=True)):
            image = self.images[pick]
            h, w = image.shape[-2:]
            side = max(1, round(min(h, w) * frac))
            top, left = int(uy * (h - side + 1)), int(ux * (w - side + 1))
            crop = image[None, :, top : top + side, left : left + side]
            if side != self.resolution:
                crop = F.interpolate(
                    crop,
                    size=(self.resolution, self.resolution),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            if self.flip and uf < 0.5:
                crop = crop.flip(-1)
            out[i] = crop[0]
        return out.clamp_(0.0, 1.0)

    def describe(self) -> str:
        kinds = (
            f"{len(self.files) - self.dicom_count} image(s), {self.dicom_count} DICOM slice(s) (HU window)"
        )
        return (
            f"folder {self.folder}: {kinds}; random square crops of {self.crop_scale[0]:g}-{self.crop_scale[1]:g} "
            f"of the shorter side resized to {self.resolution}x{self.resolution}, {self.channels} channel(s)"
            + (", random left-right flips" if self.flip else "")
        )


def _read_training_file(path: Path) -> np.ndarray:
    if path.suffix.lower() in DICOM_SUFFIXES:
        hu, _ = read_dicom_hu(path)
        return hu_to_unit(hu)[None]
    return read_image(path).data


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return (image * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    return image.expand(3, -1, -1).contiguous()


def _shrink(image: torch.Tensor, longest_short_side: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    factor = longest_short_side / min(h, w)
    if factor >= 1:
        return image.contiguous()
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
