"""Reading and writing images (Pillow) and arrays (.npy) in the [0, 1] image domain."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path
from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
ARRAY_SUFFIXES = {".npy"}


@dataclass(frozen=True)
class LoadedImage:
    """An image as a float32 (C, H, W) array in [0, 1], and how it was stored."""

    data: np.ndarray
    bit_depth: int  # 8 or 16 for image files, 32 for arrays
    path: Path


def read_image(path: str | Path, *, unit_range: bool = True) -> LoadedImage:
    """Read an image file (PNG, JPEG, TIFF, BMP; 8- or 16-bit; grey or RGB, alpha
    dropped with a warning) or a ``.npy`` array ((H, W), (H, W, C) or (C, H, W) with
    C in {1, 3}). Array values must lie in [0, 1] unless ``unit_range`` is False (a
    noisy measurement may leave it). An EXIF orientation (cameras' JPEGs) is applied:
    the image comes upright, as viewers show it."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return LoadedImage(_image_array(path, load_array(path), unit_range), 32, path)
    try:
        with Image.open(path) as im:
            im.load()
            return _from_pil(path, ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(path, f"not a readable image ({err})") from None


# EXIF orientations that turn the image a quarter turn: its stored width is its height.
_QUARTER_TURNS = {5, 6, 7, 8}


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the image ``read_image`` would return, from the file's header alone (no
    decoding: cheap enough to check every input before a model loads)."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError, EOFError) as err:
            raise InputError(path, f"not a readable .npy array ({err})") from None
        return _image_array_shape(path, shape)[1:]
    try:
        with Image.open(path) as im:
            width, height = im.size
            turned = im.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(path, f"not a readable image ({err})") from None
    return (width, height) if turned else (height, width)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")


def load_array(path: str | Path) -> np.ndarray:
    """A finite numeric array from ``.npy`` (pickled objects are refused)."""
    path = Path(path)
    _check_file(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, f"not a readable .npy array ({err})") from None
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise InputError(path, f"array of {arr.dtype} is not numeric")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(path, f"array holds {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    return arr


def _image_array_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The (C, H, W) an array of ``shape`` is read as: (H, W), (H, W, C) or (C, H, W)."""
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3 and shape[-1] in (1, 3) and shape[0] not in (1, 3):
        return (shape[2], shape[0], shape[1])
    if len(shape) == 3 and shape[0] in (1, 3):
        return tuple(shape)
    raise InputError(path, f"array of shape {shape} is not an image: expected (H, W), (H, W, C) or (C, H, W)")


def _image_array(path: Path, arr: np.ndarray, unit_range: bool = True) -> np.ndarray:
    shape = _image_array_shape(path, arr.shape)
    if arr.ndim == 2:
        arr = arr[None]
    elif shape != arr.shape:  # (H, W, C)
        arr = arr.transpose(2, 0, 1)
    if unit_range and (arr.min() < 0 or arr.max() > 1):
        raise InputError(
            path, f"values span [{arr.min():.4g}, {arr.max():.4g}]; image arrays must lie in [0, 1]"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _from_pil(path: Path, im: Image.Image) -> LoadedImage:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        if arr.max() > 65535 or arr.min() < 0:
            raise InputError(path, "32-bit integer image out of the 16-bit range")
        return LoadedImage((arr / 65535.0)[None], 16, path)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return LoadedImage(_image_array(path, arr), 32, path)
    grey = im.mode in ("1", "L", "LA") or (im.mode == "P" and _palette_is_grey(im))
    im = im.convert("L" if grey else "RGB")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return LoadedImage(arr[None] if grey else arr.transpose(2, 0, 1), 8, path)


def _palette_is_grey(im: Image.Image) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def write_image(path: str | Path, data: np.ndarray, bit_depth: int = 8) -> None:
    """Write a (C, H, W) array in [0, 1] atomically: PNG/TIFF/BMP/JPEG by suffix, or
    ``.npy`` (float32). 16-bit output is for grey PNG and TIFF only: Pillow reads and
    writes 16 bits per sample for single-channel images alone."""
    path = Path(path)
    data = np.clip(np.asarray(data, dtype=np.float32), 0, 1)
    if path.suffix.lower() == ".npy":
        save_array(path, data[0] if data.shape[0] == 1 else data.transpose(1, 2, 0))
        return
    with atomic_path(path) as tmp:
        if bit_depth == 16:
            if data.shape[0] != 1:
                raise ValueError("16-bit output is available for grey images only")
            Image.fromarray(np.round(data[0] * 65535).astype(np.uint16)).save(tmp)
            return
        u8 = np.round(data * 255).astype(np.uint8)
        Image.fromarray(u8[0] if u8.shape[0] == 1 else u8.transpose(1, 2, 0)).save(tmp)


def save_array(path: str | Path, data: np.ndarray) -> None:
    """Write a float32 ``.npy`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(data, dtype=np.float32))
