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
    """The latent-diffusion code's "uniform" DDIM grid, which the ReSample and PSLD authors
    run (ldm/modules/diffusionmodules/util.py, ``make_ddim_timesteps`` and
    ``make_ddim_sampling_parameters``): with c = T // steps, timesteps 1, 1 + c, 1 + 2c, ...
    (999, 997, ..., 1 for T = 1000 and 500 steps), each landing on abar c below, the lowest
    on abar[0], not on 1. When c does not divide T the grid has ceil(T / c) steps, not
    ``steps``.

    When the top timestep would be T itself (c divides T - 1: every steps > T / 2, and e.g.
    3 or 9), that code takes abar at t - 1 (its "subtract 1" branch for c = 1; other c fail
    there). Such grids here are T - 1, T - 1 - c, ..., 0 throughout, the network told t - 1,
    abar's own index, where the source tells it t: T is outside the range a prior is
    trained on."""
    abar = alphas_cumprod.to(torch.float64)
    total = len(abar)
    c = total // steps
    top = 1 + c * ((total - 1) // c)
    first = top if top < total else total - 1
    return [GridStep(t, float(abar[t]), float(abar[max(t - c, 0)])) for t in range(first, -1, -c)]
