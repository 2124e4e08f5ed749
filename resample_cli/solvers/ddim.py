"""DDIM building blocks shared by the latent-diffusion solvers."""

from __future__ import annotations

import math

import torch


def tweedie(z: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    """Posterior-mean estimate of z_0 from z_t: (z_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    return (z - math.sqrt(1 - abar) * eps) / math.sqrt(abar)


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


def resample_variance(abar: float, abar_prev: float, gamma: float) -> float:
    """The authors' choice of sigma_t^2 for stochastic resampling:
    gamma (1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)."""
    return gamma * (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)


def stochastic_resample(
    z0y: torch.Tensor,
    z_prime: torch.Tensor,
    abar: float,
    sigma2: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Proposition 2 of the paper: draw z_t given the data-consistent z0y and the
    unconditional sample z_prime, from

        N( (sigma2 sqrt(abar) z0y + (1 - abar) z_prime) / (sigma2 + 1 - abar),
           sigma2 (1 - abar) / (sigma2 + 1 - abar) I ).
    """
    denom = sigma2 + 1 - abar
    mean = (sigma2 * math.sqrt(abar) * z0y + (1 - abar) * z_prime) / denom
    std = math.sqrt(sigma2 * (1 - abar) / denom)
    return mean + std * randn_like(mean, generator)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``x``'s,
    so that a seed gives the same numbers whichever device the model runs on."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)
