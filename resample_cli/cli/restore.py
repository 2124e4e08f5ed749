"""The batch loop shared by the restoring commands: one input at a time, outputs
written atomically, failures collected and reported at the end.

Imported only once a command has work to do (it imports torch and the priors); the
batch is planned, and the errors that need no model reported, in ``batch``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import typer

from .. import pipeline
from ..io.errors import InputError
from ..io.images import read_image, write_image
from ..metrics import psnr, ssim
from ..operators.base import Operator
from ..priors import PriorError, load_prior
from ..report import plot_residuals, write_report
from ..solvers.resample import ReSampleConfig
from .batch import Batch
from .console import Output
from .files import check_output_dir, match_by_name
from .options import DEFAULT_MODELS, Device


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
    if device is Device.auto:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine", param_hint="--device")
    if device is Device.mps and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise typer.BadParameter("MPS is not available on this machine", param_hint="--device")
    return torch.device(device.value)


def run_restore(
    batch: Batch,
    prepare: Callable[[Path], Measurement],
    read_reference: Callable[[Path], np.ndarray] = lambda p: read_image(p).data,
) -> int:
    """Restore the inputs ``batch`` planned to; return the exit code (0 all written,
    1 some failed). The inputs planning refused or skipped are reported before the
    model loads."""
    common, writer = batch.common, batch.writer
    device = resolve_device(common.device)
    if common.threads is not None:
        torch.set_num_threads(common.threads)
    out = Output(quiet=common.quiet, json_lines=common.json)
    batch.report_planned(out)
    try:
        check_output_dir(common.output_dir)
    except InputError as err:
        out.error(str(err))
        return 1
    spec = common.model or DEFAULT_MODELS[batch.task]
    out.log(f"loading model {spec} on {device}")
    try:
        prior = load_prior(spec, revision=common.revision, device=device)
    except PriorError as err:
        out.error(str(err))
        return 1
    overrides = {"steps": common.steps} if common.steps else {}
    config = ReSampleConfig.preset(common.preset.value, **overrides)
    autocast = None if common.dtype.value == "float32" else getattr(torch, common.dtype.value)
    failures: list[str] = []
    written = 0
    to_restore = batch.to_restore
    with out.progress() as bar:
        files_bar = bar.add_task(batch.task, total=len(to_restore)) if bar else None
        steps_bar = bar.add_task("steps", total=config.steps) if bar else None
        for planned in to_restore:
            source, outputs = planned.source, planned.outputs
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    measurement = prepare(source)
                for w in caught:
                    out.warn(str(w.message))
                _check_shapes(source, measurement)
                reference = None
                if common.reference is not None:
                    ref_path = common.reference
                    if ref_path.is_dir():
                        ref_path = match_by_name(
                            source, ref_path, sorted(batch.suffixes | {".png", ".npy", ".dcm"})
                        )
                    reference = read_reference(ref_path)
                n_chunks = -(-common.samples // (common.batch_size or common.samples))
                if bar:
                    bar.reset(steps_bar, total=config.steps * n_chunks, description=source.name)

                def on_step(chunk, info):
                    if bar:
                        bar.update(steps_bar, completed=chunk * info.total + info.step)

                result = pipeline.restore(
                    measurement.y,
                    measurement.operator,
                    prior,
                    config,
                    image_shape=measurement.image_shape,
                    sigma_y=common.noise if measurement.sigma_y is None else measurement.sigma_y,
                    seed=common.seed,
                    samples=common.samples,
                    batch_size=common.batch_size,
                    autocast=autocast,
                    callback=on_step,
                )
                image = result.x.numpy()
                report = pipeline.report(
                    task=batch.task,
                    operator=measurement.operator,
                    prior=prior,
                    config=config,
                    preset=common.preset.value,
                    restoration=result,
                    seed=common.seed,
                    dtype=common.dtype.value,
                    metrics=None if reference is None else _metrics(source, image, reference),
                )
                report = {"input": str(source), "output": str(outputs["output"]), **report}
                if measurement.extra:
                    report["operator"].update(measurement.extra)
                _write_all(outputs, writer, image, measurement, source, result, report, common)
            except (InputError, ValueError) as err:
                failures.append(str(err) if isinstance(err, InputError) else f"{source}: {err}")
                out.error(failures[-1])
                out.record({"input": str(source), "status": "failed", "error": failures[-1]})
            except KeyboardInterrupt:
                out.error("interrupted; outputs of the input in hand were not written")
                raise typer.Exit(130) from None
            else:
                written += 1
                res = report["residual"]
                out.log(f"{source} -> {outputs['output']}  residual/sigma_y = {_fmt(res['ratio'])}")
                out.record(
                    {
                        "input": str(source),
                        "status": "ok",
                        "output": str(outputs["output"]),
                        "report": str(outputs["report"]),
                        "residual": res,
                        "metrics": report.get("metrics"),
                    }
                )
            _advance(bar, files_bar)
    return batch.summarise(out, written, failures)


def _check_shapes(source: Path, measurement: Measurement) -> None:
    """Probe the forward model once on a blank image, so that one whose output does not
    fit the measurement (a user's --operator, most often) fails here in one line, not
    deep inside the solver."""
    shape = "x".join(str(n) for n in measurement.image_shape)
    try:
        with torch.no_grad():
            fit = measurement.operator(torch.zeros(1, *measurement.image_shape))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(source, f"the forward model fails on a {shape} image ({first})") from None
    if fit.shape != measurement.y.shape:
        raise InputError(
            source,
            f"the forward model maps a {shape} image to shape {tuple(fit.shape[1:])}, "
            f"but the measurement has shape {tuple(measurement.y.shape[1:])}",
        )


def _advance(bar, task_id) -> None:
    if bar:
        bar.advance(task_id)


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
            path.unlink(missing_ok=True)
        raise
