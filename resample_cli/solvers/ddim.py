"""DDIM building blocks shared by the latent-diffusion solvers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

# Which z0 estimate from z_t and the predicted noise: Tweedie's posterior mean, or the
# ReSample authors' (z_t - (1 - abar) eps) / sqrt(abar) (their ddim.py:541).
Z0Estimate = Literal["tweedie", "authors"]
# One generator for a whole batch, or one per image of the batch (``randn_like``).
Generators = torch.Generator | Sequence[torch.Generator] | None


def tweedie(z: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    """Posterior-mean estimate of z_0 from z_t: (z_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    return (z - math.sqrt(1 - abar) * eps) / math.sqrt(abar)


def authors_z0(z: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    """The ReSample authors' z_0 estimate, (z_t - (1 - abar) eps) / sqrt(abar): not the
    posterior mean, but what their DPS term and solves start from."""
    return (z - (1 - abar) * eps) / math.sqrt(abar)


def ddim_sigma(abar: float, abar_prev: float, eta: float) -> float:
    """Std of the fresh noise in a DDIM step (eta = 0: deterministic, eta = 1: DDPM)."""
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))


def ddim_step(
    z0: torch.Tensor, eps: torch.Tensor, abar_prev: float, sigma: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """z_{t-1} = sqrt(abar_prev) z0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise."""
    z = math.sqrt(abar_prev) * z0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
    return z if sigma == 0 else z + sigma * noise


def resample_ratio(abar: float, abar_prev: float, gamma: float) -> float:
    """sigma_t^2 / (1 - abar_prev) for the authors' resampling variance
    sigma_t^2 = gamma (1 - abar_prev) / (1 - abar) (1 - abar / abar_prev), kept as a ratio
    so that it stays finite where abar_prev = 1."""
    return gamma * (1 - abar / abar_prev) / (1 - abar)


def stochastic_resample(
    z0y: torch.Tensor,
    z_prime: torch.Tensor,
    abar: float,
    ratio: float,
    generator: Generators = None,
) -> torch.Tensor:
    """Proposition 2 of the paper: draw z_t given the data-consistent z0y and the
    unconditional sample z_prime, from

        N( (sigma2 sqrt(abar) z0y + (1 - abar) z_prime) / (sigma2 + 1 - abar),
           sigma2 (1 - abar) / (sigma2 + 1 - abar) I ),

    written with ratio = sigma2 / (1 - abar) as N((ratio sqrt(abar) z0y + z_prime) /
    (ratio + 1), ratio (1 - abar) / (ratio + 1) I), which is defined at abar = 1 (there:
    no noise, and the limit of the mean)."""
    mean = (ratio * math.sqrt(abar) * z0y + z_prime) / (ratio + 1)
    std = math.sqrt(ratio * (1 - abar) / (ratio + 1))
    return mean + std * randn_like(mean, generator)


def randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``x``'s,
    so that a seed gives the same numbers whichever device the model runs on. Given one
    generator per image, each image's noise comes from its own: what an image draws then
    does not depend on the other images of its batch."""
    if isinstance(generator, Sequence):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.cat([randn_like(x[i : i + 1], g) for i, g in enumerate(generator)])
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)
