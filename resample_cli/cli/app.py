"""The ``resample`` command: five restoring tasks, ``simulate``, ``bench``, ``train-prior``
and ``models``.

The command modules declare options with the standard library and typer only, so that
``--version`` and ``--help`` answer at once; each command imports torch, the priors and
the solvers when it runs, and only once the checks that need no model have passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from .bench import bench
from .models import models_app
from .options import (
    COMMON_OPTIONS,
    CommonOptions,
    argument,
    check_one_noise,
    given_options,
    require_existing,
    split_common,
    takes,
)
from .simulate import simulate_app
from .task_options import TASK_OPTIONS, files_named
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

INPUTS = argument(
    "inputs",
    list[Path],
    help="Input files, folders or glob patterns.",
    show_default=False,
    metavar="INPUT...",
)


@dataclass(frozen=True)
class TaskCall:
    """What one restoring command was given."""

    task: str
    inputs: list[Path]
    options: dict[str, Any]  # the task's own options, by name
    common: CommonOptions
    given: set[str]  # the options given on the command line, not left at their defaults
    files: dict[str, Path | None]  # the files the task's options name, by flag: no output may replace one


def restoring_command(task: str, help_text: str) -> Callable[[Callable[[TaskCall], int]], Callable]:
    """Register ``resample TASK``, whose signature is INPUT..., the task's options
    (``TASK_OPTIONS``), then the common options; the decorated body takes the ``TaskCall``
    and returns the exit code."""
    task_options = TASK_OPTIONS[task].for_restoring()

    def register(body: Callable[[TaskCall], int]) -> Callable[[TaskCall], int]:
        @takes([INPUTS, *task_options, *COMMON_OPTIONS], context=True)
        def command(ctx: typer.Context, inputs: list[Path], **values: Any) -> None:
            options, common = split_common(values)
            given = given_options(ctx)
            check_one_noise(given, options.get("relative_noise"))
            call = TaskCall(task, inputs, options, common, given, files_named(task_options, options))
            raise typer.Exit(body(call))

        command.__doc__ = help_text
        app.command(task)(command)
        return body

    return register


def _plan_images(
    call: TaskCall, *, scale: int = 1, check_input: Callable[[Path], None] | None = None
) -> Batch:
    """An image task's batch, planned from the files alone (no torch): the restoration is
    ``scale`` times the input's size; ``check_input``, the task's own check of an input."""
    from ..fileio.images import image_size
    from .batch import TaskChecks, plan_batch
    from .files import IMAGE_INPUTS
    from .writers import ImageWriter

    def restored_size(path: Path) -> tuple[int, int]:
        h, w = image_size(path)
        return h * scale, w * scale

    checks = TaskChecks(restored_size=restored_size, check_input=check_input, reads=call.files)
    return plan_batch(call.task, call.inputs, IMAGE_INPUTS, ImageWriter(), call.common, checks)


# Each body plans its batch first: with nothing left to restore (every input skipped or
# refused) it ends there, without torch or a model. Only then does it import the task's
# operators and the batch loop, and build the operator, whose errors are usage errors.


def _restore_images(call: TaskCall, scale: int = 1) -> int:
    """An image task whose forward model is the same for every input."""
    batch = _plan_images(call, scale=scale)
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import check_solver_takes, run_restore
    from .tasks import image_measurement, task_operator

    op = task_operator(call.task, call.options)
    check_solver_takes(call.common.solver.value, op)
    return run_restore(batch, lambda path: image_measurement(path, lambda hw: op, scale))


@restoring_command(
    "deblur",
    "Deblur images: Gaussian blur of std --sigma (pixels), or a motion-blur kernel read from --kernel.",
)
def deblur(call: TaskCall) -> int:
    require_existing(call.options["kernel"], "--kernel")
    return _restore_images(call)


@restoring_command(
    "superres", "Super-resolve images by an integer --scale (antialiased bicubic downsampling model)."
)
def superres(call: TaskCall) -> int:
    return _restore_images(call, scale=call.options["scale"])


@restoring_command("inpaint", "Fill in the missing pixels of images given a mask (white / 1 = observed).")
def inpaint(call: TaskCall) -> int:
    mask = call.options["mask"]
    require_existing(mask, "--mask")
    from .files import check_mask_fits

    batch = _plan_images(call, check_input=partial(check_mask_fits, mask=mask))
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import run_restore
    from .tasks import inpainting_measurement

    return run_restore(batch, lambda path: inpainting_measurement(path, mask))


@restoring_command(
    "nonlinear-deblur",
    "Deblur images through a nonlinear forward model: the built-in nonlinear blur, or your own module.",
)
def nonlinear_deblur(call: TaskCall) -> int:
    return _restore_images(call)


@restoring_command(
    "ct",
    "Reconstruct sparse-view parallel-beam CT from sinograms (.npy 2-D, or .npz with 'sinogram' and optional "
    "'angles'), or volumes of them: a 3-D .npy/.npz (slices, angles, detectors) or a folder of DICOM sinograms "
    "of one series.",
)
def ct(call: TaskCall) -> int:
    options = call.options
    angles, angles_file, dicom_template = options["angles"], options["angles_file"], options["dicom_template"]
    if angles is not None and angles_file is not None:
        raise typer.BadParameter("give either --angles or --angles-file, not both", param_hint="--angles")
    require_existing(dicom_template, "--dicom-template")
    from ..fileio.errors import InputError
    from .writers import CTWriter, DicomTemplates

    angle_values = None
    if angles_file is not None:
        from ..fileio.ct import read_angles_file

        try:
            angle_values = read_angles_file(angles_file)
        except InputError as err:
            raise typer.BadParameter(str(err), param_hint="--angles-file") from None
    try:
        templates = None if dicom_template is None else DicomTemplates.load(dicom_template)
    except InputError as err:  # a bad template is found before any solve, not after
        raise typer.BadParameter(str(err), param_hint="--dicom-template") from None
    from ..fileio.ct import clean_ct_size, read_sinogram
    from .batch import TaskChecks, plan_batch
    from .files import SINOGRAM_INPUTS

    read = partial(
        read_sinogram,
        angles=angle_values,
        n_angles=angles,
        angle_unit=options["angle_unit"].value,
        layout=None if options["layout"] is None else options["layout"].value,
        angles_source=None if angles_file is None else str(angles_file),
    )
    image_size = options["image_size"]

    def restored_size(path: Path) -> tuple[int, int]:
        size = image_size or read(path).data.shape[-1]
        return size, size

    # Reading each sinogram (numpy only) finds missing angles or a wrong layout before any model loads.
    checks = TaskChecks(
        restored_size=restored_size,
        reference_size=clean_ct_size,
        check_input=read,
        reads=call.files,
        series=True,
    )
    writer = CTWriter(templates)
    batch = plan_batch("ct", call.inputs, SINOGRAM_INPUTS, writer, call.common, checks)
    writer.match_templates(batch.to_restore)
    if not batch.to_restore:
        return batch.finish_without_model()
    from .restore import run_restore
    from .tasks import ct_measurement, read_clean_ct

    prepare = partial(
        ct_measurement,
        read=read,
        image_size=image_size,
        noise=call.common.noise if "noise" in call.given else None,  # else the .npz's, or the default
        relative_noise=options["relative_noise"],
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
