"""The batch loop shared by the restoring commands: inputs of one shape and forward
model restored together (--batch-size samples per solver call), outputs written
atomically, failures collected and reported at the end.

Imported only once a command has work to do (it imports torch and the priors); the
batch is planned, and the errors that need no model reported, in ``batch``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import typer
from rich.progress import Progress

from .. import pipeline
from ..devices import DeviceUnavailableError
from ..devices import resolve_device as torch_device
from ..distributed import join, launched
from ..fileio.errors import InputError
from ..fileio.images import read_image, write_image
from ..messages import first_line
from ..metrics import psnr, ssim
from ..operators.base import Operator
from ..priors import PriorError, load_prior
from ..priors.base import LatentPrior
from ..report import plot_residuals, write_report
from ..solvers import SolverConfig, solver_config, solver_entry, solver_named
from ..solvers.resample import ReSampleConfig, StepInfo, dc_schedule
from .batch import Batch, PlannedInput
from .conditioning import chosen_prompt, ready_prior
from .console import Output, ScheduleEta, batch_remaining
from .files import check_output_dir
from .fit import warn_if_poor_fit
from .options import BUNDLED_MODELS, DEFAULT_MODELS, CommonOptions, Device, default_threads


@dataclass
class Measurement:
    """What a task makes of one input file."""

    y: torch.Tensor  # (1, ...) float32
    operator: Operator
    image_shape: tuple[int, int, int]  # (C, H, W) of the image to restore
    bit_depth: int = 8
    extra: dict | None = None  # task-specific facts for the report (e.g. CT angles)
    sigma_y: float | None = None  # this input's noise std, when it replaces --noise


def resolve_device(device: Device) -> torch.device:
    """``--device`` as a torch device; one torch cannot use here is a usage error (exit 2)."""
    try:
        return torch_device(device)
    except DeviceUnavailableError as err:
        raise typer.BadParameter(str(err), param_hint="--device") from None


@dataclass(frozen=True)
class ChosenSolver:
    """The solver --solver names, with its config: its own --preset, --steps over it."""

    name: str
    solve: Callable[..., object]
    config: SolverConfig


def chosen_solver(common: CommonOptions) -> ChosenSolver:
    """--solver, --preset and --steps as the solver to run; a preset that solver does not
    have is a usage error (exit 2) naming its presets, found before any model loads."""
    name = common.solver.value
    overrides = {"steps": common.steps} if common.steps else {}
    try:
        config = solver_config(name, common.preset, **overrides)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--preset") from None
    solve, _ = solver_named(name)
    return ChosenSolver(name, solve, config)


def check_solver_takes(name: str, operator: Operator) -> None:
    """A solver that cannot run with the task's forward model (PSLD with a nonlinear one)
    is a usage error (exit 2), found before any model loads."""
    why = solver_entry(name).refuses(operator.linear)
    if why is not None:
        raise typer.BadParameter(f"{why}; {type(operator).__name__} is not linear", param_hint="--solver")


def run_restore(
    batch: Batch,
    prepare: Callable[[Path], Measurement],
    read_reference: Callable[[Path], np.ndarray] = lambda p: read_image(p).data,
) -> int:
    """Restore the inputs ``batch`` planned to; return the exit code (0 all written,
    1 some failed). --solver and --preset's usage errors come first; the inputs planning
    refused or skipped are reported before the model loads; every input gets a JSON
    record. Ctrl-C ends the batch with its summary line and exit code 130, leaving no
    partial outputs."""
    common = batch.common
    solver = chosen_solver(common)
    prompt = chosen_prompt(common.prompt, common.negative_prompt, common.guidance_scale)
    device = resolve_device(common.device)
    launch = launched()
    if launch is not None:
        device = join(launch, device)
    _set_threads(common.threads)
    out = Output(quiet=common.quiet, json_lines=common.json)
    tally = _Tally(pending=list(batch.to_restore))
    try:
        batch.report_planned(out)
        try:
            check_output_dir(common.output_dir)
            prior = _load_model(batch, device, out)
            ready_prior(prior, prompt, common.gradient_checkpointing, solver.name)
        except (InputError, PriorError) as err:  # every input fails: one error line, one record each
            return _fail_all(batch, out, tally, str(err))
        return _BatchRun(batch, prepare, read_reference, prior, out, tally, solver).run()
    except KeyboardInterrupt:
        out.error("interrupted; outputs of the input in hand were not written")
        not_restored = tally.close_pending(out, "interrupted")
        counts = batch.count_line(tally.written, len(batch.failures) + len(tally.failures))
        out.log(f"{counts}; interrupted with {not_restored} not restored")
        raise typer.Exit(130) from None


@dataclass
class _Tally:
    """How the batch stands: outputs written, failures, the inputs not yet reported."""

    pending: list[PlannedInput]
    written: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, out: Output, planned: PlannedInput, message: str) -> None:
        self.failures.append(message)
        out.error(message)
        self._record(out, planned, {"status": "failed", "error": message})

    def wrote(self, out: Output, planned: PlannedInput, report: dict) -> None:
        self.written += 1
        res = report["residual"]
        out.log(f"{planned.source} -> {planned.output}  residual/sigma_y = {_fmt(res['ratio'])}")
        warn_if_poor_fit(out, planned.source, report)
        paths = {"output": str(planned.output), "report": str(planned.outputs["report"])}
        fields = {"residual": res, "fit": report["fit"], "metrics": report.get("metrics")}
        self._record(out, planned, {"status": "written", **paths, **fields})

    def close_pending(self, out: Output, error: str) -> int:
        """A "failed" record with ``error`` for each input not reported yet; how many there were."""
        pending = list(self.pending)
        for planned in pending:
            self._record(out, planned, {"status": "failed", "error": error})
        return len(pending)

    def _record(self, out: Output, planned: PlannedInput, fields: dict) -> None:
        self.pending.remove(planned)
        out.record({"input": str(planned.source), **fields})


def _fail_all(batch: Batch, out: Output, tally: _Tally, message: str) -> int:
    """End a batch that a problem of no one input stopped (the model, the output folder):
    one error line, a "failed" record for each input, the closing line; exit code 1."""
    out.error(message)
    failed = tally.close_pending(out, message)
    return batch.summarise(out, tally.written, [message] * failed, listed=False)


def _set_threads(threads: int | None) -> None:
    """--threads, else the default (``default_threads``), unless OMP_NUM_THREADS, which
    torch reads itself, says otherwise."""
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(threads or default_threads())


def _load_model(batch: Batch, device: torch.device, out: Output) -> LatentPrior:
    """The batch's prior; a PriorError that also names the bundled prior to try."""
    spec = batch.common.model or DEFAULT_MODELS[batch.task]
    out.log(f"loading model {spec} on {device}")
    try:
        with warnings.catch_warnings():  # a model that cannot be had is one line, not the libraries' notes
            warnings.simplefilter("ignore")
            return load_prior(spec, revision=batch.common.revision, device=device)
    except PriorError as err:
        raise PriorError(_with_bundled_alternative(str(err), spec, batch.task)) from None


@dataclass
class _Prepared:
    """An input read and checked, waiting for the others of its pass."""

    planned: PlannedInput
    measurement: Measurement
    reference: np.ndarray | None
    sigma_y: float

    @property
    def slices(self) -> int:
        """The images this input restores: a volume's slices, else one."""
        return self.measurement.y.shape[0]

    def problems(self, seed: int, samples: int) -> list[pipeline.Problem]:
        """One problem per slice; a volume's slice i draws as the input named NAME#i."""
        name, y = self.planned.source.name, self.measurement.y
        names = [name] if self.slices == 1 else [f"{name}#{i}" for i in range(self.slices)]
        return [
            pipeline.Problem(y[i : i + 1], pipeline.sample_generators(seed, n, samples))
            for i, n in enumerate(names)
        ]


@dataclass
class _BatchRun:
    """The loop over the inputs to restore, once the model is loaded: inputs of one
    shape and forward model (``_pass_key``) are restored together, ``--batch-size``
    samples of them per solver call."""

    batch: Batch
    prepare: Callable[[Path], Measurement]
    read_reference: Callable[[Path], np.ndarray]
    prior: LatentPrior
    out: Output
    tally: _Tally
    solver: ChosenSolver
    autocast: torch.dtype | None = field(init=False)
    bars: _Bars = field(init=False)

    def __post_init__(self) -> None:
        dtype = self.batch.common.dtype.value
        self.autocast = None if dtype == "float32" else getattr(torch, dtype)

    @property
    def config(self) -> SolverConfig:
        return self.solver.config

    @property
    def rows_per_call(self) -> int:
        """Samples (of one input or several) per solver call."""
        return self.batch.common.batch_size or self.batch.common.samples

    def run(self) -> int:
        to_restore = self.batch.to_restore
        images_per_pass = max(1, self.rows_per_call // self.batch.common.samples)
        waiting: dict[Hashable, list[_Prepared]] = {}  # by _pass_key, each fewer images than a pass
        with self.out.progress() as bar:
            self.bars = _Bars(bar, self.batch.task, len(to_restore), self.config)
            for planned in to_restore:
                prepared = self.prepare_one(planned)
                if prepared is None:
                    continue
                key = _pass_key(prepared)
                group = waiting.setdefault(key, [])
                group.append(prepared)
                if sum(p.slices for p in group) >= images_per_pass:
                    self.restore_pass(waiting.pop(key))
            for group in waiting.values():
                self.restore_pass(group)
        return self.batch.summarise(self.out, self.tally.written, self.tally.failures)

    def prepare_one(self, planned: PlannedInput) -> _Prepared | None:
        """Read and check one input, or report it failed (None)."""
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                measurement = self.prepare(planned.source)
            for w in caught:
                self.out.warn(str(w.message))
            _check_shapes(planned.source, measurement)
            if measurement.y.shape[0] > 1 and self.batch.common.samples > 1:
                raise InputError(planned.source, "a volume is restored with one sample (--samples 1)")
            reference = None if planned.reference is None else self.read_reference(planned.reference)
        except (InputError, ValueError) as err:
            self.fail(planned, err)
            return None
        noise = self.batch.common.noise
        return _Prepared(
            planned, measurement, reference, noise if measurement.sigma_y is None else measurement.sigma_y
        )

    def fail(self, planned: PlannedInput, err: Exception) -> None:
        message = str(err) if isinstance(err, InputError) else f"{planned.source}: {err}"
        self.tally.fail(self.out, planned, message)
        self.bars.finish_input(restored=False)

    def restore_pass(self, group: list[_Prepared]) -> None:
        """Restore inputs of one ``_pass_key`` together (a volume's slices as so many
        images), then write each one's outputs."""
        common, first = self.batch.common, group[0]
        names = [p.planned.source.name for p in group]
        problems = [problem for p in group for problem in p.problems(common.seed, common.samples)]
        self.bars.start_pass(names, chunks=-(-len(problems) * common.samples // self.rows_per_call))
        try:
            results = pipeline.restore_batch(
                problems,
                first.measurement.operator,
                self.prior,
                self.config,
                image_shape=first.measurement.image_shape,
                sigma_y=first.sigma_y,
                batch_size=self.rows_per_call,
                autocast=self.autocast,
                callback=self.bars.step,
                solver=self.solver.solve,
            )
        except (InputError, ValueError) as err:
            for prepared in group:
                self.fail(prepared.planned, err)
            return
        for prepared in group:
            mine, results = results[: prepared.slices], results[prepared.slices :]
            result = mine[0] if prepared.slices == 1 else pipeline.volume(mine)
            try:
                report = self.write_one(prepared, result, len(group))
            except (InputError, ValueError) as err:
                self.fail(prepared.planned, err)
            else:
                self.tally.wrote(self.out, prepared.planned, report)
                self.bars.finish_input(restored=True)

    def write_one(self, prepared: _Prepared, result: pipeline.Restoration, inputs: int) -> dict:
        """Write one input's outputs; return its report."""
        common, planned, measurement = self.batch.common, prepared.planned, prepared.measurement
        source, image = planned.source, result.x.numpy()
        report = pipeline.report(
            task=self.batch.task,
            operator=measurement.operator,
            prior=self.prior,
            config=self.config,
            solver=self.solver.name,
            preset=common.preset,
            restoration=result,
            seed=common.seed,
            dtype=common.dtype.value,
            metrics=None if prepared.reference is None else _metrics(source, image, prepared.reference),
        )
        report = {"input": str(source), "output": str(planned.output), **report}
        report["batch"] = {"inputs": inputs, "batch_size": self.rows_per_call}
        if measurement.extra:
            report["operator"].update(measurement.extra)
        _write_all(planned.outputs, self.batch.writer, image, measurement, source, result, report, common)
        return report


def _pass_key(prepared: _Prepared) -> Hashable:
    """What inputs restored in one solver call share: the image and measurement shapes,
    the noise std, and the forward model (its class, parameters and tensors)."""
    measurement = prepared.measurement
    operator = measurement.operator
    tensors = hashlib.sha256()
    for name, tensor in operator.state_dict().items():
        tensors.update(name.encode())
        tensors.update(tensor.detach().cpu().numpy().tobytes())
    return (
        measurement.image_shape,
        tuple(measurement.y.shape),
        prepared.sigma_y,
        type(operator).__qualname__,
        json.dumps(operator.params(), sort_keys=True),
        tensors.hexdigest(),
    )


def _with_bundled_alternative(message: str, spec: str, task: str) -> str:
    alternative = BUNDLED_MODELS[task]
    if spec == alternative:
        return message
    return f"{message}; or run offline with the bundled prior: --model {alternative}"


class _Bars:
    """The batch bar and the step bar of the pass in hand, with ETAs that price each
    step by its kind (``ScheduleEta``): ReSample's data-consistency steps cost many plain
    ones; the other solvers' steps are all of one kind."""

    def __init__(self, bar: Progress | None, task: str, inputs: int, config: SolverConfig):
        self.bar = bar
        self.config = config
        self.schedule = step_kinds(config)
        self.chunks = 1  # solver calls of the pass in hand
        self.eta = ScheduleEta(prior_step_costs(config))
        self.finished: list[float] = []  # seconds of each input restored (its share of its pass)
        self.queued = inputs  # not started yet
        self.in_pass = self.pass_size = 0  # inputs of the pass in hand not finished yet; all of it
        self.started = self.last = time.monotonic()
        if bar:
            self.files = bar.add_task(task, total=inputs, finish_at=None)
            self.steps = bar.add_task("steps", total=len(self.schedule), finish_at=None)

    def start_pass(self, names: list[str], chunks: int) -> None:
        """Inputs ``names`` start their pass of ``chunks`` solver calls."""
        self.queued -= len(names)
        self.in_pass = self.pass_size = len(names)
        self.started = self.last = time.monotonic()
        self.chunks = chunks
        self.eta.start(self.schedule * chunks)
        if self.bar:
            more = f" +{len(names) - 1}" if len(names) > 1 else ""
            self.bar.reset(self.steps, total=len(self.eta.kinds), description=names[0] + more)
            self._show()

    def step(self, chunk: int, info: StepInfo) -> None:
        if info.step == 1 and info.total != len(self.schedule):
            self._replan(chunk, info.total)
        now = time.monotonic()
        if self.eta.done < len(self.eta.kinds):
            self.eta.record(now - self.last)
        self.last = now
        if self.bar:
            self.bar.update(self.steps, completed=self.eta.done)
            self._show()

    def _replan(self, chunk: int, total: int) -> None:
        """The solver runs ``total`` steps, not the ``config.steps`` planned (ReSample's
        authors' grid has ceil(T / (T // steps)) steps): plan this chunk's and the rest."""
        self.schedule = step_kinds(self.config, total)
        self.eta.replan(self.schedule * (self.chunks - chunk))
        if self.bar:
            self.bar.update(self.steps, total=len(self.eta.kinds))

    def finish_input(self, restored: bool) -> None:
        """An input is done: ``restored``, or failed before its pass (reading it) or in it.
        A restored input took its share of its pass's time."""
        if not self.in_pass:  # it failed before its pass
            self.queued -= 1
        else:
            if restored:
                self.finished.append((time.monotonic() - self.started) / self.pass_size)
            self.in_pass -= 1
        if not self.in_pass:
            self.eta.start([])  # nothing left of the pass, also when it failed halfway
        if self.bar:
            self.bar.advance(self.files)
            self._show()

    def _show(self) -> None:
        now, left = self.bar.get_time(), self.eta.remaining()
        total = batch_remaining(self.finished, time.monotonic() - self.started, left, self.queued)
        self.bar.update(self.steps, finish_at=None if left is None else now + left)
        self.bar.update(self.files, finish_at=None if total is None else now + total)


def step_kinds(config: SolverConfig, steps: int | None = None) -> list[Hashable]:
    """The kind of each step a run with ``config`` takes, in order, over ``steps`` steps
    (default ``config.steps``): ReSample's data-consistency stage of each (``dc_schedule``,
    as ``resample`` decides it for its grid); one kind (None) for every step of the other
    solvers, which run the same work at each."""
    steps = config.steps if steps is None else steps
    if isinstance(config, ReSampleConfig):
        return list(dc_schedule(replace(config, steps=steps)))
    return [None] * steps


def prior_step_costs(config: SolverConfig) -> dict[Hashable, float]:
    """What a step of each kind (``step_kinds``) costs before one has been timed: the
    solvers other than ReSample have one kind, at one unit. For ReSample, in network passes (a
    backward pass counted as two forwards, a decoder or encoder pass as a UNet pass), from
    what ``config`` runs per step: a plain DDIM step is one UNet pass (six with the DPS
    gradient); a data-consistency step adds its look-ahead, then a decode, the pixel solve
    and an encode, or a decoder forward and backward per latent iteration (counted at the
    ``latent_iters`` cap: the discrepancy is rarely met in latent space). The operator's
    own pixel solve is about 15 passes (12 to 32 measured on the bundled priors, fast
    preset, where latent steps took 140 to 160 plain steps)."""
    if not isinstance(config, ReSampleConfig):
        return {None: 1.0}
    plain = 1 + (5 if config.dps_scale > 0 else 0)
    consistency = plain + config.lookahead
    solve = 15 if config.pixel_solver == "operator" else 0.05 * config.pixel_iters
    return {None: plain, "pixel": consistency + 2 + solve, "latent": consistency + 3 * config.latent_iters}


def _check_shapes(source: Path, measurement: Measurement) -> None:
    """Probe the forward model once on a blank image, so that one whose output does not
    fit the measurement (a user's --operator, most often) fails here in one line, not
    deep inside the solver."""
    shape = "x".join(str(n) for n in measurement.image_shape)
    try:
        with torch.no_grad():
            fit = measurement.operator(torch.zeros(1, *measurement.image_shape))
    except RuntimeError as err:
        raise InputError(source, f"the forward model fails on a {shape} image ({first_line(err)})") from None
    if fit.shape[1:] != measurement.y.shape[1:]:
        raise InputError(
            source,
            f"the forward model maps a {shape} image to shape {tuple(fit.shape[1:])}, "
            f"but the measurement has shape {tuple(measurement.y.shape[1:])}",
        )


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _metrics(source: Path, image: np.ndarray, reference: np.ndarray) -> dict:
    if reference.shape != image.shape:
        raise InputError(source, f"reference has shape {reference.shape}, the restored image {image.shape}")
    x, ref = torch.from_numpy(image), torch.from_numpy(reference)
    return {"psnr": psnr(x, ref), "ssim": ssim(x, ref)}


def _write_all(outputs, writer, image, measurement, source, result, report, common) -> None:
    """Write every output of one input; on any failure remove those already written,
    so an input yields all its files or none."""
    done: list[Path] = []
    try:
        writer.write(outputs, image, measurement, source, done)
        if result.std is not None:
            std = result.std.numpy()
            scale = float(std.max()) or 1.0
            write_image(outputs["std_npy"], std)
            done.append(outputs["std_npy"])
            write_image(outputs["std_png"], std / scale)
            done.append(outputs["std_png"])
            report["uncertainty"] = {
                "std_npy": str(outputs["std_npy"]),
                "std_png": str(outputs["std_png"]),
                "std_png_scale": scale,
            }
        if common.plot:
            plot_residuals(outputs["plot"], report["residual"]["per_dc_step"], report["residual"]["sigma_y"])
            done.append(outputs["plot"])
        write_report(outputs["report"], report)
    except BaseException:
        for path in done:
            if path.is_dir():  # a volume's DICOM series
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise
