"""``resample bench TASK``: simulate measurements of clean images, run each solver on each,
and write a Markdown and a CSV table of quality, residual, cost, time and memory.

The command's options and the checks that need nothing else; the work is ``bench_run``,
imported when the command runs. Its task options are every task's (``task_options``, as
``simulate TASK`` takes them), each applying to its own task only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from ..solvers import SOLVERS as SOLVER_REGISTRY
from .options import (
    COMMON,
    DEFAULT_MODELS,
    DEFAULT_NOISE,
    NOISE_HELP,
    Device,
    DType,
    Option,
    argument,
    by_name,
    check_one_noise,
    declared,
    given_options,
    options_of,
    positive,
    takes,
)
from .task_options import TASK_OPTIONS
from .train import Synthetic

# resample_cli.bench.DEFAULT_TIKHONOV_LAM, written out: that module imports torch, and
# --help must not (tests/test_cli_startup.py checks that the two agree).
DEFAULT_TIKHONOV_LAM = 1e-2

Task = Enum("Task", {name: name for name in DEFAULT_MODELS}, type=str)

DATA, SOLVERS, TASK = "Data", "Solvers", "Task options"
TASK_ARGUMENT = argument(
    "task", Task, help="The inverse problem to benchmark.", show_default=False, metavar="TASK"
)


@dataclass(frozen=True)
class BenchOptions:
    """The options of ``resample bench`` but TASK and the task options: each field is one
    (``options_of``)."""

    data: Path | None = declared(
        None,
        help="Folder (or files, globs) of clean images in [0, 1]; for ct also DICOM slices in HU. Each is "
        "measured as `resample simulate TASK` would (same noise for the same --seed and file name).",
        rich_help_panel=DATA,
    )
    synthetic: Synthetic | None = declared(
        None,
        help="Instead of --data: N built-in images, 'ellipses' (random ellipse phantoms) or 'dead-leaves' "
        "(occluding disks), drawn with --seed.",
        rich_help_panel=DATA,
    )
    n: int = declared(8, flags=("--n",), min=1, help="Number of --synthetic images.", rich_help_panel=DATA)
    size: int | None = declared(
        None,
        min=8,
        help="Side of the --synthetic images in pixels. [default: the prior's training resolution]",
        rich_help_panel=DATA,
    )
    noise: float | None = (
        COMMON["noise"]
        .but(
            default=None,
            help=f"{NOISE_HELP} [default: as `resample simulate`: {DEFAULT_NOISE['deblur']:g}, ct "
            f"{DEFAULT_NOISE['ct']:g}]",
            rich_help_panel=DATA,
        )
        .as_field()
    )
    seed: int = (
        COMMON["seed"]
        .but(
            help="Seed of the synthetic images, the measurement noise and the solvers.", rich_help_panel=DATA
        )
        .as_field()
    )
    solvers: str = declared(
        "resample:fast,classical",
        help="Comma-separated solvers: the diffusion solvers of the restoring commands' --solver, "
        + ", ".join(
            f"{e.name}[:fast|paper]" + (" (linear tasks only)" if e.linear_only else "")
            for e in SOLVER_REGISTRY.values()
        )
        + " (presets default to fast), and classical: the task's classical baselines (deblur, inpaint: tikhonov; superres: bicubic; ct: fbp, "
        "tv-ls; nonlinear-deblur: tv-ls), also by name.",
        rich_help_panel=SOLVERS,
    )
    steps: int | None = (
        COMMON["steps"]
        .but(
            help="Sampling steps of every diffusion solver, overriding its preset's (resample: fast 50, "
            "paper 500).",
            rich_help_panel=SOLVERS,
        )
        .as_field()
    )
    tv_weight: float | None = declared(
        None,
        check=positive,
        help="Weight of the total variation in tv-ls (ct, nonlinear-deblur). [default: ct 1.0, "
        "nonlinear-deblur 0.001]",
        rich_help_panel=SOLVERS,
    )
    tikhonov_lam: float = declared(
        DEFAULT_TIKHONOV_LAM,
        check=positive,
        help="Weight lam of ||x - 0.5||^2 in tikhonov (deblur, inpaint).",
        rich_help_panel=SOLVERS,
    )
    model: str | None = (
        COMMON["model"]
        .but(
            help="Prior(s) of the diffusion solvers: a registry name, Hub repo id or folder; several, "
            "comma-separated, run side by side (e.g. a latent and a pixel-space prior), each row naming its "
            "model. [default: the task's default model]"
        )
        .as_field()
    )
    revision: str | None = COMMON["revision"].as_field()
    prompt: str = COMMON["prompt"].as_field()
    negative_prompt: str = COMMON["negative_prompt"].as_field()
    guidance_scale: float = COMMON["guidance_scale"].as_field()
    gradient_checkpointing: bool = COMMON["gradient_checkpointing"].as_field()
    device: Device = COMMON["device"].as_field()
    dtype: DType = COMMON["dtype"].as_field()
    output_dir: Path = (
        COMMON["output_dir"]
        .but(
            default=Path("bench"),
            help="Folder for bench.md and bench.csv (created if missing).",
            rich_help_panel=None,
        )
        .as_field()
    )
    save_images: bool = declared(
        False, help="Also write each restoration as images/NAME.SOLVER.png in the output folder."
    )
    overwrite: bool = (
        COMMON["overwrite"]
        .but(
            help="Replace existing bench files. Without it an existing one is an error.", rich_help_panel=None
        )
        .as_field()
    )
    quiet: bool = COMMON["quiet"].as_field()


def _every_task_option() -> tuple[list[Option], dict[str, tuple[str, ...]]]:
    """Every task's options, each once, its help saying which tasks it applies to; and
    those tasks, by option name."""
    first: dict[str, Option] = {}
    tasks: dict[str, tuple[str, ...]] = {}
    for task, group in TASK_OPTIONS.items():
        for o in group.for_measuring():
            first.setdefault(o.name, o)
            tasks[o.name] = (*tasks.get(o.name, ()), task)
    shown = [
        o.but(help=f"{', '.join(tasks[o.name])}: {o.help}", rich_help_panel=TASK) for o in first.values()
    ]
    return shown, tasks


BENCH_TASK_OPTIONS, TASKS_OF_TASK_OPTION = _every_task_option()
# Which tasks an option applies to; given for another task it is a usage error.
APPLIES_TO = {
    **TASKS_OF_TASK_OPTION,
    "tv_weight": ("ct", "nonlinear-deblur"),
    "tikhonov_lam": ("deblur", "inpaint"),
}
SYNTHETIC_ONLY = ("n", "size")  # options of the --synthetic images


def _bench_options() -> list[Option]:
    """TASK, then the options: the task options come after the solvers' (before --model)."""
    own = options_of(BenchOptions)
    at = [o.name for o in own].index("model")
    return [TASK_ARGUMENT, *own[:at], *BENCH_TASK_OPTIONS, *own[at:]]


BENCH_OPTIONS = _bench_options()
FLAGS = {name: o.flag for name, o in by_name(BENCH_OPTIONS).items()}


@takes(BENCH_OPTIONS, context=True)
def bench(ctx: typer.Context, task: Task, **values: Any) -> None:
    """Benchmark solvers on one task: simulate the measurements of clean images (--data) or built-in ones
    (--synthetic), run every solver on every image, and write bench.md and bench.csv: PSNR, SSIM, LPIPS,
    residual / (sigma_y sqrt(m)), UNet and decoder passes, seconds and peak memory per image, with the mean
    ± std over images."""
    task_options = {o.name: values.pop(o.name) for o in BENCH_TASK_OPTIONS}
    options = BenchOptions(**values)
    check_usage(task.value, given_options(ctx), options, task_options)
    from .bench_run import run_benchmark  # torch, the solvers and the priors: only now

    raise typer.Exit(run_benchmark(task.value, task_options, options))


def check_usage(task: str, given: set[str], options: BenchOptions, task_options: dict[str, Any]) -> None:
    """The usage errors found from the options alone: an option given for a task it does not
    apply to (not silently ignored), or for --synthetic images without them; --noise with
    --relative-noise; not exactly one of --data and --synthetic."""
    for name, tasks in APPLIES_TO.items():
        if name in given and task not in tasks:
            raise typer.BadParameter(
                f"applies to {' and '.join(tasks)} only, not {task}", param_hint=FLAGS[name]
            )
    if options.synthetic is None:
        for name in given.intersection(SYNTHETIC_ONLY):
            raise typer.BadParameter("applies to --synthetic images only", param_hint=FLAGS[name])
    check_one_noise(given, task_options["relative_noise"])
    if (options.data is None) == (options.synthetic is None):
        raise typer.BadParameter("give exactly one of --data DIR and --synthetic KIND", param_hint="--data")
