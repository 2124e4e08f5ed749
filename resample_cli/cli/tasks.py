"""What each task reads and which operator it builds: the measurements the restoring
commands restore, and the operators of ``resample simulate`` and ``resample bench``.

Imported by a command only when it runs: it imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from ..fileio.ct import Sinogram, hu_to_unit, read_dicom_hu
from ..fileio.dicom_detect import looks_like_dicom
from ..fileio.errors import InputError
from ..fileio.images import LoadedImage, load_array, read_image
from ..operators import (
    BicubicDownsample,
    Blur,
    GaussianBlur,
    Inpainting,
    NonlinearBlur,
    ParallelBeamCT,
    load_operator,
)
from ..operators.base import Operator
from .files import mask_for
from .restore import Measurement


def to_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]


# --- deblur -----------------------------------------------------------------


def read_kernel(path: Path) -> np.ndarray:
    """A blur kernel from .npy (2-D) or an image (grey, or the channel mean), scaled to
    sum 1 so that blurring keeps the mean intensity."""
    kernel = load_array(path) if path.suffix.lower() == ".npy" else read_image(path).data.mean(0)
    if kernel.ndim != 2:
        raise InputError(path, f"kernel has shape {kernel.shape}; expected a 2-D array")
    if kernel.min() < 0 or kernel.sum() <= 0:
        raise InputError(path, "kernel must be non-negative with a positive sum")
    return kernel / kernel.sum()


def blur_operator(sigma: float, kernel_size: int, kernel: Path | None) -> Blur:
    """The blur the deblur options describe (``kernel_size`` is odd: the option's callback
    checks it); an unusable kernel file is a usage error (exit 2)."""
    if kernel is None:
        return GaussianBlur(sigma, kernel_size)
    try:
        return Blur(torch.from_numpy(read_kernel(kernel)))
    except InputError as err:
        raise typer.BadParameter(str(err), param_hint="--kernel") from None


# --- inpainting -------------------------------------------------------------


def read_mask(path: Path) -> np.ndarray:
    """A mask (1 = observed) from an image (white = observed) or a .npy bool/0-1 array."""
    if path.suffix.lower() == ".npy":
        mask = load_array(path)
        if not np.isin(mask, (0, 1)).all():
            raise InputError(path, "mask array must hold only 0/1 or booleans")
    else:
        mask = read_image(path).data.mean(0)
        mask = (mask >= 0.5).astype(np.float32)
    if mask.ndim != 2:
        raise InputError(path, f"mask has shape {mask.shape}; expected a 2-D array")
    return mask.astype(np.float32)


def inpainting_operator(mask_path: Path, shape: tuple[int, int], source: Path) -> Inpainting:
    mask = read_mask(mask_path)
    if mask.shape != shape:
        raise InputError(
            source,
            f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but the image is {shape[0]}x{shape[1]}",
        )
    return Inpainting(torch.from_numpy(mask))


# --- nonlinear deblur -------------------------------------------------------


def parse_operator_args(items: list[str]) -> dict:
    """key=value pairs; values are read as JSON when they parse (numbers, booleans,
    lists), else kept as strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--operator-arg {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def nonlinear_operator(spec: str | None, args: list[str]):
    """The forward model of --operator and --operator-arg; one that cannot be made is a
    usage error (exit 2)."""
    try:
        if spec is None:
            return NonlinearBlur(**parse_operator_args(args))
        return load_operator(spec, **parse_operator_args(args))
    except (ValueError, ImportError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--operator") from None


# --- the same forward model for every image ---------------------------------


def task_operator(task: str, options: Mapping[str, Any]) -> Operator:
    """The forward model of deblur, superres or nonlinear-deblur from the task's options
    (``task_options.TASK_OPTIONS``), the same for every image."""
    if task == "deblur":
        return blur_operator(options["sigma"], options["kernel_size"], options["kernel"])
    if task == "superres":
        return BicubicDownsample(options["scale"])
    if task == "nonlinear-deblur":
        return nonlinear_operator(options["operator"], options["operator_arg"] or [])
    raise ValueError(f"{task}: the forward model depends on each input")


# --- CT ---------------------------------------------------------------------


def read_clean_ct(path: Path) -> LoadedImage:
    """A clean CT slice for simulation or reference: DICOM (.dcm, or no suffix and a DICM
    preamble) in HU through the window, or an image/array already in [0, 1] (grey)."""
    if looks_like_dicom(path):
        hu, _ = read_dicom_hu(path)
        return LoadedImage(hu_to_unit(hu)[None], 16, path)
    image = read_image(path)
    if image.data.shape[0] != 1:
        return LoadedImage(image.data.mean(0, keepdims=True), image.bit_depth, path)
    return image


# --- measurements -----------------------------------------------------------


def image_measurement(path: Path, operator_for, scale: int = 1) -> Measurement:
    """Measurement for the image tasks: y is the file, the unknown image is ``scale``
    times larger."""
    loaded = read_image(path, unit_range=False)
    c, h, w = loaded.data.shape
    op = operator_for((h, w))
    return Measurement(to_batch(loaded.data), op, (c, h * scale, w * scale), loaded.bit_depth)


def inpainting_measurement(path: Path, mask: Path) -> Measurement:
    """An image with missing pixels and its mask (a file, or a folder matched by name)."""
    measured = image_measurement(path, lambda hw: inpainting_operator(mask_for(path, mask), hw, path))
    # Whatever a missing pixel holds in the file (zero, white scratches) is not data.
    measured.y = measured.operator(measured.y)
    return measured


def ct_measurement(
    path: Path,
    *,
    read: Callable[[Path], Sinogram],
    image_size: int | None,
    noise: float | None,
    relative_noise: float | None,
) -> Measurement:
    """The sinogram ``read`` reads (``fileio.ct.read_sinogram`` with the geometry options) and
    its parallel-beam projector; the image is ``image_size`` (default: the detector count)
    wide; a volume's slices are the measurement's batch. ``noise`` is --noise when given on
    the command line (else None); ``ct_noise_std`` says which noise std wins (a volume's
    --relative-noise: of its maximum), and the report says where it came from."""
    sino = read(path)
    n_det = sino.data.shape[-1]
    size = image_size or n_det
    angles_deg = [float(a) for a in sino.angles_deg]
    op = ParallelBeamCT(angles_deg, size, det_count=n_det)
    sigma_y, source = ct_noise_std(sino, noise, relative_noise)
    extra = {"angles_deg": angles_deg, "det_count": n_det, "image_size": size, "sigma_y_source": source}
    if sino.volume:  # its slices, each a measurement of its own
        extra["slices"] = sino.data.shape[0]
        return Measurement(torch.from_numpy(sino.data)[:, None], op, (1, size, size), 16, extra, sigma_y)
    return Measurement(to_batch(sino.data[None]), op, (1, size, size), 16, extra, sigma_y)


def ct_noise_std(
    sino: Sinogram, noise: float | None, relative_noise: float | None
) -> tuple[float | None, str]:
    """The sinogram's noise std and where it came from, first found of: --relative-noise
    (of the sinogram's maximum), --noise, the std ``simulate ct`` recorded in the .npz,
    and --noise's default (None: the caller's)."""
    if relative_noise is not None:
        return relative_noise * float(np.abs(sino.data).max()), "--relative-noise"
    if noise is not None:
        return noise, "--noise"
    # A noise-free simulation records 0, which would leave the discrepancy principle no stop.
    if sino.noise_std:
        return sino.noise_std, "npz"
    return None, "default"
