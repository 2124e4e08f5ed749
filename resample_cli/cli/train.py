"""``resample train-prior``: train or fine-tune a latent diffusion prior (see
``resample_cli.training``). Register with ``app.command("train-prior")(train_prior)``.

The options are the training settings (``resample_cli.train_settings``: each field with its
default and help, declared once), as a command line takes them, and three of the run's own;
the settings' options also make the call of ``TrainConfig`` and the command line that the
model card records. ``resample_cli.training`` imports torch, and is imported when a training
starts."""

from __future__ import annotations

import dataclasses
import functools
import shlex
import time
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

import typer

from ..distributed import launched
from ..fileio.errors import InputError
from ..messages import format_duration
from ..train_settings import RUN, SyntheticKind, TrainSettings
from .options import COMMON, Device, Option, option, options_of, takes

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..training import TrainConfig, TrainProgress, TrainResult
    from .console import Output

LOG_EVERY_S = 60.0  # without a terminal, a progress line at most this often
SETTING_TYPES = get_type_hints(TrainSettings)


@functools.cache
def choices(literal: Any) -> type[Enum]:
    """The values of a ``Literal`` as the Enum typer offers them from."""
    return Enum("Choice", {value: value for value in get_args(literal)}, type=str)


Synthetic = choices(SyntheticKind)  # resample_cli.training.data.SYNTHETIC_KINDS


def _widths(value: str) -> None:
    try:
        widths = [int(w) for w in value.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated integers like 32,64,64, got {value!r}") from None
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be positive integers, got {value!r}")


def _literal_of(type_: Any) -> Any:
    """The ``Literal`` a setting's type is (or is with None), else None."""
    if get_origin(type_) is Literal:
        return type_
    if get_origin(type_) is Union:
        return next((arg for arg in get_args(type_) if get_origin(arg) is Literal), None)
    return None


def command_line_option(setting: Option) -> Option:
    """A setting's option as a command line spells it: the device with 'auto', a choice
    of words as an Enum, and widths as comma-separated numbers."""
    if setting.name == "device":
        return setting.but(type=Device, default=Device.auto)
    if setting.type == tuple[int, ...]:
        return setting.but(type=str, default=",".join(map(str, setting.default)), check=_widths)
    literal = _literal_of(setting.type)
    if literal is None:
        return setting
    enum = choices(literal)
    if setting.default is None:
        return setting.but(type=enum | None)
    return setting.but(type=enum, default=enum(setting.default))


SETTINGS = [command_line_option(o) for o in options_of(TrainSettings)]
RUN_OPTIONS = [
    option(
        "resume",
        bool,
        False,
        help="Continue from the newest checkpoint in OUT/checkpoints (start afresh if there is none). Settings "
        "must match; step counts may be raised.",
        rich_help_panel=RUN,
    ),
    COMMON["threads"].but(help="CPU threads for torch. [default: torch's choice]", rich_help_panel=RUN),
    COMMON["quiet"].but(rich_help_panel=RUN),
]
# The options that shape new networks; a --base run takes its networks from the base instead.
NETWORK_SETTINGS = {f.name for f in dataclasses.fields(TrainSettings) if f.metadata.get("network")}
BASE_ARCHITECTURE_FLAGS = tuple(o.flag for o in SETTINGS if o.name in NETWORK_SETTINGS)


@takes([*SETTINGS, *RUN_OPTIONS])
def train_prior(resume: bool, threads: int | None, quiet: bool, **settings: Any) -> None:
    """Train a latent diffusion prior (autoencoder, then noise-prediction UNet) on a folder of images or
    DICOM slices or on synthetic data, or fine-tune one with --base; saved in the layout --model reads."""
    if (settings["data"] is None) == (settings["synthetic"] is None):
        raise typer.BadParameter(
            "give exactly one of --data FOLDER and --synthetic KIND", param_hint="--data"
        )
    import torch

    from .console import Output

    launch = launched()
    out = Output(quiet=quiet or (launch is not None and launch.rank != 0))  # under torchrun rank 0 speaks
    if threads is not None:
        torch.set_num_threads(threads)
    config = train_config(settings)
    result = _train(config, resume, out)
    losses = ", ".join(f"{stage} {value:.4g}" for stage, value in result.final_losses.items())
    out.log(
        f"saved the prior in {result.output} ({result.weights_bytes / 1e6:.2f} MB): final losses {losses}; "
        f"autoencoder PSNR {result.ae_psnr:.2f} dB; latent scale {result.latent_scale:.4g}; "
        f"{format_duration(result.wall_time_s, compact=True)}; samples {result.sample_grid}"
    )


def train_config(values: dict[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` of the settings' option values; one it refuses is a usage error."""
    from ..training import TrainConfig, TrainingError
    from .restore import resolve_device

    def setting(name: str, value: Any) -> Any:
        if name == "device":
            return str(resolve_device(value))
        if SETTING_TYPES[name] == tuple[int, ...]:
            return tuple(int(w) for w in value.split(","))
        return value.value if isinstance(value, Enum) else value

    config = TrainConfig(**{name: setting(name, value) for name, value in values.items()})
    try:
        config.validate()
    except TrainingError as err:
        raise typer.BadParameter(str(err)) from None
    return config


def _train(config: TrainConfig, resume: bool, out: Output) -> TrainResult:
    """Run the training with progress bars or log lines; the failures that end it as exits:
    1 for an error, 130 for Ctrl-C, whose message says how to continue."""
    from ..priors import PriorError
    from ..training import TrainingError
    from ..training.checkpoints import CHECKPOINTS, latest_checkpoint

    with out.progress() as bar:
        out.log(
            f"training into {config.output} on {config.device}: {config.ae_steps} autoencoder + "
            f"{config.unet_steps} UNet steps"
        )
        try:
            return run_training(
                config,
                resume=resume,
                callback=ProgressLog(out, bar, config.total_steps),
                command=command_line(config),
            )
        except KeyboardInterrupt:
            found = latest_checkpoint(config.output / CHECKPOINTS)
            kept = f"the last checkpoint ({found.name}) is kept" if found else "no checkpoint was written yet"
            out.error(f"interrupted; {kept}: run the same command with --resume to continue")
            raise typer.Exit(130) from None
        except (TrainingError, PriorError, InputError, ValueError) as err:
            out.error(str(err))
            raise typer.Exit(1) from None


class ProgressLog:
    """The training's progress reports, as a progress bar on a terminal, else a log line
    at most every ``LOG_EVERY_S`` seconds; the other events as log lines."""

    def __init__(self, out: Output, bar: Progress | None, total: int):
        self.out, self.bar = out, bar
        self.task = bar.add_task("starting", total=total) if bar is not None else None
        self.last_log = time.monotonic()

    def __call__(self, p: TrainProgress) -> None:
        if p.event == "saved":
            return  # the summary says it
        if p.event != "step":
            self.out.log(p.message)
        elif self.bar is not None:
            self.bar.update(self.task, completed=p.step, description=f"{p.stage} loss {p.loss:.4f}")
        elif time.monotonic() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.monotonic()
            self.out.log(
                f"step {p.step}/{p.total} {p.stage} loss {p.loss:.4f} eta {format_duration(p.eta_s, compact=True)}"
            )


def run_training(config: TrainConfig, **kwargs) -> TrainResult:
    """``resample_cli.training.train_prior``, imported when a training starts (it needs torch)."""
    from ..training import train_prior as train

    return train(config, **kwargs)


def command_line(config: TrainConfig) -> str:
    """The ``resample train-prior`` command that reproduces ``config``, every option spelled
    out but those a --base run does not use."""
    words = ["resample", "train-prior", str(config.output)]
    unused = NETWORK_SETTINGS if config.base is not None else set()
    for o in SETTINGS:
        value = getattr(config, o.name)
        if o.argument or o.name in unused or value is None or value is False:
            continue
        words += [o.flag] if value is True else [o.flag, _spelled(value)]
    return shlex.join(words)


def _spelled(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
