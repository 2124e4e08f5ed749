"""The DDIM timestep grid a sampler runs over, as values.

Solvers take the grid as a list of steps (as k-diffusion's samplers take ``sigmas``) and
never set timesteps on the prior's scheduler, which other callers share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler

from ..priors.base import LatentPrior

GridKind = Literal["authors", "scheduler"]


@dataclass(frozen=True)
class GridStep:
    """One DDIM step: the network's timestep, abar there, and abar where the step lands."""

    t: int
    abar: float
    abar_next: float


def ddim_grid(prior: LatentPrior, steps: int, kind: GridKind) -> list[GridStep]:
    """The grid of a ``steps``-step run, in sampling order (``kind`` as ``authors_grid`` or
    ``scheduler_grid``)."""
    if kind == "authors":
        return authors_grid(prior.alphas_cumprod, steps)
    return scheduler_grid(prior.scheduler, steps)


def scheduler_grid(scheduler: DDIMScheduler, steps: int) -> list[GridStep]:
    """diffusers' DDIM timesteps (the scheduler's ``timestep_spacing``), the last step landing
    on its ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``). Set on a copy."""
    own = DDIMScheduler.from_config(scheduler.config)
    own.set_timesteps(steps)
    abar = own.alphas_cumprod.to(torch.float64)
    ts = [int(t) for t in own.timesteps]
    landing = [float(abar[t]) for t in ts[1:]] + [float(own.final_alpha_cumprod)]
    return [GridStep(t, float(abar[t]), a) for t, a in zip(ts, landing, strict=True)]


def authors_grid(alphas_cumprod: torch.Tensor, steps: int) -> list[GridStep]:
    """The latent-diffusion code's "uniform" DDIM grid, which the ReSample authors run: with
    c = T // steps, timesteps 1, 1 + c, 1 + 2c, ... (999, 997, ..., 1 for T = 1000 and 500
    steps), the lowest step landing on abar[0], not on 1. When c does not divide T the grid
    has ceil(T / c) steps, not ``steps`` (their ``make_ddim_timesteps``)."""
    abar = alphas_cumprod.to(torch.float64)
    stride = len(abar) // steps
    ascending = [k + 1 for k in range(0, len(abar), stride)]
    below = [0, *ascending[:-1]]
    return [GridStep(t, float(abar[t]), float(abar[b])) for t, b in zip(ascending, below, strict=True)][::-1]
