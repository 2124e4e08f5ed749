"""Baselines beside ReSample: Latent-DPS and PSLD, with ReSample's interface and trace.

Latent-DPS (equations 8-9 of the ReSample paper; Chung et al.'s DPS run on the latent):
each step is a DDIM step z'_{t-1} from z_t, then a gradient step on the measurement
residual of the decoded Tweedie estimate,

    z_{t-1} = z'_{t-1} - zeta * grad_{z_t} ||y - A(D(z0hat(z_t)))||.

zeta is a constant, as in DPS's reference code, which also takes the gradient of the
norm (not of its square): the step is then independent of the residual's scale, which
is what DPS's zeta_t = zeta / ||y - A(x0hat)|| on the squared norm amounts to.

PSLD (Rout et al., "Solving Linear Inverse Problems Provably via Posterior Sampling with
Latent Diffusion Models", NeurIPS 2023) adds the "gluing" term

    gamma * ||z0hat - E(A^T y + (I - A^T A) D(z0hat))||

to the loss whose gradient is taken; it needs A^T, so linear operators only. Its
A^T y + (I - A^T A) x is the data-consistent projection of x when A has orthonormal rows
(inpainting masks); for other operators it is applied as written, as the authors' code does.

Counts are per image, as for ReSample: every step is one UNet forward and backward and
one decoder forward and backward; PSLD adds one encoder forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from ..operators.base import Operator
from ..priors.base import LatentPrior
from .consistency import per_sample_mse
from .ddim import ddim_sigma, ddim_step, randn_like, tweedie
from .resample import Result, StepInfo
from .schedule import ddim_grid
from .trace import CountingPrior, Trace, counting_operator_calls


@dataclass(frozen=True)
class LatentDPSConfig:
    """Settings of a Latent-DPS run (defaults are the ``paper`` preset).

    steps: DDIM steps. eta: DDIM stochasticity (1 = ancestral sampling, as DPS).
    zeta: the constant step on the gradient of the residual norm.
    """

    steps: int = 1000
    eta: float = 1.0
    zeta: float = 1.0

    @classmethod
    def preset(cls, name: str, **overrides) -> LatentDPSConfig:
        """A named preset, with any field overridden by keyword."""
        return _preset(PSLD_PRESETS if cls is PSLDConfig else LATENT_DPS_PRESETS, name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PSLDConfig(LatentDPSConfig):
    """Settings of a PSLD run (defaults are the ``paper`` preset): those of Latent-DPS
    (zeta is PSLD's omega) and gamma, the weight of the gluing term."""

    gamma: float = 0.1


LATENT_DPS_PRESETS: dict[str, LatentDPSConfig] = {
    # DPS's 1000-step ancestral schedule with a unit step on the residual norm.
    "paper": LatentDPSConfig(),
    # A tenth of the steps; the same step size per step.
    "fast": LatentDPSConfig(steps=100),
}

PSLD_PRESETS: dict[str, PSLDConfig] = {
    # The authors' defaults: omega = 1, gamma = 0.1, 1000 steps.
    "paper": PSLDConfig(),
    "fast": PSLDConfig(steps=100),
}


def _preset(table: dict, name: str, overrides: dict):
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(table)}")
    return replace(table[name], **overrides)


def latent_dps(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: LatentDPSConfig,
    *,
    sigma_y: float,
    image_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Result:
    """Latent-DPS restorations of the images measured as ``y`` (batch N: N independent
    runs); the arguments are those of ``resample``. ``sigma_y`` only scales the reported
    residuals: DPS's step does not depend on it."""
    return _guided_ddim(y, operator, prior, config, 0.0, image_size, generator, callback, autocast)


def psld(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: PSLDConfig,
    *,
    sigma_y: float,
    image_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Result:
    """PSLD restorations of the images measured as ``y``; as ``latent_dps``, for a linear
    operator (one with ``adjoint``) only."""
    if not operator.linear:
        raise ValueError(
            f"PSLD needs a linear operator (its gluing term uses A^T); {type(operator).__name__} is not"
        )
    return _guided_ddim(y, operator, prior, config, config.gamma, image_size, generator, callback, autocast)


def _guided_ddim(y, operator, prior, config, gamma, image_size, generator, callback, autocast) -> Result:
    """The loop both share; ``gamma`` is the weight of PSLD's gluing term (unused by
    Latent-DPS). PSLD runs the encoder even at gamma = 0, so its cost does not change."""
    glue = isinstance(config, PSLDConfig)
    trace = Trace()
    net = CountingPrior(prior, trace, autocast)
    n = y.shape[0]
    h, w = image_size or tuple(y.shape[-2:])
    y = operator.observed(y)
    observed = operator.measurement_count(y) / y[0].numel()
    grid = ddim_grid(prior, config.steps, "scheduler")
    with counting_operator_calls(operator, trace), trace.stage("total"):
        z = randn_like(torch.empty(n, *prior.latent_shape(h, w), device=prior.device), generator)
        for i, step in enumerate(grid):
            with trace.stage("sampling"):
                z = _guided_step(
                    net, operator, y, z, step.t, step.abar, step.abar_next, config, glue, gamma, generator
                )
            if callback is not None:
                callback(StepInfo(i + 1, len(grid), step.t, None, None))
        with torch.no_grad():
            x = net.decode(z).clamp(0, 1)
            trace.final_residual = (per_sample_mse(operator(x), y) / observed).sqrt().tolist()
    return Result(x, z, trace)


def _guided_step(net, operator, y, z, t, a_t, a_prev, config, glue, gamma, generator):
    """One DDIM step from z_t, then the gradient step on the Latent-DPS (+ gluing) loss."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        eps = net.eps(z, t)
        z0hat = tweedie(z, eps, a_t)
        sigma = ddim_sigma(a_t, a_prev, config.eta)
        noise = randn_like(z, generator) if sigma else None
        z_prev = ddim_step(z0hat.detach(), eps.detach(), a_prev, sigma, noise)
        x0hat = net.decode(z0hat)
        loss = config.zeta * (y - operator(x0hat)).flatten(1).norm(dim=1)
        if glue:
            glued = operator.adjoint(y) + x0hat - operator.normal(x0hat)
            loss = loss + gamma * (net.encode(glued) - z0hat).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    net.count_backward(z.shape[0], unet=True, decoder=True, encoder=glue)
    return (z_prev - grad).detach()


__all__ = ["LATENT_DPS_PRESETS", "PSLD_PRESETS", "LatentDPSConfig", "PSLDConfig", "latent_dps", "psld"]
