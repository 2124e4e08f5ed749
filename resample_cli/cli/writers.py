"""What each restoring task writes, and under which names.

No torch here: a batch names its outputs, to check which exist, before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..fileio.ct import (
    DerivedSeries,
    is_volume,
    new_derived_series,
    read_ct_header,
    read_dicom_sinograms,
    read_source_slice,
    sinogram_templates,
    slice_order,
    unit_to_hu,
    write_derived_dicom,
    write_derived_series,
)
from ..fileio.errors import InputError
from ..fileio.images import save_array, write_image
from .files import expand_inputs, stem_path
from .options import CommonOptions

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

    from .batch import PlannedInput
    from .restore import Measurement


class Writer:
    """Names and writes a task's outputs. Subclasses say which files an input yields."""

    def paths(self, source: Path, common: CommonOptions) -> dict[str, Path]:
        """The task's own outputs; the key "output" names the main one."""
        raise NotImplementedError

    def write(
        self,
        paths: dict[str, Path],
        image: np.ndarray,
        measurement: Measurement,
        source: Path,
        done: list[Path],
    ) -> None:
        """Write the outputs, appending each finished file to ``done``."""
        raise NotImplementedError


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


class DicomTemplates:
    """The slices of ``--dicom-template``: one file for every input, or a folder's slices,
    each matched to an input by the SOPInstanceUID its .npz records, else by name."""

    def __init__(self, option: Path, headers: dict[Path, Dataset]):
        self.option = option
        self.headers = headers  # each template's tags, without its pixels
        self._by_uid = {str(ds.get("SOPInstanceUID")): path for path, ds in headers.items()}

    @classmethod
    def load(cls, option: Path) -> DicomTemplates:
        """Read every template's tags; an unreadable or non-CT template, or a folder with no
        DICOM file, is an InputError (the command makes it a usage error)."""
        paths = expand_inputs([option], {".dcm"})
        if not paths:
            raise InputError(
                option, "no DICOM files here (.dcm, or without a suffix and with a DICM preamble)"
            )
        return cls(option, {path: read_ct_header(path) for path in paths})

    def match(self, source: Path, source_slice: dict | None) -> Path:
        """The template of the input ``source``, whose .npz recorded ``source_slice``."""
        if not self.option.is_dir():
            return self.option
        uid = (source_slice or {}).get("SOPInstanceUID")
        if uid in self._by_uid:
            return self._by_uid[uid]
        for path in self.headers:
            if path.stem == source.stem:
                return path
        recorded = f"SOPInstanceUID {uid} or " if uid else ""
        raise InputError(source, f"no template in {self.option} has its {recorded}name {source.stem}")


class CTWriter(Writer):
    """A PNG of the [0, 1] image (the HU window), a float32 .npy in HU, and with templates
    a derived DICOM slice. The slices derived from one source series in one run form one
    new series. A volume (``fileio.ct.is_volume``) gives its .npy in HU (slices, H, W)
    and, from a folder of DICOM sinograms or with a --dicom-template folder of as many
    slices, a derived series in the folder NAME_dicom."""

    def __init__(self, templates: DicomTemplates | None = None):
        self.templates = templates
        self._matched: dict[Path, tuple[Path, dict | None]] = {}  # input -> template, source slice
        self._series: dict[str, DerivedSeries] = {}  # source SeriesInstanceUID -> its derived series

    def paths(self, source: Path, common: CommonOptions) -> dict[str, Path]:
        if is_volume(source):
            paths = {"output": stem_path(source, common, ".npy")}
            if source.is_dir() or (self.templates is not None and self.templates.option.is_dir()):
                paths["series"] = stem_path(source, common, "_dicom")
            return paths
        paths = {"output": stem_path(source, common, ".png"), "hu": stem_path(source, common, ".npy")}
        if self.templates is not None:
            paths["dicom"] = stem_path(source, common, ".dcm")
        return paths

    def match_templates(self, planned: list[PlannedInput]) -> None:
        """Give each input its template before any model loads; an input with none fails."""
        if self.templates is None:
            return
        for item in planned:
            if is_volume(item.source):  # its series is matched when it is written
                continue
            try:
                source_slice = read_source_slice(item.source)
                self._matched[item.source] = (self.templates.match(item.source, source_slice), source_slice)
            except InputError as err:
                item.error = str(err)

    def write(self, paths, image, measurement, source, done) -> None:
        if image.ndim == 4:
            self._write_volume(paths, unit_to_hu(image[:, 0]), source, done)
            return
        write_image(paths["output"], image)
        done.append(paths["output"])
        hu = unit_to_hu(image[0])
        save_array(paths["hu"], hu)
        done.append(paths["hu"])
        if "dicom" in paths:
            template_path, source_slice = self._matched[source]
            template = self.templates.headers[template_path]
            write_derived_dicom(
                paths["dicom"],
                hu,
                template,
                self._series_of(template),
                source_slice=source_slice,
                derivation=f"ReSample reconstruction of {source.name}",
            )
            done.append(paths["dicom"])

    def _write_volume(self, paths, hu: np.ndarray, source: Path, done: list[Path]) -> None:
        save_array(paths["output"], hu)
        done.append(paths["output"])
        if "series" in paths:
            templates = self._volume_templates(source, hu.shape)
            write_derived_series(paths["series"], hu, templates, f"ReSample reconstruction of {source.name}")
            done.append(paths["series"])

    def _volume_templates(self, source: Path, shape: tuple[int, int, int]) -> list[Dataset]:
        """The template of each slice of a volume: its own DICOM sinograms' tags, else the
        --dicom-template folder's slices in their order, one per slice."""
        if source.is_dir():
            return sinogram_templates(read_dicom_sinograms(source, header_only=True)[1], shape[-1])
        ordered = [
            ds for path, ds in sorted(self.templates.headers.items(), key=lambda item: slice_order(*item))
        ]
        if len(ordered) != shape[0]:
            raise InputError(
                source,
                f"the volume has {shape[0]} slices but --dicom-template {self.templates.option} holds {len(ordered)}",
            )
        return ordered

    def _series_of(self, template: Dataset) -> DerivedSeries:
        key = str(template.get("SeriesInstanceUID", ""))
        if key not in self._series:
            self._series[key] = new_derived_series(template)
        return self._series[key]
