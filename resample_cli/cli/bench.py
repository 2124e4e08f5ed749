"""``resample bench TASK``: simulate measurements of clean images, run each solver on each,
and write a Markdown and a CSV table of quality, residual, cost, time and memory.

The command's options and the checks that need nothing else; the work is ``bench_run``,
imported when the command runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    COMMON_PARAMETERS,
    DEFAULT_MODELS,
    RelativeNoise,
    check_one_noise,
    given_options,
    odd,
    positive,
)
from .train import Synthetic

# resample_cli.bench.DEFAULT_TIKHONOV_LAM, written out: that module imports torch, and
# --help must not (tests/test_cli_startup.py checks that the two agree).
DEFAULT_TIKHONOV_LAM = 1e-2

Task = Enum("Task", {name: name for name in DEFAULT_MODELS}, type=str)

# The common options of the restoring commands that mean the same here.
_COMMON = {p.name: p.annotation for p in COMMON_PARAMETERS}
_DEFAULTS = {p.name: p.default for p in COMMON_PARAMETERS}
ModelOption = _COMMON["model"]
RevisionOption = _COMMON["revision"]
DeviceOption = _COMMON["device"]
DTypeOption = _COMMON["dtype"]
QuietOption = _COMMON["quiet"]

DATA, SOLVERS, TASK = "Data", "Solvers", "Task options"
# Which tasks each task option applies to; given for another task it is a usage error.
TASK_OPTIONS = {
    "sigma": ("deblur",),
    "kernel_size": ("deblur",),
    "kernel": ("deblur",),
    "scale": ("superres",),
    "missing": ("inpaint",),
    "box": ("inpaint",),
    "mask": ("inpaint",),
    "operator": ("nonlinear-deblur",),
    "operator_arg": ("nonlinear-deblur",),
    "angles": ("ct",),
    "angles_file": ("ct",),
    "relative_noise": ("ct",),
    "tv_weight": ("ct", "nonlinear-deblur"),
    "tikhonov_lam": ("deblur", "inpaint"),
}


def bench(
    ctx: typer.Context,
    task: Annotated[
        Task, typer.Argument(help="The inverse problem to benchmark.", show_default=False, metavar="TASK")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder (or files, globs) of clean images in [0, 1]; for ct also DICOM slices in HU. Each is "
            "measured as `resample simulate TASK` would (same noise for the same --seed and file name).",
            rich_help_panel=DATA,
        ),
    ] = None,
    synthetic: Annotated[
        Synthetic | None,
        typer.Option(
            help="Instead of --data: N built-in images, 'ellipses' (random ellipse phantoms) or 'dead-leaves' "
            "(occluding disks), drawn with --seed.",
            rich_help_panel=DATA,
        ),
    ] = None,
    n: Annotated[
        int, typer.Option("--n", min=1, help="Number of --synthetic images.", rich_help_panel=DATA)
    ] = 8,
    size: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Side of the --synthetic images in pixels. [default: the prior's training resolution]",
            rich_help_panel=DATA,
        ),
    ] = None,
    noise: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Measurement noise std sigma_y in [0, 1] image units (ct: sinogram units). [default: as "
            "`resample simulate`: 0.005, ct 0]",
            rich_help_panel=DATA,
        ),
    ] = None,
    relative_noise: RelativeNoise = None,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seed of the synthetic images, the measurement noise and the solvers.",
            rich_help_panel=DATA,
        ),
    ] = 0,
    solvers: Annotated[
        str,
        typer.Option(
            help="Comma-separated solvers: resample[:fast|paper], latent-dps[:fast|paper], psld[:fast|paper] "
            "(linear tasks only), and classical: the task's classical baselines (deblur, inpaint: tikhonov; "
            "superres: bicubic; ct: fbp, tv-ls; nonlinear-deblur: tv-ls), also by name. Presets default to fast.",
            rich_help_panel=SOLVERS,
        ),
    ] = "resample:fast,classical",
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="DDIM steps of every diffusion solver, overriding its preset's (resample 50/500, latent-dps "
            "and psld 100/1000 for fast/paper).",
            rich_help_panel=SOLVERS,
        ),
    ] = None,
    tv_weight: Annotated[
        float | None,
        typer.Option(
            callback=positive,
            help="Weight of the total variation in tv-ls (ct, nonlinear-deblur). [default: ct 1.0, "
            "nonlinear-deblur 0.001]",
            rich_help_panel=SOLVERS,
        ),
    ] = None,
    tikhonov_lam: Annotated[
        float,
        typer.Option(
            callback=positive,
            help="Weight lam of ||x - 0.5||^2 in tikhonov (deblur, inpaint).",
            rich_help_panel=SOLVERS,
        ),
    ] = DEFAULT_TIKHONOV_LAM,
    sigma: Annotated[
        float,
        typer.Option(callback=positive, help="deblur: Gaussian blur std in pixels.", rich_help_panel=TASK),
    ] = 3.0,
    kernel_size: Annotated[
        int,
        typer.Option(
            min=1, callback=odd, help="deblur: Gaussian kernel width in pixels (odd).", rich_help_panel=TASK
        ),
    ] = 61,
    kernel: Annotated[
        Path | None,
        typer.Option(
            help="deblur: blur kernel file (.npy or image), scaled to sum 1; replaces --sigma.",
            rich_help_panel=TASK,
        ),
    ] = None,
    scale: Annotated[
        int, typer.Option(min=2, help="superres: downsampling factor, an integer >= 2.", rich_help_panel=TASK)
    ] = 4,
    missing: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="inpaint: fraction of pixels missing, at random.", rich_help_panel=TASK
        ),
    ] = 0.7,
    box: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="inpaint: instead, a centred missing square of this side in pixels.",
            rich_help_panel=TASK,
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="inpaint: instead, a mask file (white = observed) or a folder of them matched by name.",
            rich_help_panel=TASK,
        ),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(
            help="nonlinear-deblur: forward model 'package.module:Class'. [default: the built-in NonlinearBlur]",
            rich_help_panel=TASK,
        ),
    ] = None,
    operator_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="nonlinear-deblur: key=value operator argument (repeatable).", rich_help_panel=TASK
        ),
    ] = None,
    angles: Annotated[
        int,
        typer.Option(
            min=1, help="ct: projection angles, equally spaced over [0, 180) degrees.", rich_help_panel=TASK
        ),
    ] = 25,
    angles_file: Annotated[
        Path | None,
        typer.Option(help="ct: instead, a text or .npy file of angles in degrees.", rich_help_panel=TASK),
    ] = None,
    model: ModelOption = None,
    revision: RevisionOption = None,
    device: DeviceOption = _DEFAULTS["device"],
    dtype: DTypeOption = _DEFAULTS["dtype"],
    output_dir: Annotated[
        Path,
        typer.Option("--output-dir", "-o", help="Folder for bench.md and bench.csv (created if missing)."),
    ] = Path("bench"),
    save_images: Annotated[
        bool, typer.Option(help="Also write each restoration as images/NAME.SOLVER.png in the output folder.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing bench files. Without it an existing one is an error.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Benchmark solvers on one task: simulate the measurements of clean images (--data) or built-in ones
    (--synthetic), run every solver on every image, and write bench.md and bench.csv: PSNR, SSIM, LPIPS,
    residual / (sigma_y sqrt(m)), UNet and decoder passes, seconds and peak memory per image, with the mean
    ± std over images."""
    _check_task_options(ctx, task.value, synthetic is not None)
    check_one_noise(ctx, relative_noise)
    if (data is None) == (synthetic is None):
        raise typer.BadParameter("give exactly one of --data DIR and --synthetic KIND", param_hint="--data")
    from .bench_run import run_benchmark  # torch, the solvers and the priors: only now

    code = run_benchmark(
        ctx.params,
        task=task.value,
        data=data,
        synthetic=synthetic,
        n=n,
        size=size,
        noise=noise,
        relative_noise=relative_noise,
        seed=seed,
        solvers=solvers,
        steps=steps,
        tv_weight=tv_weight,
        tikhonov_lam=tikhonov_lam,
        model=model,
        revision=revision,
        device=device,
        dtype=dtype.value,
        output_dir=output_dir,
        save_images=save_images,
        overwrite=overwrite,
        quiet=quiet,
    )
    raise typer.Exit(code)


def _check_task_options(ctx: typer.Context, task: str, synthetic: bool) -> None:
    """An option given for a task it does not apply to is a usage error, not silently ignored."""
    given = given_options(ctx)
    for name, tasks in TASK_OPTIONS.items():
        if name in given and task not in tasks:
            raise typer.BadParameter(
                f"applies to {' and '.join(tasks)} only, not {task}", param_hint=_flag(name)
            )
    for name in given & {"n", "size"}:
        if not synthetic:
            raise typer.BadParameter("applies to --synthetic images only", param_hint=_flag(name))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
