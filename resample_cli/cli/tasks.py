"""What each task reads, which operator it builds, and what it writes.

Shared by the restoring commands and by ``resample simulate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer

from ..io.ct import hu_to_unit, read_dicom_hu, unit_to_hu, write_derived_dicom
from ..io.errors import InputError
from ..io.images import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    LoadedImage,
    load_array,
    read_image,
    save_array,
    write_image,
)
from ..operators import Blur, GaussianBlur, Inpainting, NonlinearBlur, load_operator
from .files import match_by_name
from .options import CommonOptions
from .restore import Measurement, Writer, stem_path

IMAGE_INPUTS = IMAGE_SUFFIXES | ARRAY_SUFFIXES
# The prior each task uses without --model.
DEFAULT_MODELS = {
    "deblur": "celebahq",
    "superres": "celebahq",
    "inpaint": "celebahq",
    "nonlinear-deblur": "celebahq",
    "ct": "ct-ellipses",
}
# Simulated noise std without --noise: the paper's 0.01 on [-1, 1] for images; none for CT
# (sinogram units, whose scale depends on the image size).
DEFAULT_NOISE = {"deblur": 0.005, "superres": 0.005, "inpaint": 0.005, "nonlinear-deblur": 0.005, "ct": 0.0}


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
    """The blur the deblur options describe; bad options are usage errors (exit 2)."""
    if kernel_size % 2 == 0:
        raise typer.BadParameter(f"must be odd, got {kernel_size}", param_hint="--kernel-size")
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


def mask_for(source: Path, mask: Path) -> Path:
    """One mask for every input, or the mask in a folder named like the input."""
    if mask.is_dir():
        return match_by_name(source, mask, [".png", ".npy", ".tif", ".tiff", ".bmp"], tags=(".mask", ""))
    return mask


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
    if spec is None:
        return NonlinearBlur(**parse_operator_args(args))
    return load_operator(spec, **parse_operator_args(args))


# --- writers ----------------------------------------------------------------


class ImageWriter(Writer):
    """The restored image beside its report: .npy for .npy inputs, 16-bit TIFF or PNG
    for 16-bit grey inputs, else 8-bit PNG."""

    def paths(self, source: Path, common: CommonOptions) -> dict[str, Path]:
        return {"output": stem_path(source, common, output_suffix(source))}

    def write(self, paths, image, measurement, source, done) -> None:
        bit_depth = measurement.bit_depth if image.shape[0] == 1 else 8
        write_image(paths["output"], image, bit_depth=16 if bit_depth == 16 else 8)
        done.append(paths["output"])


def output_suffix(source: Path) -> str:
    suffix = source.suffix.lower()
    if suffix == ".npy":
        return ".npy"
    return ".tif" if suffix in (".tif", ".tiff") else ".png"


class CTWriter(Writer):
    """A PNG of the [0, 1] image (the HU window), a float32 .npy in HU, and with a
    template a derived DICOM slice."""

    def __init__(self, dicom_template: Path | None):
        self.dicom_template = dicom_template

    def paths(self, source: Path, common: CommonOptions) -> dict[str, Path]:
        paths = {"output": stem_path(source, common, ".png"), "hu": stem_path(source, common, ".npy")}
        if self.dicom_template is not None:
            paths["dicom"] = stem_path(source, common, ".dcm")
        return paths

    def write(self, paths, image, measurement, source, done) -> None:
        write_image(paths["output"], image)
        done.append(paths["output"])
        hu = unit_to_hu(image[0])
        save_array(paths["hu"], hu)
        done.append(paths["hu"])
        if "dicom" in paths:
            write_derived_dicom(
                paths["dicom"], hu, self.dicom_template, f"ReSample reconstruction of {source.name}"
            )
            done.append(paths["dicom"])


def read_clean_ct(path: Path) -> LoadedImage:
    """A clean CT slice for simulation or reference: DICOM in HU through the window,
    or an image/array already in [0, 1] (grey)."""
    if path.suffix.lower() == ".dcm":
        hu, _ = read_dicom_hu(path)
        return LoadedImage(hu_to_unit(hu)[None], 16, path)
    image = read_image(path)
    if image.data.shape[0] != 1:
        return LoadedImage(image.data.mean(0, keepdims=True), image.bit_depth, path)
    return image


def image_measurement(path: Path, operator_for, scale: int = 1) -> Measurement:
    """Measurement for the image tasks: y is the file, the unknown image is ``scale``
    times larger."""
    loaded = read_image(path, unit_range=False)
    c, h, w = loaded.data.shape
    op = operator_for((h, w))
    return Measurement(to_batch(loaded.data), op, (c, h * scale, w * scale), loaded.bit_depth)
