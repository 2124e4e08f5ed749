"""One library call per restoration: adapt the operator to the prior, run the solver
over K posterior samples in batches, and assemble the report.

The CLI and Python callers both use ``restore``; it reads and writes no files.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import __version__
from .operators.base import Operator
from .operators.compose import ChannelMean, Cropped, padded_canvas
from .priors.base import LatentPrior
from .report import REPORT_VERSION, residual_summary
from .solvers import SOLVERS, SolverConfig, name_of_config
from .solvers.resample import ReSampleConfig, Result, StepInfo, resample
from .solvers.trace import Trace

# Above this residual ratio (rms / sigma_y) the output does not fit the data. Were the
# output the truth, ||y - A x||^2 / sigma_y^2 would be chi-squared with m degrees of
# freedom, so the ratio sqrt(chi2_m / m) is 1 with a standard deviation of 1 / sqrt(2m):
# 0.07 for m = 100, 0.0125 for a 25-angle 128-detector sinogram (m = 3200). 1.5 is over
# 7 such deviations for any m >= 100, and means the part of the squared residual the
# noise does not explain (1.5^2 - 1 = 1.25 sigma_y^2 per entry) exceeds the noise itself.
# Regularised estimates fit a little less than the truth (the shipped CT benchmark: 1.06).
FIT_RATIO_THRESHOLD = 1.5

# A solver of the registry (``solvers.SOLVERS``: ``resample``, ``latent_dps``, ``psld``,
# ``diffpir``), all with ReSample's interface:
# solver(y, operator, prior, config, *, sigma_y, image_size, generator, callback, autocast) -> Result.
Solver = Callable[..., Result]


@dataclass
class Restoration:
    """The restored image (mean of the posterior samples), its per-pixel standard
    deviation over samples (None for one sample), the residual block of the report,
    the summed cost trace and, when a final pixel solve made ``x``, the mean of the
    decoded images it started from (what the run would have output without it). A
    volume's (``volume``) hold its slices first."""

    x: torch.Tensor  # (C, H, W) in [0, 1], C as the input; a volume's (slices, C, H, W)
    std: torch.Tensor | None
    samples: int
    residual: dict
    trace: Trace = field(default_factory=Trace)
    decoded: torch.Tensor | None = None
    y_norm: float = 0.0  # ||y|| of the measurement
    m: int = 0  # the entries of y that carry data


def volume(slices: Sequence[Restoration]) -> Restoration:
    """The restorations of a volume's slices as one: images stacked, slices first; the
    residual block of all the slices' measurements taken together (rms over every entry,
    per data-consistency step the mean over slices)."""
    first = slices[0]
    m = sum(s.m for s in slices)
    sigma_y = first.residual["sigma_y"]

    def pooled(rms: list[float]) -> float:
        return math.sqrt(sum(r**2 * s.m for r, s in zip(rms, slices, strict=True)) / m)

    decoded = [s.residual["decoded_ratio"] for s in slices]
    y_norm = math.sqrt(sum(s.y_norm**2 for s in slices))
    residual = residual_summary(
        pooled([s.residual["rms"] for s in slices]),
        sigma_y,
        y_norm,
        m,
        [_mean(list(step)) for step in zip(*(s.residual["per_dc_step"] for s in slices), strict=True)],
        decoded_rms=None if None in decoded else pooled([d * sigma_y for d in decoded]),
    )

    def stacked(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if any(p is None for p in parts) else torch.stack(parts)

    return Restoration(
        torch.stack([s.x for s in slices]),
        stacked([s.std for s in slices]),
        first.samples,
        residual,
        first.trace,
        stacked([s.decoded for s in slices]),
        y_norm,
        m,
    )


def sample_generators(seed: int, name: str, samples: int) -> list[torch.Generator]:
    """The generator of each posterior sample of the input ``name`` (a file's name): seeded
    by a hash of ``seed``, the name and the sample's index, so that what an input draws does
    not depend on which inputs share its solver calls, their order, or the process (rank,
    --shard) that restores it. CPU generators: the same numbers on every device."""
    generators = []
    for sample in range(samples):
        digest = hashlib.sha256(f"{seed}\0{name}\0{sample}".encode()).digest()
        generators.append(torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little")))
    return generators


@dataclass
class Problem:
    """One input of ``restore_batch``: its measurement (batch of one) and the generator
    of each of its posterior samples (``sample_generators``)."""

    y: torch.Tensor
    generators: list[torch.Generator]


def restore(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: SolverConfig,
    *,
    image_shape: tuple[int, int, int],
    sigma_y: float,
    seed: int = 0,
    samples: int = 1,
    batch_size: int | None = None,
    autocast: torch.dtype | None = None,
    callback: Callable[[int, StepInfo], None] | None = None,
    solver: Solver = resample,
    name: str = "",
) -> Restoration:
    """Restore one image of shape ``image_shape`` (C, H, W) from its measurement ``y``
    (batch of one), its samples drawn from ``sample_generators(seed, name, samples)`` in
    solver calls of ``batch_size`` samples (default: all at once); see ``restore_batch``."""
    problem = Problem(y, sample_generators(seed, name, samples))
    return restore_batch(
        [problem],
        operator,
        prior,
        config,
        image_shape=image_shape,
        sigma_y=sigma_y,
        batch_size=batch_size,
        autocast=autocast,
        callback=callback,
        solver=solver,
    )[0]


def restore_batch(
    problems: Sequence[Problem],
    operator: Operator,
    prior: LatentPrior,
    config: SolverConfig,
    *,
    image_shape: tuple[int, int, int],
    sigma_y: float,
    batch_size: int | None = None,
    autocast: torch.dtype | None = None,
    callback: Callable[[int, StepInfo], None] | None = None,
    solver: Solver = resample,
) -> list[Restoration]:
    """Restore inputs that share the forward model ``operator``, the image shape
    ``image_shape`` (C, H, W) and the noise std ``sigma_y``: every posterior sample of every
    input is one row of the solver's batch, run in calls of at most ``batch_size`` rows
    (default: all in one). The solvers treat rows as independent problems and each row
    draws from its own generator, so each input gets what it would alone, up to the float
    rounding of batched network arithmetic. A grey image under a colour prior is measured
    through the channel mean and comes back grey; an image whose size the prior cannot take
    is padded and the padding left out of the data term. ``callback(chunk, info)`` follows
    progress, ``chunk`` counting the calls. ``solver`` runs with ``config`` (a
    ``ReSampleConfig`` for the default ``resample``, else the config class the registry
    names for the solver, ``solvers.solver_named``). The cost and timing of each input's
    report are those of all the calls it took part in."""
    channels, height, width = image_shape
    op = _fit_channels(operator, channels, prior)
    (ph, pw), box = padded_canvas(height, width, prior.size_multiple)
    if (ph, pw) != (height, width):
        op = Cropped(op, box, (ph, pw))
    op = op.to(prior.device)
    ys = [op.observed(p.y.to(prior.device, torch.float32)) for p in problems]
    rows = [(i, generator) for i, p in enumerate(problems) for generator in p.generators]
    batch = batch_size or len(rows)
    trace = Trace()
    xs, decoded, per_step = [], [], [[] for _ in problems]  # per_step: each input's, per call
    final_pixel_lam: list[list[float | None]] = [[] for _ in problems]
    for chunk, start in enumerate(range(0, len(rows), batch)):
        part = rows[start : start + batch]
        owners = [i for i, _ in part]
        result = solver(
            torch.cat([ys[i] for i in owners]),
            op,
            prior,
            config,
            sigma_y=sigma_y,
            image_size=(ph, pw),
            generator=[g for _, g in part],
            callback=None if callback is None else (lambda info, c=chunk: callback(c, info)),
            autocast=autocast,
        )
        _add(trace, result.trace)
        xs.append(result.x)
        decoded.append(result.decoded)
        for i in set(owners):
            mine = [r for r, owner in enumerate(owners) if owner == i]
            per_step[i].append([[step[r] for r in mine] for step in result.trace.residual_per_dc_step])
            if result.trace.final_pixel_lam:  # empty when no final pixel solve ran
                final_pixel_lam[i] += [result.trace.final_pixel_lam[r] for r in mine]
    x = _as_input(torch.cat(xs), box, channels)
    decoded_x = None if any(d is None for d in decoded) else _as_input(torch.cat(decoded), box, channels)
    operator = operator.to(prior.device)
    restorations = []
    for i, y in enumerate(ys):
        mine = [r for r, (owner, _) in enumerate(rows) if owner == i]
        own_trace = Trace(counts=trace.counts, timing=trace.timing, final_pixel_lam=final_pixel_lam[i])
        restorations.append(
            _summarise(
                operator,
                y,
                x[mine],
                None if decoded_x is None else decoded_x[mine],
                sigma_y,
                per_step[i],
                own_trace,
            )
        )
    return restorations


def _summarise(
    operator: Operator,
    y: torch.Tensor,
    x: torch.Tensor,
    decoded: torch.Tensor | None,
    sigma_y: float,
    per_step: list[list[list[float | None]]],
    trace: Trace,
) -> Restoration:
    """One input's Restoration from its samples ``x`` (and the ``decoded`` images a final
    pixel solve started from), its measurement ``y`` and its residuals per call."""
    mean = x.mean(0)
    m = int(operator.measurement_count(y)[0])
    decoded_mean = None if decoded is None else decoded.mean(0)
    residual = residual_summary(
        _rms(operator, y, mean, m),
        sigma_y,
        float(y.norm()),
        m,
        _mean_per_step(per_step),
        decoded_rms=None if decoded_mean is None else _rms(operator, y, decoded_mean, m),
    )
    std = x.std(0) if x.shape[0] > 1 else None
    return Restoration(
        mean.cpu(),
        None if std is None else std.cpu(),
        x.shape[0],
        residual,
        trace,
        None if decoded_mean is None else decoded_mean.cpu(),
        float(y.norm()),
        m,
    )


def _as_input(x: torch.Tensor, box: tuple[int, int, int, int], channels: int) -> torch.Tensor:
    """Samples on the prior's padded canvas back to the input's size and channels."""
    x = x[..., box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
    return x.mean(1, keepdim=True) if channels == 1 else x


@torch.no_grad()
def _rms(operator: Operator, y: torch.Tensor, image: torch.Tensor, m: int) -> float:
    """||y - A(image)|| / sqrt(m) for one (C, H, W) image."""
    return float((y - operator(image[None])).pow(2).sum().sqrt()) / math.sqrt(m)


def _fit_channels(operator: Operator, channels: int, prior: LatentPrior) -> Operator:
    if channels == prior.image_channels:
        return operator
    if channels == 1:
        return ChannelMean(operator, prior.image_channels)
    raise ValueError(
        f"the prior models {prior.image_channels}-channel images; the input has {channels} channels"
    )


def _add(total: Trace, part: Trace) -> None:
    total.counts.update(part.counts)
    for name, seconds in part.timing.items():
        total.timing[name] = total.timing.get(name, 0.0) + seconds
    total.final_residual += part.final_residual
    total.final_pixel_lam += part.final_pixel_lam


def _mean_per_step(chunks: list[list[list[float | None]]]) -> list[float]:
    """The mean over samples of the RMS residual after each data-consistency step."""
    steps = zip(*chunks, strict=True)  # each: one list of per-image values per chunk
    return [_mean([v for chunk in step for v in chunk if v is not None]) for step in steps]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def fit_warning(residual: dict, task: str, threshold: float = FIT_RATIO_THRESHOLD) -> str | None:
    """One line for the user when the report's ``residual`` block shows a fit the noise
    does not explain: the output's ratio, or (when a final pixel solve pulled the output
    to the data) the decoded image's ``decoded_ratio``, above ``threshold``. None otherwise."""
    ratio, decoded = residual.get("ratio"), residual.get("decoded_ratio")
    if ratio is not None and ratio > threshold:
        what, after = f"the output's residual is {ratio:.2f} x sigma_y", ""
    elif decoded is not None and decoded > threshold:
        what = f"the prior's decoded image has a residual of {decoded:.2f} x sigma_y"
        after = (
            f"; the final pixel solve brought the output to {ratio:.2f} x sigma_y, filling in by "
            "least squares what the prior could not show"
        )
    else:
        return None
    return (
        f"{what}, more than the noise explains (up to {threshold:g}): the prior cannot represent this "
        f"image, or --noise is too small{after}. Try {_remedies(task)}"
    )


def _remedies(task: str) -> str:
    if task == "ct":
        return (
            "checking --noise (or --relative-noise), a prior trained on such slices "
            "(resample train-prior runs/my-ct --base ct-ellipses --data your_slices/), or the "
            "classical solvers (resample bench ct --data your_slices/ --solvers classical)"
        )
    return (
        "checking --noise, a prior trained on such images (a Hub model with --model, or resample "
        "train-prior runs/mine --base MODEL --data your_images/), or the classical solver "
        f"(resample bench {task} --data your_images/ --solvers classical)"
    )


def report(
    *,
    task: str,
    operator: Operator,
    prior: LatentPrior,
    config: SolverConfig,
    preset: str,
    restoration: Restoration,
    seed: int,
    dtype: str,
    metrics: dict | None = None,
    solver: str | None = None,
) -> dict:
    """The report's fixed keys (docs/design.md) less ``input`` and ``output``, which the
    caller who names the files adds. ``solver`` is the registry name of the solver that ran
    with ``config`` (default: the solver whose config class ``config`` is); the report's
    ``solver`` block holds ``config``'s fields as the solver ran them
    (``config.resolved(operator)``) and ReSample's ``final_pixel_lam``; its name is that of
    the method that ran (Latent-DPS on a pixel-space prior is ``dps``). The ``model`` block
    says whether the prior is latent or pixel-space, and what it was conditioned on."""
    info = prior.info
    name = name_of_config(config) if solver is None else solver
    if name in SOLVERS:
        name = SOLVERS[name].name_on(prior.space)
    config = config.resolved(operator)  # with the values a solver sets per task filled in
    settings = {"name": name, "preset": preset, **config.to_dict()}
    if isinstance(config, ReSampleConfig):  # the final pixel solve is ReSample's
        settings["final_pixel_lam"] = restoration.trace.final_pixel_lam or None
    out = {
        "version": REPORT_VERSION,
        "resample_version": __version__,
        "task": task,
        "operator": operator.params(),
        "model": {
            "name": info.name,
            "repo": info.repo,
            "revision": info.revision,
            "path": info.path,
            "space": prior.space,
            "conditioning": prior.conditioning(),
        },
        "solver": settings,
        "samples": restoration.samples,
        "seed": seed,
        "device": str(prior.device),
        "dtype": dtype,
        "residual": restoration.residual,
        "fit": {
            "ratio_threshold": FIT_RATIO_THRESHOLD,
            "warning": fit_warning(restoration.residual, task),
        },
        "cost": dict(restoration.trace.counts),
        "timing": {f"{k}_s": round(v, 4) for k, v in restoration.trace.timing.items()},
    }
    if metrics is not None:
        out["metrics"] = metrics
    return out
