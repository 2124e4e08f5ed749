"""How the commands declare their options, and the options the restoring commands share.

Typer reads a command's options from its signature. Each option is declared once, as an
``Option`` (its parameter name, type, default and ``typer.Option`` settings), and each
command gets its signature from the Options it takes (``takes``). A command in which an
option means something a little different (another default, help text or panel) takes
``option.but(...)``. A dataclass whose fields are options (``CommonOptions``, the training
settings) declares each field once with its option settings in ``metadata["option"]``;
``options_of`` reads them.

Only the standard library and typer here: ``--help`` and ``--version`` read these
declarations, and must not wait for torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from ..solvers import DEFAULT_SOLVER, SOLVER_NAMES, SOLVERS

REQUIRED = inspect.Parameter.empty  # an option or argument without a default must be given
Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class Option:
    """One command-line option (or argument), declared once.

    ``settings`` are ``typer.Option`` (or ``typer.Argument``) keywords, and ``check``, a
    function that raises ``ValueError`` for a value it refuses (typer gets it as a callback,
    the error as a usage error)."""

    name: str  # the parameter's name; spelled --name-with-dashes unless ``flags`` says otherwise
    type: Any
    default: Any = REQUIRED
    flags: tuple[str, ...] = ()
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    argument: bool = False

    @property
    def flag(self) -> str:
        """The option's long name on the command line, as usage errors name it."""
        return next((f for f in self.flags if f.startswith("--")), "--" + self.name.replace("_", "-"))

    @property
    def help(self) -> str:
        return self.settings.get("help", "")

    @property
    def names_a_file(self) -> bool:
        """Whether the option names a file the command reads (and so no output may replace)."""
        return self.type in (Path, Path | None)

    def but(self, **changes: Any) -> Option:
        """This option with some of its declaration changed: ``type``, ``default``, ``flags``,
        or any setting (``help``, ``rich_help_panel``, ...)."""
        own = {k: changes.pop(k) for k in ("type", "default", "flags") if k in changes}
        return dataclasses.replace(self, **own, settings={**self.settings, **changes})

    def as_field(self) -> Any:
        """This option as a field of a dataclass of options (``options_of``); the field's
        annotation is its type."""
        return declared(
            self.default, flags=self.flags, **self.settings, **({"argument": True} if self.argument else {})
        )

    def parameter(self) -> inspect.Parameter:
        """The parameter typer reads the option from."""
        settings = dict(self.settings)
        check = settings.pop("check", None)
        if check is not None:
            settings["callback"] = _callback(check)
        info = typer.Argument(**settings) if self.argument else typer.Option(*self.flags, **settings)
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.type, info],
        )


def option(
    name: str, type: Any, default: Any = REQUIRED, *, flags: tuple[str, ...] = (), **settings: Any
) -> Option:
    return Option(name, type, default, flags, settings)


def argument(name: str, type: Any, **settings: Any) -> Option:
    return Option(name, type, settings=settings, argument=True)


def _callback(check: Callable[[Any], None]) -> Callable[[Any], Any]:
    def callback(value: Any) -> Any:
        try:
            check(value)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        return value

    return callback


def declared(default: Any = REQUIRED, *, flags: tuple[str, ...] = (), **settings: Any) -> Any:
    """A dataclass field that is also an option (``options_of``): ``settings`` as ``Option``'s."""
    metadata = {"option": {**settings, **({"flags": flags} if flags else {})}}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options_of(cls: type) -> list[Option]:
    """The options a dataclass's fields declare in ``metadata["option"]`` (``flags``,
    ``argument``, and ``Option`` settings), in field order; fields without are left out."""
    hints = get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if "option" not in f.metadata:
            continue
        settings = dict(f.metadata["option"])
        flags = tuple(settings.pop("flags", ()))
        is_argument = settings.pop("argument", False)
        default = REQUIRED if f.default is dataclasses.MISSING else f.default
        found.append(Option(f.name, hints[f.name], default, flags, settings, is_argument))
    return found


CONTEXT = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def takes(options: Iterable[Option], context: bool = False) -> Callable[[Command], Command]:
    """Give a command the signature typer reads ``options`` from. The command is called with
    each option's value by name, and with ``context``, ``ctx`` (the ``typer.Context``) too."""
    parameters = [o.parameter() for o in options]

    def declare(command: Command) -> Command:
        command.__signature__ = inspect.Signature([CONTEXT, *parameters] if context else parameters)
        return command

    return declare


def by_name(options: Iterable[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}


def given_options(ctx: typer.Context) -> set[str]:
    """The names of the parameters given on the command line, not left at their defaults."""
    # By name: Typer may vendor its own click, whose ParameterSource is another enum.
    return {
        name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }


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


# --solver's choices: the registry's names (``resample_cli.solvers`` imports no torch).
Solver = Enum("Solver", {name: name for name in SOLVER_NAMES}, type=str)
SOLVER_HELP = (
    "The diffusion solver: "
    + "; ".join(f"{e.name} ({e.summary})" for e in SOLVERS.values())
    + f". [default: {DEFAULT_SOLVER}]"
)


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


# Checks (``Option``'s ``check``): they raise ValueError for a value they refuse.


def positive(value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"must be > 0, got {value}")


def odd(value: int) -> None:
    """A Gaussian kernel needs a middle pixel: refuse an even width while parsing."""
    if value % 2 == 0:
        raise ValueError(f"must be odd, got {value}")


def check_shard(value: str | None) -> None:
    if value is not None:
        parse_shard(value)


def parse_shard(value: str) -> tuple[int, int]:
    """--shard K/N as (K - 1, N): the 0-based index of the share and the number of shares."""
    k, sep, n = value.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"{value!r} is not K/N with 1 <= K <= N (e.g. 2/4)")
    return int(k) - 1, int(n)


def require_existing(path: Path | None, param_hint: str) -> None:
    """A file or folder option that names nothing is a usage error, found before any work."""
    if path is not None and not path.exists():
        raise typer.BadParameter(f"{path}: no such file or folder", param_hint=param_hint)


def check_one_noise(given: set[str], relative_noise: float | None) -> None:
    """Refuse --noise with --relative-noise: both set the noise std, and picking one silently hides a typo."""
    if relative_noise is not None and "noise" in given:
        raise typer.BadParameter(
            "give either --noise or --relative-noise, not both", param_hint="--relative-noise"
        )


COMMON_PANEL = "Common options"
PROMPT_PANEL = "Text-conditioned models"
# --noise's meaning wherever a command takes it; the restoring commands say more.
NOISE_HELP = "Measurement noise std sigma_y in [0, 1] image units (CT: sinogram units)."


@dataclass(frozen=True)
class CommonOptions:
    """The options every restoring command takes after its task's own: each field is one
    (``options_of``), and ``simulate``, ``bench`` and ``train-prior`` take some of them too."""

    model: str | None = declared(
        None,
        help="Prior: a registry name (see `resample models list`), a Hub repo id, or a local folder "
        "in the diffusers layout. [default: the task's default model]",
        rich_help_panel=COMMON_PANEL,
    )
    revision: str | None = declared(
        None,
        help="Hub revision (commit, branch or tag) of --model; default: the registry's pinned commit.",
        rich_help_panel=COMMON_PANEL,
    )
    prompt: str = declared(
        "",
        help="For a text-conditioned --model (Stable Diffusion layout): a prompt describing the image, e.g. "
        "'a photo of a dog on grass'; embedded once per run. [default: the empty prompt]",
        show_default=False,
        rich_help_panel=PROMPT_PANEL,
    )
    negative_prompt: str = declared(
        "",
        help="What the image is not, for classifier-free guidance (needs --guidance-scale above 1).",
        show_default=False,
        rich_help_panel=PROMPT_PANEL,
    )
    guidance_scale: float = declared(
        1.0,
        min=1.0,
        help="Classifier-free guidance w: eps = eps(negative) + w (eps(prompt) - eps(negative)). 1 is none, "
        "one UNet pass per step; above 1 each step takes two.",
        rich_help_panel=PROMPT_PANEL,
    )
    gradient_checkpointing: bool = declared(
        False,
        help="Recompute the networks' activations in backward passes instead of keeping them (diffusers' own "
        "switch): the same result in less memory and more time, e.g. Stable Diffusion's decoder at 512x512.",
        rich_help_panel=COMMON_PANEL,
    )
    solver: Solver = declared(
        Solver(DEFAULT_SOLVER),
        help=SOLVER_HELP,
        show_default=False,
        rich_help_panel=COMMON_PANEL,
    )
    preset: str = declared(
        "fast",
        help="Settings of the chosen --solver, by name. Every solver has 'paper' (its authors' code as published; "
        "slow) and 'fast' (cheaper: fewer steps; for resample this tool's own schedule); resample also has "
        "'lean' (at most 30 decoder backward passes; for priors that fit the data, such as CT). "
        "See README 'Solvers and presets'. A preset the solver does not have is an error naming its presets.",
        rich_help_panel=COMMON_PANEL,
    )
    steps: int | None = declared(
        None,
        min=1,
        help="Sampling steps of the chosen --solver, overriding its preset's (resample: paper: 500, fast: 50).",
        rich_help_panel=COMMON_PANEL,
    )
    noise: float = declared(
        0.005,
        min=0.0,
        help=f"{NOISE_HELP} Data consistency stops at a residual of sigma_y per measurement.",
        rich_help_panel=COMMON_PANEL,
    )
    seed: int = declared(
        0,
        min=0,
        help="Random seed: same seed, input name, model and device give the same output, whatever "
        "--batch-size, the order of the inputs, --shard or torchrun.",
        rich_help_panel=COMMON_PANEL,
    )
    samples: int = declared(
        1,
        min=1,
        help="Posterior samples per input: their mean is written, and with K > 1 a per-pixel standard "
        "deviation map (NAME.std.png, NAME.std.npy).",
        rich_help_panel=COMMON_PANEL,
    )
    batch_size: int | None = declared(
        None,
        min=1,
        help="Samples run together in one solver call: inputs of one shape and forward model share a call, "
        "B // --samples of them (or one input in calls of B samples). Results do not depend on it. "
        "[default: --samples, one input at a time]",
        rich_help_panel=COMMON_PANEL,
    )
    shard: str | None = declared(
        None,
        check=check_shard,
        help="K/N: restore only the K-th of N shares of the sorted inputs (K = 1..N), e.g. one job of a SLURM "
        "array each. Under torchrun each rank takes its share by itself.",
        rich_help_panel=COMMON_PANEL,
    )
    device: Device = declared(
        Device.auto,
        help="Where the networks run: auto picks cuda, then mps, then cpu.",
        rich_help_panel=COMMON_PANEL,
    )
    dtype: DType = declared(
        DType.float32,
        help="Precision of the networks (autocast); the solves stay float32.",
        rich_help_panel=COMMON_PANEL,
    )
    threads: int | None = declared(
        None,
        min=1,
        help="CPU threads for torch (e.g. 1 per job when several share a machine). "
        f"[default: half the CPUs, at most 4 (here {default_threads()}); OMP_NUM_THREADS when it is set]",
        rich_help_panel=COMMON_PANEL,
    )
    output_dir: Path = declared(
        Path("restored"),
        flags=("--output-dir", "-o"),
        help="Folder for outputs and reports (created if missing).",
        rich_help_panel=COMMON_PANEL,
    )
    suffix: str = declared(
        "",
        help="Added to each output's name before its extension, e.g. '_restored'.",
        rich_help_panel=COMMON_PANEL,
    )
    skip_existing: bool = declared(
        False, help="Skip inputs whose output already exists.", rich_help_panel=COMMON_PANEL
    )
    overwrite: bool = declared(
        False,
        help="Replace existing outputs. Without this or --skip-existing an existing output is an error.",
        rich_help_panel=COMMON_PANEL,
    )
    reference: Path | None = declared(
        None,
        help="Clean image (one input) or a folder of them matched by name: PSNR and SSIM go into the report.",
        rich_help_panel=COMMON_PANEL,
    )
    plot: bool = declared(
        False,
        help="Also write NAME.residual.png: the residual after each data-consistency step.",
        rich_help_panel=COMMON_PANEL,
    )
    quiet: bool = declared(
        False,
        flags=("--quiet", "-q"),
        help="No progress bars, log lines or warnings, only errors (warnings stay in the reports).",
        rich_help_panel=COMMON_PANEL,
    )
    json: bool = declared(
        False,
        help="Print one JSON object per output on stdout (logs go to stderr).",
        rich_help_panel=COMMON_PANEL,
    )


COMMON_OPTIONS = options_of(CommonOptions)
COMMON = by_name(COMMON_OPTIONS)  # for the other commands, which take some of them


def split_common(values: dict[str, Any]) -> tuple[dict[str, Any], CommonOptions]:
    """Separate a restoring command's option values into its task's and the common ones."""
    common = CommonOptions(**{name: values[name] for name in COMMON})
    return {k: v for k, v in values.items() if k not in COMMON}, common
