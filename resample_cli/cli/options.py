"""Options shared by the restoring commands, declared once.

Typer reads a command's options from its signature, so the commands are built with
``command_signature``: the task's own parameters followed by these.

Only the standard library and typer here: ``--help`` and ``--version`` read these
declarations, and must not wait for torch.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

# The prior each task uses without --model.
DEFAULT_MODELS = {
    "deblur": "celebahq",
    "superres": "celebahq",
    "inpaint": "celebahq",
    "nonlinear-deblur": "celebahq",
    "ct": "ct-ellipses",
}
# The prior shipped inside the package for each task: what to try when --model cannot be had.
BUNDLED_MODELS = {task: "ct-ellipses" if task == "ct" else "dead-leaves" for task in DEFAULT_MODELS}
# Simulated noise std without --noise: the paper's 0.01 on [-1, 1] for images; none for CT
# (sinogram units, whose scale depends on the image size).
DEFAULT_NOISE = {"deblur": 0.005, "superres": 0.005, "inpaint": 0.005, "nonlinear-deblur": 0.005, "ct": 0.0}


class Preset(str, Enum):
    paper = "paper"
    fast = "fast"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> int:
    """Torch's CPU threads without --threads: half the CPUs, at most 4. Torch's own choice,
    one thread per core, spins idle threads on the many small operations of a restoration
    (FFTs, CG solves, small convolutions): on a 2-core machine it cost about 5 times the
    CPU time of one thread for the same wall time. Half the CPUs leaves the rest to other
    jobs and to hyper-threading siblings; beyond 4 threads these workloads gain little."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, min(4, cpus // 2))


def positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def odd(value: int) -> int:
    """A Gaussian kernel needs a middle pixel: refuse an even width while parsing."""
    if value % 2 == 0:
        raise typer.BadParameter(f"must be odd, got {value}")
    return value


def require_existing(path: Path | None, param_hint: str) -> None:
    """A file or folder option that names nothing is a usage error, found before any work."""
    if path is not None and not path.exists():
        raise typer.BadParameter(f"{path}: no such file or folder", param_hint=param_hint)


# CT noise is easier to state relative to the data: sinogram values grow with the image size.
RelativeNoise = Annotated[
    float | None,
    typer.Option(
        callback=positive,
        help="CT noise std as a fraction of each sinogram's maximum (0.01 = 1 %), instead of --noise.",
        show_default=False,
    ),
]


def given_options(ctx: typer.Context) -> set[str]:
    """The names of the parameters given on the command line, not left at their defaults."""
    # By name: Typer may vendor its own click, whose ParameterSource is another enum.
    return {
        name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }


def check_one_noise(ctx: typer.Context, relative_noise: float | None) -> None:
    """Refuse --noise with --relative-noise: both set the noise std, and picking one silently hides a typo."""
    if relative_noise is not None and "noise" in given_options(ctx):
        raise typer.BadParameter(
            "give either --noise or --relative-noise, not both", param_hint="--relative-noise"
        )


@dataclass(frozen=True)
class CommonOptions:
    model: str | None
    revision: str | None
    preset: Preset
    steps: int | None
    noise: float
    seed: int
    samples: int
    batch_size: int | None
    device: Device
    dtype: DType
    threads: int | None
    output_dir: Path
    suffix: str
    skip_existing: bool
    overwrite: bool
    reference: Path | None
    plot: bool
    quiet: bool
    json: bool


def _kw(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


COMMON = "Common options"

COMMON_PARAMETERS = [
    _kw(
        "model",
        Annotated[
            str | None,
            typer.Option(
                help="Prior: a registry name (see `resample models list`), a Hub repo id, or a local folder "
                "in the diffusers layout. [default: the task's default model]",
                rich_help_panel=COMMON,
            ),
        ],
        None,
    ),
    _kw(
        "revision",
        Annotated[
            str | None,
            typer.Option(
                help="Hub revision (commit, branch or tag) of --model; default: the registry's pinned commit.",
                rich_help_panel=COMMON,
            ),
        ],
        None,
    ),
    _kw(
        "preset",
        Annotated[
            Preset,
            typer.Option(
                help="Solver settings: 'paper' reproduces the authors' code (slow); 'fast' is this tool's cheaper schedule.",
                rich_help_panel=COMMON,
            ),
        ],
        Preset.fast,
    ),
    _kw(
        "steps",
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="DDIM steps, overriding the preset's (paper: 500, fast: 50).",
                rich_help_panel=COMMON,
            ),
        ],
        None,
    ),
    _kw(
        "noise",
        Annotated[
            float,
            typer.Option(
                min=0.0,
                help="Measurement noise std sigma_y in [0, 1] image units (CT: sinogram units). Data consistency "
                "stops at a residual of sigma_y per measurement.",
                rich_help_panel=COMMON,
            ),
        ],
        0.005,
    ),
    _kw(
        "seed",
        Annotated[
            int,
            typer.Option(
                min=0,
                help="Random seed: same seed, input, model and device give the same output.",
                rich_help_panel=COMMON,
            ),
        ],
        0,
    ),
    _kw(
        "samples",
        Annotated[
            int,
            typer.Option(
                min=1,
                help="Posterior samples per input: their mean is written, and with K > 1 a per-pixel standard "
                "deviation map (NAME.std.png, NAME.std.npy).",
                rich_help_panel=COMMON,
            ),
        ],
        1,
    ),
    _kw(
        "batch_size",
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Samples run together in one batch. [default: all --samples at once]",
                rich_help_panel=COMMON,
            ),
        ],
        None,
    ),
    _kw(
        "device",
        Annotated[
            Device,
            typer.Option(
                help="Where the networks run: auto picks cuda, then mps, then cpu.", rich_help_panel=COMMON
            ),
        ],
        Device.auto,
    ),
    _kw(
        "dtype",
        Annotated[
            DType,
            typer.Option(
                help="Precision of the networks (autocast); the solves stay float32.", rich_help_panel=COMMON
            ),
        ],
        DType.float32,
    ),
    _kw(
        "threads",
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="CPU threads for torch (e.g. 1 per job when several share a machine). "
                "[default: half the CPUs, at most 4 (here "
                f"{default_threads()}); OMP_NUM_THREADS when it is set]",
                rich_help_panel=COMMON,
            ),
        ],
        None,
    ),
    _kw(
        "output_dir",
        Annotated[
            Path,
            typer.Option(
                "--output-dir",
                "-o",
                help="Folder for outputs and reports (created if missing).",
                rich_help_panel=COMMON,
            ),
        ],
        Path("restored"),
    ),
    _kw(
        "suffix",
        Annotated[
            str,
            typer.Option(
                help="Added to each output's name before its extension, e.g. '_restored'.",
                rich_help_panel=COMMON,
            ),
        ],
        "",
    ),
    _kw(
        "skip_existing",
        Annotated[
            bool, typer.Option(help="Skip inputs whose output already exists.", rich_help_panel=COMMON)
        ],
        False,
    ),
    _kw(
        "overwrite",
        Annotated[
            bool,
            typer.Option(
                help="Replace existing outputs. Without this or --skip-existing an existing output is an error.",
                rich_help_panel=COMMON,
            ),
        ],
        False,
    ),
    _kw(
        "reference",
        Annotated[
            Path | None,
            typer.Option(
                help="Clean image (one input) or a folder of them matched by name: PSNR and SSIM go into the report.",
                rich_help_panel=COMMON,
            ),
        ],
        None,
    ),
    _kw(
        "plot",
        Annotated[
            bool,
            typer.Option(
                help="Also write NAME.residual.png: the residual after each data-consistency step.",
                rich_help_panel=COMMON,
            ),
        ],
        False,
    ),
    _kw(
        "quiet",
        Annotated[
            bool,
            typer.Option(
                "--quiet", "-q", help="No progress bars or log lines, only errors.", rich_help_panel=COMMON
            ),
        ],
        False,
    ),
    _kw(
        "json",
        Annotated[
            bool,
            typer.Option(
                help="Print one JSON object per output on stdout (logs go to stderr).", rich_help_panel=COMMON
            ),
        ],
        False,
    ),
]


def command_signature(task_parameters: list[inspect.Parameter]) -> inspect.Signature:
    return inspect.Signature(task_parameters + COMMON_PARAMETERS)


def split_common(kwargs: dict) -> tuple[dict, CommonOptions]:
    """Separate a command's keyword arguments into its task's and the common ones."""
    names = {p.name for p in COMMON_PARAMETERS}
    common = CommonOptions(**{k: v for k, v in kwargs.items() if k in names})
    return {k: v for k, v in kwargs.items() if k not in names}, common
