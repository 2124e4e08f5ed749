"""One library call per restoration: adapt the operator to the prior, run the solver
over K posterior samples in batches, and assemble the report.

The CLI and Python callers both use ``restore``; it reads and writes no files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import __version__
from .operators.base import Operator
from .operators.compose import ChannelMean, Cropped
from .priors.base import LatentPrior
from .report import REPORT_VERSION, residual_summary
from .solvers.latent_dps import LatentDPSConfig
from .solvers.resample import ReSampleConfig, Result, StepInfo, resample
from .solvers.trace import Trace

# ``resample``, or a baseline with its interface (``latent_dps``, ``psld``):
# solver(y, operator, prior, config, *, sigma_y, image_size, generator, callback, autocast) -> Result.
Solver = Callable[..., Result]


@dataclass
class Restoration:
    """The restored image (mean of the posterior samples), its per-pixel standard
    deviation over samples (None for one sample), the residual block of the report and
    the summed cost trace."""

    x: torch.Tensor  # (C, H, W) in [0, 1], C as the input
    std: torch.Tensor | None
    samples: int
    residual: dict
    trace: Trace = field(default_factory=Trace)


def restore(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: ReSampleConfig | LatentDPSConfig,
    *,
    image_shape: tuple[int, int, int],
    sigma_y: float,
    seed: int = 0,
    samples: int = 1,
    batch_size: int | None = None,
    autocast: torch.dtype | None = None,
    callback: Callable[[int, StepInfo], None] | None = None,
    solver: Solver = resample,
) -> Restoration:
    """Restore one image of shape ``image_shape`` (C, H, W) from its measurement ``y``
    (batch of one). A grey image under a colour prior is measured through the channel
    mean and comes back grey; an image whose size the prior cannot take is padded and
    the padding left out of the data term. ``callback(chunk, info)`` follows progress,
    ``chunk`` counting the batches of samples. ``solver`` runs with ``config`` (a
    ``ReSampleConfig`` for the default ``resample``, or the chosen baseline's config)."""
    channels, height, width = image_shape
    op = _fit_channels(operator, channels, prior)
    multiple = prior.size_multiple
    ph, pw = height + (-height % multiple), width + (-width % multiple)
    box = ((ph - height) // 2, (pw - width) // 2, height, width)
    if (ph, pw) != (height, width):
        op = Cropped(op, box, (ph, pw))
    y = y.to(prior.device, torch.float32)
    op = op.to(prior.device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch = batch_size or samples
    trace, xs, per_step = Trace(), [], []
    for chunk, start in enumerate(range(0, samples, batch)):
        k = min(batch, samples - start)
        result = solver(
            y.expand(k, *y.shape[1:]).contiguous(),
            op,
            prior,
            config,
            sigma_y=sigma_y,
            image_size=(ph, pw),
            generator=generator,
            callback=None if callback is None else (lambda info, c=chunk: callback(c, info)),
            autocast=autocast,
        )
        _add(trace, result.trace)
        xs.append(result.x)
        per_step.append(result.trace.residual_per_dc_step)
    x = torch.cat(xs)[..., box[0] : box[0] + height, box[1] : box[1] + width]
    if channels == 1:
        x = x.mean(1, keepdim=True)
    mean = x.mean(0)
    with torch.no_grad():
        fit = operator.to(prior.device)(mean[None])
    m = operator.measurement_count(y)
    rms = float((y - fit).pow(2).sum().sqrt()) / math.sqrt(m)
    residual = residual_summary(rms, sigma_y, float(y.norm()), m, _mean_per_step(per_step))
    std = x.std(0) if samples > 1 else None
    return Restoration(mean.cpu(), None if std is None else std.cpu(), samples, residual, trace)


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


def _mean_per_step(chunks: list[list[list[float | None]]]) -> list[float]:
    """The mean over samples of the RMS residual after each data-consistency step."""
    steps = zip(*chunks, strict=True)  # each: one list of per-image values per chunk
    return [_mean([v for chunk in step for v in chunk if v is not None]) for step in steps]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report(
    *,
    task: str,
    operator: Operator,
    prior: LatentPrior,
    config: ReSampleConfig,
    preset: str,
    restoration: Restoration,
    seed: int,
    dtype: str,
    metrics: dict | None = None,
) -> dict:
    """The report's fixed keys (DESIGN.md) less ``input`` and ``output``, which the
    caller who names the files adds."""
    info = prior.info
    out = {
        "version": REPORT_VERSION,
        "resample_version": __version__,
        "task": task,
        "operator": operator.params(),
        "model": {"name": info.name, "repo": info.repo, "revision": info.revision, "path": info.path},
        "solver": {"name": "resample", "preset": preset, **config.to_dict()},
        "samples": restoration.samples,
        "seed": seed,
        "device": str(prior.device),
        "dtype": dtype,
        "residual": restoration.residual,
        "cost": dict(restoration.trace.counts),
        "timing": {f"{k}_s": round(v, 4) for k, v in restoration.trace.timing.items()},
    }
    if metrics is not None:
        out["metrics"] = metrics
    return out
