"""CT files: sinograms (.npy/.npz, or a folder of DICOM sinograms of one series), DICOM
slices in HU, and the HU window.

The image domain is attenuation scaled to [0, 1] through the HU window: HU clamped to
[HU_MIN, HU_MAX] and mapped linearly. Sinograms are line integrals of that image with
unit pixel size, angles in degrees, stored (angles, detectors); a volume's stored
(slices, angles, detectors).

pydicom is imported inside the functions that read or write DICOM: the command line's
``--help`` imports this module.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
from collections.abc import Iterator, MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .. import __version__
from ..messages import first_line
from .atomic import atomic_path, replace_folder
from .errors import InputError
from .images import load_array

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

HU_MIN, HU_MAX = -1024.0, 3072.0
AIR_HU = -900.0  # denser than this is not air (scanners read air near -1000 HU, with noise)

Layout = Literal["angles-first", "det-first"]


def hu_to_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] through the window [HU_MIN, HU_MAX]."""
    return ((np.clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)).astype(np.float32)


def unit_to_hu(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) * (HU_MAX - HU_MIN) + HU_MIN).astype(np.float32)


@dataclass(frozen=True)
class Sinogram:
    data: np.ndarray  # (angles, detectors), float32; a volume's (slices, angles, detectors)
    angles_deg: np.ndarray
    path: Path
    noise_std: float | None = None  # the noise std ``resample simulate ct`` added, when it made the file
    source_slice: dict | None = None  # the DICOM slice it was simulated from (``dicom_slice_facts``)

    @property
    def volume(self) -> bool:
        return self.data.ndim == 3


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
    """Read a 2-D sinogram, or a volume of them (3-D: slices first), from ``.npy``, ``.npz``
    or a folder of DICOM sinograms of one series (``read_dicom_sinograms``). A 2-D one from
    ``.npy`` or ``.npz`` (keys ``sinogram``, optional
    ``angles``, ``det_spacing``, and from ``resample simulate ct`` ``noise_std`` and
    ``dicom``, the source slice's tags as JSON). Angles come from the file, else ``angles``, else
    ``n_angles`` equally spaced (a count given beside the file's angles must agree). The layout is taken from ``layout`` or inferred from
    which axis has as many entries as there are angles; a square sinogram whose both
    axes match is refused as ambiguous. ``angles_source`` (e.g. the angles file) is
    named in a count mismatch, since either file may be the wrong one."""
    path = Path(path)
    suffix = path.suffix.lower()
    noise_std = source_slice = None
    if path.is_dir():
        sino, file_angles = read_dicom_sinograms(path)[0], None
    elif suffix == ".npz":
        sino, file_angles, noise_std, source_slice = _read_npz(path)
    elif suffix == ".npy":
        sino, file_angles = load_array(path), None
    else:
        raise InputError(path, f"unsupported sinogram file type {suffix or '(none)'}; use .npy or .npz")
    if sino.ndim not in (2, 3):
        raise InputError(
            path,
            f"sinogram has shape {sino.shape}; expected (angles, detectors), or (slices, angles, detectors) "
            "for a volume",
        )
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
    layout = layout or _infer_layout(path, sino.shape[-2:], n, given)
    if layout == "det-first":
        sino = np.swapaxes(sino, -1, -2)
    if sino.shape[-2] != n:
        raise InputError(
            path,
            f"sinogram {'(det-first) ' if layout == 'det-first' else ''}has {sino.shape[-2]} "
            f"angle rows but {given} were given",
        )
    return Sinogram(np.ascontiguousarray(sino, dtype=np.float32), angles, path, noise_std, source_slice)


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


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, float | None, dict | None]:
    """The sinogram, its angles, the recorded noise std and source slice (each None if absent)."""
    with _open_npz(path) as f:
        if "sinogram" not in f:
            raise InputError(path, f"no 'sinogram' key in .npz (keys: {', '.join(f.files) or 'none'})")
        sino = np.asarray(f["sinogram"], dtype=np.float32)
        angles = np.asarray(f["angles"], dtype=np.float64) if "angles" in f else None
        spacing = float(f["det_spacing"]) if "det_spacing" in f else 1.0
        noise_std = float(f["noise_std"]) if "noise_std" in f else None
        source_slice = _source_slice(f)
    if spacing != 1.0:
        raise InputError(
            path, f"det_spacing {spacing} is not supported: sinograms must use unit detector spacing"
        )
    if not np.isfinite(sino).all():
        raise InputError(path, "sinogram holds NaN or infinite values")
    if angles is not None and not np.isfinite(angles).all():
        raise InputError(path, "angles hold NaN or infinite values")
    if noise_std is not None and not (np.isfinite(noise_std) and noise_std >= 0):
        raise InputError(path, f"noise_std {noise_std} is not a non-negative number")
    return sino, angles, noise_std, source_slice


def read_source_slice(path: str | Path) -> dict | None:
    """The DICOM slice a sinogram file was simulated from (``dicom_slice_facts``), if it says."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return None
    with _open_npz(path) as f:
        return _source_slice(f)


def _source_slice(npz) -> dict | None:
    return json.loads(str(npz["dicom"])) if "dicom" in npz else None


@contextlib.contextmanager
def _open_npz(path: Path) -> Iterator:
    """The open archive; its read errors as one-line InputErrors naming the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            yield f
    except (ValueError, OSError, EOFError) as err:
        if path.exists() and path.stat().st_size == 0:
            raise InputError(path, "empty file") from None
        if not path.exists():
            raise InputError(path, "no such file") from None
        raise InputError(path, f"not a readable .npz archive ({err})") from None


def is_volume(path: Path) -> bool:
    """Whether ``path`` holds a volume of sinograms (a DICOM series' folder, or a 3-D array),
    from its header where it has one; False for a file that cannot be read (reading it
    later says why)."""
    if path.is_dir():
        return is_sinogram_series(path)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False).ndim == 3
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return "sinogram" in f and f["sinogram"].ndim == 3
    except (ValueError, OSError, EOFError):
        pass
    return False


def sinogram_templates(headers: list[Dataset], image_size: int) -> list[Dataset]:
    """DICOM sinograms' tags as the templates of the slices reconstructed from them: the
    patient, study and slice tags stay; the pixel grid becomes the image's, square, with the
    detector spacing (unit detector spacing is one image pixel) and ``image_size`` pixels."""
    from pydicom.valuerep import DSfloat

    templates = []
    for header in headers:
        ds = copy.deepcopy(header)
        detectors = int(ds.get("Columns") or image_size)
        if "PixelSpacing" in ds:  # (between rows: angles, between columns: detectors)
            spacing = float(ds.PixelSpacing[1]) * detectors / image_size
            ds.PixelSpacing = [DSfloat(spacing, auto_format=True)] * 2
        ds.Rows = ds.Columns = image_size
        templates.append(ds)
    return templates


def write_derived_series(folder: Path, hu: np.ndarray, templates: list[Dataset], derivation: str) -> None:
    """A derived series of the volume ``hu`` (slices, H, W) in ``folder``, one file per
    slice (0001.dcm, ...) each made from its template (``derived_slice``); the folder
    appears whole or not at all (``replace_folder``)."""
    series = new_derived_series(templates[0])

    def write(partial: Path) -> None:
        for i, (slice_hu, template) in enumerate(zip(hu, templates, strict=True)):
            ds = derived_slice(slice_hu, template, series, derivation=f"{derivation}, slice {i + 1}")
            ds.save_as(partial / f"{i + 1:04d}.dcm", enforce_file_format=True)

    replace_folder(folder, write)


def is_sinogram_series(path: Path) -> bool:
    """Whether ``path`` is a folder holding DICOM files: one series of sinograms, one input."""
    return path.is_dir() and bool(_dicom_files(path))


def _dicom_files(folder: Path) -> list[Path]:
    from .dicom_detect import looks_like_dicom

    return sorted(p for p in folder.iterdir() if p.is_file() and looks_like_dicom(p))


def read_dicom_sinograms(
    folder: Path, *, header_only: bool = False
) -> tuple[np.ndarray | None, list[Dataset]]:
    """A folder of DICOM files, each one slice's sinogram (rows: angles, columns: detectors;
    RescaleSlope/Intercept applied), of one series: the volume (slices, angles, detectors) in
    InstanceNumber order (else by position along the slice normal, else by name) and each
    slice's tags, in that order (``header_only``: the tags alone, volume None)."""
    paths = _dicom_files(folder)
    if not paths:
        raise InputError(folder, "no DICOM files in this folder")
    found = [(path, _read_dicom(path, header_only=header_only)) for path in paths]
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in found}
    if len(series) > 1:
        raise InputError(folder, f"holds {len(series)} series; a volume is one series (one folder each)")
    found.sort(key=lambda item: slice_order(*item))
    headers = [ds for _, ds in found]
    if header_only:
        return None, headers
    slices = []
    for path, ds in found:
        try:
            raw = ds.pixel_array
        except Exception as err:  # pydicom raises many types for missing or broken pixel data
            raise InputError(path, f"DICOM pixel data cannot be decoded ({first_line(err)})") from None
        if raw.ndim != 2:
            raise InputError(path, f"DICOM pixel data has shape {raw.shape}; expected one 2-D sinogram")
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        slices.append(raw.astype(np.float32) * slope + intercept)
    if len({s.shape for s in slices}) > 1:
        raise InputError(
            folder, f"its sinograms differ in shape ({', '.join(sorted({str(s.shape) for s in slices}))})"
        )
    return np.stack(slices), headers


def slice_order(path: Path, ds: Dataset) -> tuple:
    """Where a slice goes in its series: by InstanceNumber, else position, else name."""
    number = ds.get("InstanceNumber")
    position = ds.get("ImagePositionPatient")
    return (
        int(number) if number is not None else float("inf"),
        float(position[2]) if position is not None else float("inf"),
        path.name,
    )


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


def read_dicom_hu(path: str | Path) -> tuple[np.ndarray, Dataset]:
    """A CT DICOM slice in HU (RescaleSlope/Intercept applied; pixels equal to
    PixelPaddingValue set to HU_MIN), and the dataset."""
    path = Path(path)
    ds = _read_dicom(path)
    if "PixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    _check_ct(path, ds)
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


def read_ct_header(path: str | Path) -> Dataset:
    """A CT DICOM slice's tags without its pixels: what a derived slice copies."""
    path = Path(path)
    ds = _read_dicom(path, header_only=True)
    _check_ct(path, ds)
    if not ds.get("SOPInstanceUID"):
        raise InputError(path, "DICOM file has no SOPInstanceUID for a derived slice to refer to")
    return ds


def clean_ct_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the clean slice ``read_clean_ct`` would return, from headers alone: a
    DICOM's Rows/Columns, else the image's size (for checks before a model loads)."""
    from .dicom_detect import looks_like_dicom
    from .images import image_size

    path = Path(path)
    if not looks_like_dicom(path):
        return image_size(path)
    ds = _read_dicom(path, header_only=True)
    return int(ds.Rows), int(ds.Columns)


def _read_dicom(path: Path, *, header_only: bool = False) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise InputError(path, f"not a readable DICOM file ({err})") from None


def _check_ct(path: Path, ds: Dataset) -> None:
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        raise InputError(path, f"DICOM modality is {modality or 'missing'}, not CT")


# --- what a slice was: recorded by ``simulate ct``, used by derived slices -------------

SERIES_TAGS = ("StudyInstanceUID", "SeriesInstanceUID")
# A slice's own tags: a derived slice made with another slice of the series as its template
# takes these from the source slice, not from the template.
SLICE_TAGS = (
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SliceLocation",
    "WindowCenter",
    "WindowWidth",
    "Rows",
    "Columns",
)


def dicom_slice_facts(ds: Dataset) -> dict:
    """The series and slice tags ``ds`` holds, as JSON values (UIDs as strings, numbers
    as numbers, multi-valued tags as lists)."""
    facts = {}
    for tag in SERIES_TAGS + SLICE_TAGS:
        value = ds.get(tag)
        if value is not None and value != "":
            facts[tag] = _json_value(value)
    return facts


def read_dicom_slice_facts(path: str | Path) -> dict:
    """``dicom_slice_facts`` of a DICOM file, read without its pixels."""
    return dicom_slice_facts(_read_dicom(Path(path), header_only=True))


def _json_value(value):
    if isinstance(value, MutableSequence):  # pydicom's MultiValue
        return [_json_value(v) for v in value]
    if isinstance(value, int):  # pydicom's IS subclasses int
        return int(value)
    if isinstance(value, float):  # and DSfloat float
        return float(value)
    return str(value)


# --- derived slices -------------------------------------------------------------------

# Our own implementation class UID (file meta), fixed, under pydicom's UID root: what
# pydicom.uid.generate_uid(entropy_srcs=["resample-cli implementation class"]) gives.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.16223752196228981266504262505310532511"
IMPLEMENTATION_VERSION_NAME = f"RESAMPLE_{__version__}"[:16]  # DICOM allows 16 characters
SOFT_TISSUE_WINDOW = (40, 400)  # centre, width in HU: for templates without a window
DERIVED_IMAGE_TYPE = ("DERIVED", "SECONDARY", "AXIAL")
# Tags about the template's stored pixel values, untrue of the derived slice's.
STORED_VALUE_TAGS = (
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "LargestImagePixelValue",
    "SmallestImagePixelValue",
)


@dataclass(frozen=True)
class DerivedSeries:
    """What every slice of one derived series shares."""

    uid: str
    date: str
    time: str
    description: str


def new_derived_series(template: Dataset) -> DerivedSeries:
    """A new series for the slices derived from ``template``'s series: a new UID, now."""
    from pydicom.uid import generate_uid

    now = datetime.datetime.now()
    source = str(template.get("SeriesDescription", "")).strip()
    description = f"ReSample of {source}" if source else "ReSample reconstruction"
    return DerivedSeries(generate_uid(), now.strftime("%Y%m%d"), now.strftime("%H%M%S"), description[:64])


def write_derived_dicom(
    path: str | Path,
    hu: np.ndarray,
    template: Dataset,
    series: DerivedSeries,
    *,
    source_slice: dict | None = None,
    derivation: str = "",
) -> None:
    """Write ``derived_slice`` atomically."""
    ds = derived_slice(hu, template, series, source_slice=source_slice, derivation=derivation)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def derived_slice(
    hu: np.ndarray,
    template: Dataset,
    series: DerivedSeries,
    *,
    source_slice: dict | None = None,
    derivation: str = "",
) -> Dataset:
    """A slice of ``series`` holding ``hu`` (int16, slope 1): the template's patient, study,
    frame of reference and slice tags, a new SOPInstanceUID, SourceImageSequence naming the
    template slice, ImageType DERIVED\\SECONDARY\\AXIAL, geometry fitted to ``hu``'s grid.
    ``source_slice`` (``dicom_slice_facts`` of the slice the data came from) replaces the
    template's slice tags when it is another slice of the template's series."""
    ds = copy.deepcopy(template)
    if source_slice and source_slice.get("SeriesInstanceUID") == str(ds.get("SeriesInstanceUID", "")):
        _take_slice_tags(ds, source_slice)
    _new_identity(ds, series, derivation)
    _fit_geometry(ds, hu.shape)
    _keep_window(ds)
    _set_pixels(ds, hu)
    return ds


def _take_slice_tags(ds: Dataset, source_slice: dict) -> None:
    for tag in SLICE_TAGS:
        if tag in source_slice:
            setattr(ds, tag, source_slice[tag])
        elif tag in ds:
            delattr(ds, tag)  # the template's value describes another slice


def _new_identity(ds: Dataset, series: DerivedSeries, derivation: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    source = Dataset()
    source.ReferencedSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    source.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.SourceImageSequence = [source]
    ds.SOPClassUID = source.ReferencedSOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series.uid
    ds.ImageType = list(DERIVED_IMAGE_TYPE)
    ds.SeriesDescription = series.description
    ds.SeriesDate, ds.SeriesTime = series.date, series.time
    now = datetime.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if derivation:
        ds.DerivationDescription = derivation[:1024]
    # A new file meta: the template's names the application that wrote the template.
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta


def _fit_geometry(ds: Dataset, shape: tuple[int, int]) -> None:
    """Rows and Columns of ``shape``; PixelSpacing scaled so the field of view stays the
    template's, and ImagePositionPatient (the first pixel's centre) moved by half the
    change of spacing along the row and column directions, so that the field of view keeps its centre."""
    from pydicom.valuerep import DSfloat

    rows, cols = shape
    old_rows, old_cols = int(ds.get("Rows") or rows), int(ds.get("Columns") or cols)
    ds.Rows, ds.Columns = rows, cols
    if "PixelSpacing" not in ds:
        return
    old_spacing = np.array(ds.PixelSpacing, dtype=np.float64)  # (between rows, between columns)
    spacing = old_spacing * (old_rows / rows, old_cols / cols)
    ds.PixelSpacing = [DSfloat(v, auto_format=True) for v in spacing]
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        cosines = np.array(ds.ImageOrientationPatient, dtype=np.float64)
        along_row, along_column = cosines[:3], cosines[3:]
        change = (spacing - old_spacing) / 2
        position = np.array(ds.ImagePositionPatient, dtype=np.float64)
        position += change[1] * along_row + change[0] * along_column
        ds.ImagePositionPatient = [DSfloat(v, auto_format=True) for v in position]


def _keep_window(ds: Dataset) -> None:
    """The template's display window (in HU, so still right with slope 1), else soft tissue."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        ds.WindowCenter, ds.WindowWidth = SOFT_TISSUE_WINDOW


def _set_pixels(ds: Dataset, hu: np.ndarray) -> None:
    pixels = np.round(np.clip(hu, -32768, 32767)).astype(np.int16)
    for tag in STORED_VALUE_TAGS:
        if tag in ds:
            delattr(ds, tag)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"  # the template was read without pixels: nothing says which VR
