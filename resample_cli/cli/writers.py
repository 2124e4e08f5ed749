"""What each restoring task writes, and under which names.

No torch here: a batch names its outputs, to check which exist, before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..io.ct import unit_to_hu, write_derived_dicom
from ..io.images import save_array, write_image
from .files import stem_path
from .options import CommonOptions

if TYPE_CHECKING:
    import numpy as np

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
