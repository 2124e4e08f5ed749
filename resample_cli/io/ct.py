"""CT files: sinograms (.npy/.npz), DICOM slices in HU, and the HU window.

The image domain is attenuation scaled to [0, 1] through the HU window: HU clamped to
[HU_MIN, HU_MAX] and mapped linearly. Sinograms are line integrals of that image with
unit pixel size, angles in degrees, stored (angles, detectors).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .images import load_array

HU_MIN, HU_MAX = -1024.0, 3072.0

Layout = Literal["angles-first", "det-first"]


def hu_to_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] through the window [HU_MIN, HU_MAX]."""
    return ((np.clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)).astype(np.float32)


def unit_to_hu(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) * (HU_MAX - HU_MIN) + HU_MIN).astype(np.float32)


@dataclass(frozen=True)
class Sinogram:
    data: np.ndarray  # (angles, detectors), float32
    angles_deg: np.ndarray
    path: Path


def equal_angles(n: int) -> np.ndarray:
    """n angles equally spaced over [0, 180) degrees."""
    return np.arange(n) * 180.0 / n


def read_sinogram(
    path: str | Path,
    *,
    angles: np.ndarray | None = None,
    n_angles: int | None = None,
    angle_unit: Literal["deg", "rad"] = "deg",
    layout: Layout | None = None,
    angles_source: str | None = None,
) -> Sinogram:
    """Read a 2-D sinogram from ``.npy`` or ``.npz`` (keys ``sinogram``, optional
    ``angles`` and ``det_spacing``). Angles come from the file, else ``angles``, else
    ``n_angles`` equally spaced (a count given beside the file's angles must agree). The layout is taken from ``layout`` or inferred from
    which axis has as many entries as there are angles; a square sinogram whose both
    axes match is refused as ambiguous. ``angles_source`` (e.g. the angles file) is
    named in a count mismatch, since either file may be the wrong one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        sino, file_angles = _read_npz(path)
    elif suffix == ".npy":
        sino, file_angles = load_array(path), None
    else:
        raise InputError(path, f"unsupported sinogram file type {suffix or '(none)'}; use .npy or .npz")
    if sino.ndim != 2:
        raise InputError(path, f"sinogram has shape {sino.shape}; expected a 2-D array (angles, detectors)")
    if file_angles is not None:
        # The file's own angles win, but a count given on the command line must agree.
        asked = len(np.ravel(angles)) if angles is not None else n_angles
        if asked is not None and asked != file_angles.size:
            raise InputError(
                path, f"the .npz holds {file_angles.size} angles but {asked} were given on the command line"
            )
        angles, angles_source = file_angles, None
    if angles is not None:
        angles = np.asarray(angles, dtype=np.float64).ravel()
        if angle_unit == "rad":
            angles = np.degrees(angles)
    elif n_angles is not None:
        angles = equal_angles(n_angles)
    else:
        raise InputError(path, "no angles: give --angles N, --angles-file, or an 'angles' key in the .npz")
    n = len(angles)
    given = f"{n} angles" + (f" (from {angles_source})" if angles_source else "")
    layout = layout or _infer_layout(path, sino.shape, n, given)
    if layout == "det-first":
        sino = sino.T
    if sino.shape[0] != n:
        raise InputError(
            path,
            f"sinogram {'(det-first) ' if layout == 'det-first' else ''}has {sino.shape[0]} "
            f"angle rows but {given} were given",
        )
    return Sinogram(np.ascontiguousarray(sino, dtype=np.float32), angles, path)


def _infer_layout(path: Path, shape: tuple[int, int], n: int, given: str) -> Layout:
    rows, cols = shape
    if rows == n and cols == n:
        raise InputError(
            path,
            f"sinogram is {rows}x{cols} with {n} angles: the layout is ambiguous; "
            "pass --layout angles-first or --layout det-first",
        )
    if rows == n:
        return "angles-first"
    if cols == n:
        return "det-first"
    raise InputError(
        path,
        f"sinogram shape {shape} does not match {given} on either axis; check --angles or --angles-file",
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "sinogram" not in f:
                raise InputError(path, f"no 'sinogram' key in .npz (keys: {', '.join(f.files) or 'none'})")
            sino = np.asarray(f["sinogram"], dtype=np.float32)
            angles = np.asarray(f["angles"], dtype=np.float64) if "angles" in f else None
            spacing = float(f["det_spacing"]) if "det_spacing" in f else 1.0
    except (ValueError, OSError, EOFError) as err:
        if path.exists() and path.stat().st_size == 0:
            raise InputError(path, "empty file") from None
        if not path.exists():
            raise InputError(path, "no such file") from None
        raise InputError(path, f"not a readable .npz archive ({err})") from None
    if spacing != 1.0:
        raise InputError(
            path, f"det_spacing {spacing} is not supported: sinograms must use unit detector spacing"
        )
    if not np.isfinite(sino).all():
        raise InputError(path, "sinogram holds NaN or infinite values")
    if angles is not None and not np.isfinite(angles).all():
        raise InputError(path, "angles hold NaN or infinite values")
    return sino, angles


def read_angles_file(path: str | Path) -> np.ndarray:
    """Angles from a text file (whitespace or comma separated) or a .npy array."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return load_array(path).ravel().astype(np.float64)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        values = np.array(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except ValueError as err:
        raise InputError(path, f"not a list of numbers ({err})") from None
    if values.size == 0 or not np.isfinite(values).all():
        raise InputError(path, "angles file is empty or holds non-finite values")
    return values


def read_dicom_hu(path: str | Path, *, require_ct: bool = True):
    """A DICOM slice in HU (RescaleSlope/Intercept applied; pixels equal to
    PixelPaddingValue set to HU_MIN), and the dataset."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise InputError(path, f"not a readable DICOM file ({err})") from None
    if "PixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    modality = str(ds.get("Modality", ""))
    if require_ct and modality != "CT":
        raise InputError(path, f"DICOM modality is {modality or 'missing'}, not CT")
    try:
        raw = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken pixel data
        raise InputError(path, f"DICOM pixel data cannot be decoded ({err})") from None
    if raw.ndim != 2:
        raise InputError(path, f"DICOM pixel data has shape {raw.shape}; expected one 2-D slice")
    hu = raw.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    if "PixelPaddingValue" in ds:
        hu[raw == ds.PixelPaddingValue] = HU_MIN
    return hu, ds


def write_derived_dicom(
    path: str | Path, hu: np.ndarray, template_path: str | Path, description: str
) -> None:
    """A derived CT slice from ``hu``: the template's patient and study tags, a new
    series and instance, ImageType DERIVED\\SECONDARY, int16 pixels with slope 1."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    _, ds = read_dicom_hu(template_path, require_ct=False)
    ds = ds.copy()
    pixels = np.round(np.clip(hu, -32768, 32767)).astype(np.int16)
    now = datetime.datetime.now()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesDescription = description[:64]
    ds.DerivationDescription = description[:1024]
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    for tag in (
        "PixelPaddingValue",
        "WindowCenter",
        "WindowWidth",
        "LargestImagePixelValue",
        "SmallestImagePixelValue",
    ):
        if tag in ds:
            delattr(ds, tag)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.tobytes()
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
