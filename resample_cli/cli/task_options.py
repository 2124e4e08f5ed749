"""The options of each task, declared once: ``resample TASK``, ``resample simulate TASK``
and ``resample bench TASK`` all take them from ``TASK_OPTIONS``, so a new task option is
one line here.

A task's options come in three groups (``TaskOptions``): ``shared``, which every command
of the task takes (the forward model); ``measuring``, how ``simulate`` and ``bench`` make
a measurement, which ``resample TASK`` reads with its input instead; and ``restoring``,
how ``resample TASK`` reads its input and what else it writes.

Only the standard library and typer here (see ``options``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .options import REQUIRED, Option, odd, option, positive


class AngleUnit(str, Enum):
    deg = "deg"
    rad = "rad"


class SinoLayout(str, Enum):
    angles_first = "angles-first"
    det_first = "det-first"


@dataclass(frozen=True)
class TaskOptions:
    shared: tuple[Option, ...] = ()
    measuring: tuple[Option, ...] = ()
    restoring: tuple[Option, ...] = ()
    # The shared options whose default ``resample TASK`` changes, by name.
    restoring_defaults: Mapping[str, Any] = field(default_factory=dict)

    def for_restoring(self) -> list[Option]:
        """What ``resample TASK`` takes."""
        defaults = self.restoring_defaults
        shared = [o.but(default=defaults[o.name]) if o.name in defaults else o for o in self.shared]
        return [*shared, *self.restoring]

    def for_measuring(self) -> list[Option]:
        """What ``resample simulate TASK`` and ``resample bench TASK`` take."""
        return [*self.measuring, *self.shared]


TASK_OPTIONS = {
    "deblur": TaskOptions(
        shared=(
            option("sigma", float, 3.0, check=positive, help="Gaussian blur std in pixels (> 0)."),
            option("kernel_size", int, 61, min=1, check=odd, help="Gaussian kernel width in pixels (odd)."),
            option(
                "kernel",
                Path | None,
                None,
                help="Blur kernel file (.npy or image), scaled to sum 1; replaces --sigma.",
            ),
        ),
    ),
    "superres": TaskOptions(
        shared=(
            option(
                "scale",
                int,
                4,
                min=2,
                help="Super-resolution factor, an integer >= 2: the measured image is this many times smaller.",
            ),
        ),
    ),
    "inpaint": TaskOptions(
        shared=(
            option(
                "mask",
                Path | None,
                None,
                show_default=False,
                help="Mask image (white = observed) or .npy bool/0-1 array; or a folder of masks matched by "
                "name (NAME.mask.png or NAME.png).",
            ),
        ),
        measuring=(
            option(
                "missing",
                float,
                0.7,
                min=0.0,
                max=1.0,
                help="Fraction of pixels missing, at random (without --box or --mask).",
            ),
            option(
                "box",
                int | None,
                None,
                min=1,
                help="Instead: a centred missing square of this side, in pixels.",
            ),
        ),
        restoring_defaults={"mask": REQUIRED},  # the input's missing pixels are the mask's
    ),
    "nonlinear-deblur": TaskOptions(
        shared=(
            option(
                "operator",
                str | None,
                None,
                help="Forward model as 'package.module:Class' (a differentiable torch module on [0, 1] images). "
                "[default: the built-in NonlinearBlur]",
            ),
            option(
                "operator_arg",
                list[str] | None,
                None,
                help="key=value keyword argument for the operator (repeatable; values parsed as JSON when possible).",
            ),
        ),
    ),
    "ct": TaskOptions(
        shared=(
            option(
                "angles",
                int | None,
                25,
                min=1,
                help="Number of projection angles, equally spaced over [0, 180) degrees.",
            ),
            option(
                "angles_file",
                Path | None,
                None,
                help="Instead of --angles: a text or .npy file of the projection angles in degrees, one per "
                "sinogram row.",
            ),
            # CT noise is easier to state relative to the data: sinogram values grow with the image size.
            option(
                "relative_noise",
                float | None,
                None,
                check=positive,
                show_default=False,
                help="CT noise std as a fraction of each sinogram's maximum (0.01 = 1 %), instead of --noise.",
            ),
        ),
        restoring=(
            option("angle_unit", AngleUnit, AngleUnit.deg, help="Unit of --angles-file and .npz angles."),
            option(
                "layout",
                SinoLayout | None,
                None,
                help="Sinogram axis order; inferred from the angle count when unambiguous. scikit-image's radon "
                "returns det-first.",
            ),
            option(
                "image_size",
                int | None,
                None,
                min=2,
                help="Reconstructed image width in pixels. [default: the detector count]",
            ),
            option(
                "dicom_template",
                Path | None,
                None,
                help="CT DICOM slice, or a folder of them, for a derived DICOM output (NAME.dcm) that copies "
                "its patient, study and slice tags. A folder's slices are matched to the inputs by the "
                "SOPInstanceUID that `simulate ct` recorded, else by name.",
            ),
        ),
        restoring_defaults={"angles": None},  # without it, the angles a .npz sinogram holds
    ),
}


def files_named(options: list[Option], values: Mapping[str, Any]) -> dict[str, Path | None]:
    """The files the options name, by flag ("--mask": path): the command reads them, so no
    output may replace one."""
    return {o.flag: values[o.name] for o in options if o.names_a_file}
