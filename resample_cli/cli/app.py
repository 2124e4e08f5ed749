"""The ``resample`` command: five restoring tasks, ``simulate``, ``bench``, ``train-prior``
and ``models``.

The command modules declare options with the standard library and typer only, so that
``--version`` and ``--help`` answer at once; each command imports torch, the priors and
the solvers when it runs, and only once the checks that need no model have passed.
"""

from __future__ import annotations

import inspect
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import __version__
from .bench import bench
from .models import models_app
from .options import (
    CommonOptions,
    RelativeNoise,
    check_one_noise,
    command_signature,
    odd,
    positive,
    require_existing,
    split_common,
)
from .simulate import simulate_app
from .train import train_prior

if TYPE_CHECKING:
    from .batch import Batch

app = typer.Typer(
    name="resample",
    help="Restore images and reconstruct sparse-view CT with latent diffusion priors (ReSample, ICLR 2024).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(simulate_app, name="simulate")
app.add_typer(models_app, name="models")
app.command("train-prior")(train_prior)
app.command("bench")(bench)

KW = inspect.Parameter.KEYWORD_ONLY


def _param(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, KW, default=default, annotation=annotation)


INPUTS = inspect.Parameter(
    "inputs",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[
        list[Path],
        typer.Argument(help="Input files, folders or glob patterns.", show_default=False, metavar="INPUT..."),
    ],
)


def restoring_command(name: str, help_text: str, task_parameters: list[inspect.Parameter]):
    """Register a command whose signature is INPUT..., the task's options, then the
    common options; the decorated function takes the task's options and ``common``
    (``CommonOptions``) as keywords and returns the exit code."""

    def register(body):
        def command(**kwargs):
            task_kwargs, common = split_common(kwargs)
            code = body(common=common, **task_kwargs)
            raise typer.Exit(code)

        command.__signature__ = command_signature([INPUTS, *task_parameters])
        command.__doc__ = help_text
        app.command(name)(command)
        return body

    return register


def _plan_images(
    task: str,
    inputs: list[Path],
    common: CommonOptions,
    *,
    scale: int = 1,
    mask: Path | None = None,
    reads: dict[str, Path | None] | None = None,
) -> Batch:
    """An image task's batch, planned from the files alone (no torch): the restoration is
    ``scale`` times the input's size, and with ``mask`` each input's mask must fit it.
    ``reads``: the files the task's options name, which no output may replace."""
    from ..io.images import image_size
    from .batch import TaskChecks, plan_batch
    from .files import IMAGE_INPUTS, check_mask_fits
    from .writers import ImageWriter

    def restored_size(path: Path) -> tuple[int, int]:
        h, w = image_size(path)
        return h * scale, w * scale

    checks = TaskChecks(
        restored_size=restored_size,
        check_input=None if mask is None else partial(check_mask_fits, mask=mask),
        reads={**(reads or {}), **({"--mask": mask} if mask is not None else {})},
    )
    return plan_batch(task, inputs, IMAGE_INPUTS, ImageWriter(), common, checks)


# Each body plans its batch first: with nothing left to restore (every input skipped or
# refused) it ends there, without torch or a model. Only then does it import the task's
# operators and the batch loop, and build the operator, whose errors are usage errors.


@restoring_command(
    "deblur",
    "Deblur images: Gaussian blur of std --sigma (pixels), or a motion-blur kernel read from --kernel.",
    [
        _param(
            "sigma",
            Annotated[float, typer.Option(callback=positive, help="Gaussian blur std in pixels (> 0).")],
            3.0,
        ),
        _param(
            "kernel_size",
            Annotated[int, typer.Option(min=1, callback=odd, help="Gaussian kernel width in pixels (odd).")],
            61,
        ),
        _param(
            "kernel",
            Annotated[
                Path | None,
                typer.Option(help="Blur kernel file (.npy or image), scaled to sum 1; replaces --sigma."),
            ],
            None,
        ),
    ],
)
def deblur(*, inputs, sigma, kernel_size, kernel, common):
    require_existing(kernel, "--kernel")
    batch = _plan_images("deblur", inputs, common, reads={"--kernel": kernel})
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import run_restore
    from .tasks import blur_operator, image_measurement

    op = blur_operator(sigma, kernel_size, kernel)
    return run_restore(batch, lambda path: image_measurement(path, lambda hw: op))


@restoring_command(
    "superres",
    "Super-resolve images by an integer --scale (antialiased bicubic downsampling model).",
    [_param("scale", Annotated[int, typer.Option(min=2, help="Upsampling factor, an integer >= 2.")], 4)],
)
def superres(*, inputs, scale, common):
    batch = _plan_images("superres", inputs, common, scale=scale)
    if not batch.to_restore:
        return batch.finish_without_model()
    from ..operators import BicubicDownsample
    from .restore import run_restore
    from .tasks import image_measurement

    op = BicubicDownsample(scale)
    return run_restore(batch, lambda path: image_measurement(path, lambda hw: op, scale))


@restoring_command(
    "inpaint",
    "Fill in the missing pixels of images given a mask (white / 1 = observed).",
    [
        _param(
            "mask",
            Annotated[
                Path,
                typer.Option(
                    help="Mask image (white = observed) or .npy bool/0-1 array; or a folder of masks matched by name "
                    "(NAME.mask.png or NAME.png).",
                    show_default=False,
                ),
            ],
        ),
    ],
)
def inpaint(*, inputs, mask, common):
    require_existing(mask, "--mask")
    batch = _plan_images("inpaint", inputs, common, mask=mask)
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import run_restore
    from .tasks import inpainting_measurement

    return run_restore(batch, lambda path: inpainting_measurement(path, mask))


@restoring_command(
    "nonlinear-deblur",
    "Deblur images through a nonlinear forward model: the built-in nonlinear blur, or your own module.",
    [
        _param(
            "operator",
            Annotated[
                str | None,
                typer.Option(
                    help="Forward model as 'package.module:Class' (a differentiable torch module on [0, 1] images). "
                    "[default: the built-in NonlinearBlur]"
                ),
            ],
            None,
        ),
        _param(
            "operator_arg",
            Annotated[
                list[str] | None,
                typer.Option(
                    help="key=value keyword argument for the operator (repeatable; values parsed as JSON when possible)."
                ),
            ],
            None,
        ),
    ],
)
def nonlinear_deblur(*, inputs, operator, operator_arg, common):
    batch = _plan_images("nonlinear-deblur", inputs, common)
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import run_restore
    from .tasks import image_measurement, nonlinear_operator

    try:
        op = nonlinear_operator(operator, operator_arg or [])
    except (ValueError, ImportError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--operator") from None
    return run_restore(batch, lambda path: image_measurement(path, lambda hw: op))


class AngleUnit(str, Enum):
    deg = "deg"
    rad = "rad"


class SinoLayout(str, Enum):
    angles_first = "angles-first"
    det_first = "det-first"


@restoring_command(
    "ct",
    "Reconstruct sparse-view parallel-beam CT from sinograms (.npy 2-D, or .npz with 'sinogram' and optional "
    "'angles').",
    [
        _param("ctx", typer.Context),
        _param(
            "angles",
            Annotated[
                int | None,
                typer.Option(
                    min=1, help="Number of projection angles, equally spaced over [0, 180) degrees."
                ),
            ],
            None,
        ),
        _param(
            "angles_file",
            Annotated[
                Path | None,
                typer.Option(help="Text or .npy file of the projection angles (one per sinogram row)."),
            ],
            None,
        ),
        _param(
            "angle_unit",
            Annotated[AngleUnit, typer.Option(help="Unit of --angles-file and .npz angles.")],
            AngleUnit.deg,
        ),
        _param(
            "layout",
            Annotated[
                SinoLayout | None,
                typer.Option(
                    help="Sinogram axis order; inferred from the angle count when unambiguous. scikit-image's radon "
                    "returns det-first."
                ),
            ],
            None,
        ),
        _param(
            "image_size",
            Annotated[
                int | None,
                typer.Option(
                    min=2, help="Reconstructed image width in pixels. [default: the detector count]"
                ),
            ],
            None,
        ),
        _param("relative_noise", RelativeNoise, None),
        _param(
            "dicom_template",
            Annotated[
                Path | None,
                typer.Option(
                    help="CT DICOM slice, or a folder of them, for a derived DICOM output (NAME.dcm) that copies "
                    "its patient, study and slice tags. A folder's slices are matched to the inputs by the "
                    "SOPInstanceUID that `simulate ct` recorded, else by name."
                ),
            ],
            None,
        ),
    ],
)
def ct(
    *,
    ctx,
    inputs,
    angles,
    angles_file,
    angle_unit,
    layout,
    image_size,
    relative_noise,
    dicom_template,
    common,
):
    check_one_noise(ctx, relative_noise)
    if angles is not None and angles_file is not None:
        raise typer.BadParameter("give either --angles or --angles-file, not both", param_hint="--angles")
    require_existing(dicom_template, "--dicom-template")
    from ..io.errors import InputError
    from .options import given_options
    from .writers import CTWriter, DicomTemplates

    angle_values = None
    if angles_file is not None:
        from ..io.ct import read_angles_file

        try:
            angle_values = read_angles_file(angles_file)
        except InputError as err:
            raise typer.BadParameter(str(err), param_hint="--angles-file") from None
    try:
        templates = None if dicom_template is None else DicomTemplates.load(dicom_template)
    except InputError as err:  # a bad template is found before any solve, not after
        raise typer.BadParameter(str(err), param_hint="--dicom-template") from None
    from ..io.ct import clean_ct_size, read_sinogram
    from .batch import TaskChecks, plan_batch
    from .files import SINOGRAM_INPUTS

    read = partial(
        read_sinogram,
        angles=angle_values,
        n_angles=angles,
        angle_unit=angle_unit.value,
        layout=None if layout is None else layout.value,
        angles_source=None if angles_file is None else str(angles_file),
    )

    def restored_size(path: Path) -> tuple[int, int]:
        size = image_size or read(path).data.shape[1]
        return size, size

    # Reading each sinogram (numpy only) finds missing angles or a wrong layout before any model loads.
    checks = TaskChecks(
        restored_size=restored_size,
        reference_size=clean_ct_size,
        check_input=read,
        reads={"--dicom-template": dicom_template, "--angles-file": angles_file},
    )
    writer = CTWriter(templates)
    batch = plan_batch("ct", inputs, SINOGRAM_INPUTS, writer, common, checks)
    writer.match_templates(batch.to_restore)
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import run_restore
    from .tasks import ct_measurement, read_clean_ct

    prepare = partial(
        ct_measurement,
        angles=angle_values,
        n_angles=angles,
        angle_unit=angle_unit.value,
        layout=None if layout is None else layout.value,
        angles_source=None if angles_file is None else str(angles_file),
        image_size=image_size,
        noise=common.noise if "noise" in given_options(ctx) else None,  # else the .npz's, or the default
        relative_noise=relative_noise,
    )
    return run_restore(batch, prepare, read_reference=lambda path: read_clean_ct(path).data)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resample {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Restore images and reconstruct sparse-view CT with latent diffusion priors (ReSample)."""
