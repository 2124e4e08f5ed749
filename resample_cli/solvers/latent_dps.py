"""Baselines beside ReSample: Latent-DPS and PSLD, with ReSample's interface and trace, set
up as their authors' code runs them.

Latent-DPS (equations 8-9 of the ReSample paper; Chung et al.'s DPS run on the latent):
each step is a DDIM step z'_{t-1} from z_t, then a gradient step on the measurement
residual of the decoded Tweedie estimate,

    z_{t-1} = z'_{t-1} - zeta * grad_{z_t} ||y' - A'(D'(z0hat(z_t)))||,

the gradient of the norm, not of its square, as DPS's code takes it. The sources work on
images and measurements in [-1, 1] (x' = 2x - 1, marked '); ours are in [0, 1], and for
every operator here y' - A'(x') = 2 (y - A(x)). ``zeta`` is the sources' number and
``residual_scale`` = 2 converts: the step applied is zeta * 2 * grad ||y - A(D(z0hat))||.

PSLD (Rout et al., NeurIPS 2023) adds the "gluing" term to the loss whose gradient is taken,

    omega ||y' - A'(x0hat')|| + gamma ||E(T y' + x0hat' - T A'(x0hat')) - z0hat||,

omega being Latent-DPS's zeta. T is the transpose its code uses (``transpose="source"``):
not A^T but, in its measurements.py, the identity for blur and inpainting and nearest
upsampling for super-resolution; ``transpose="adjoint"`` uses the exact A^T, with which the
glued image is the data-consistent projection of x0hat when A has orthonormal rows (an
inpainting mask). Both T keep constants (T 1 = 1), so the glued image, and gamma, are the
same in either range of intensities. PSLD's code also adds fresh measurement noise to
A'(x0hat') before the norm (``noisy_prediction``); ``sigma_y`` sets it.

Where the sources set a value per task (zeta, omega, gamma), the field's None means "the
source's value for this operator's task", found from the operator's class (through
``Cropped``/``ChannelMean`` wrappers) by ``resolved``; the run uses ``config.resolved(operator)``.

Left as the sources have it, or deliberately not: every sample of a batch is its own run
(norms per image; PSLD's code takes one norm over the whole batch, which is the same for its
scripts' one image); PSLD's script pastes the ground-truth pixels into its saved inpainting
outputs (stable-diffusion/scripts/inverse.py:506-514), which no solver can do, so it is not
done; and the UNet's timestep on a full-length grid is ``schedule.authors_grid``'s.

Counts are per image, as for ReSample: every step is one UNet forward and backward and
one decoder forward and backward; PSLD adds one encoder forward and backward. A(x0hat) is
computed once per step and serves both terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ..operators.base import Operator
from ..operators.blur import Blur
from ..operators.compose import Wrapped
from ..operators.inpainting import Inpainting
from ..operators.superres import BicubicDownsample
from ..priors.base import LatentPrior
from . import SOLVERS
from .consistency import per_sample_mse
from .ddim import Generators, ddim_sigma, ddim_step, randn_like, tweedie
from .resample import Result, StepInfo
from .schedule import GridKind, GridStep, ddim_grid
from .trace import CountingPrior, Trace, counting_operator_calls

Task = Literal["superres", "gaussian-blur", "blur", "inpainting", "nonlinear-blur", "ct", "other"]
Transpose = Literal["source", "adjoint"]
TaskValues = Literal["psld", "resample-celeba", "resample-ffhq"]

# Sources, as cited below: DPS = github DPS2022/diffusion-posterior-sampling; ReSample =
# github soominkwon/resample; PSLD = github LituRout/PSLD (its LDM runs: stable-diffusion/).

# DPS's step per task, in [-1, 1] units: configs/<task>_config.yaml line 4 (``scale``);
# tasks with no config get PosteriorSampling's default, guided_diffusion/condition_methods.py:82.
DPS_ZETA: dict[str, float] = {
    "superres": 0.3,  # super_resolution_config.yaml:4
    "gaussian-blur": 0.3,  # gaussian_deblur_config.yaml:4
    "blur": 0.3,  # motion_deblur_config.yaml:4
    "inpainting": 0.5,  # inpainting_config.yaml:4
    "nonlinear-blur": 0.3,  # nonlinear_deblur_config.yaml:4
}
DPS_ZETA_DEFAULT = 1.0

# PSLD's omega per task, in [-1, 1] units, as its LDM scripts set it:
# stable-diffusion/run/inverse_<task>_ldm.sh:8 (``--omega``); else inverse.py:271's default.
PSLD_OMEGA: dict[str, float] = {
    "superres": 0.9,  # inverse_sr_ldm.sh:8
    "gaussian-blur": 0.1,  # inverse_gb_ldm.sh:8
    "blur": 0.1,  # inverse_mb_ldm.sh:8 (motion blur)
    "inpainting": 0.1,  # inverse_rip_ldm.sh:8, inverse_bip_ldm.sh:8
}
PSLD_OMEGA_DEFAULT = 1.0

# gamma: 0.1 in every LDM script (run/inverse_*_ldm.sh:7) and inverse.py:265's default.
# ReSample's retuned gamma (its paper, appendix A.4, Table 8): 4x super-resolution 1.0 on
# FFHQ and 1.1 on CelebA-HQ, Gaussian deblurring 0.15 on CelebA-HQ; other tasks keep 0.1.
GAMMA: dict[str, dict[str, float]] = {
    "psld": {},
    "resample-celeba": {"superres": 1.1, "gaussian-blur": 0.15},
    "resample-ffhq": {"superres": 1.0},
}
GAMMA_DEFAULT = 0.1


def _preset(table: dict, name: str, overrides: dict):
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(table)}")
    return replace(table[name], **overrides)


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True)
class LatentDPSConfig:
    """Settings of a Latent-DPS run (defaults are the ``paper`` preset: the ReSample
    authors' code, github soominkwon/resample).

    steps: DDIM steps (sample_condition.py:33, ``--ddim_steps`` 500).
    eta: DDIM stochasticity, 0 = deterministic (sample_condition.py:34, ``--ddim_eta`` 0).
    grid: the timesteps, "authors" = the latent-diffusion code's "uniform" grid (its
    ldm/models/diffusion/ddim.py:28), "scheduler" = the prior's diffusers scheduler's.
    zeta: the step on the gradient of the residual norm, in the source's [-1, 1] units:
    0.3 is what its ``ps`` method applies (ldm_inverse/condition_methods.py:58-60; the task
    config's ``scale`` never reaches it, lines 54-56). None: DPS's value for the task (``DPS_ZETA``).
    residual_scale: the factor from our [0, 1] residual to the source's [-1, 1] one (2);
    1 takes zeta in [0, 1] units.
    """

    steps: int = 500
    eta: float = 0.0
    grid: GridKind = "authors"
    zeta: float | None = 0.3
    residual_scale: float = 2.0

    def __post_init__(self):
        _check_choice("grid", self.grid, ("authors", "scheduler"))

    @classmethod
    def preset(cls, name: str, **overrides) -> LatentDPSConfig:
        """A named preset, with any field overridden by keyword."""
        return _preset(PSLD_PRESETS if cls is PSLDConfig else LATENT_DPS_PRESETS, name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, operator: Operator) -> LatentDPSConfig:
        """This config with each None replaced by the source's value for ``operator``'s task."""
        if self.zeta is not None:
            return self
        return replace(self, zeta=DPS_ZETA.get(operator.task, DPS_ZETA_DEFAULT))


@dataclass(frozen=True)
class PSLDConfig(LatentDPSConfig):
    """Settings of a PSLD run (defaults are the ``paper`` preset: PSLD's LDM scripts, github
    LituRout/PSLD stable-diffusion/): those of Latent-DPS, zeta being PSLD's omega, and

    steps: 1000 (scripts/inverse.py:130, not set by the scripts); eta: 0 (inverse.py:156);
    grid: "authors" (ldm/models/diffusion/psld.py:26-28).
    zeta (omega) and gamma: None = the value for the task from ``task_values``: "psld", its
    LDM scripts (``PSLD_OMEGA``; gamma 0.1), or ReSample's retuned gamma ("resample-celeba",
    "resample-ffhq": ``GAMMA``; omega stays PSLD's).
    transpose: T in the gluing term, "source" (PSLD's measurements.py: identity for blur,
    lines 107-108 and 130-131, and inpainting, 148-149; nearest upsampling for
    super-resolution, 77 and 84; the exact adjoint for operators it has none for) or
    "adjoint" (the exact A^T).
    noisy_prediction: add N(0, sigma_y^2) noise to A(x0hat) before the norm, as psld.py:250
    and 320 do (``noiser(meas_pred)``).
    """

    steps: int = 1000
    zeta: float | None = None
    gamma: float | None = None
    task_values: TaskValues = "psld"
    transpose: Transpose = "source"
    noisy_prediction: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_choice("task_values", self.task_values, tuple(GAMMA))
        _check_choice("transpose", self.transpose, ("source", "adjoint"))

    def resolved(self, operator: Operator) -> PSLDConfig:
        task = operator.task
        zeta = PSLD_OMEGA.get(task, PSLD_OMEGA_DEFAULT) if self.zeta is None else self.zeta
        gamma = GAMMA[self.task_values].get(task, GAMMA_DEFAULT) if self.gamma is None else self.gamma
        return replace(self, zeta=zeta, gamma=gamma)


LATENT_DPS_PRESETS: dict[str, LatentDPSConfig] = {
    # The ReSample authors' sampler: 500 deterministic DDIM steps on the LDM grid, zeta 0.3.
    "paper": LatentDPSConfig(),
    # A fifth of the steps, on the scheduler's grid (exactly ``steps`` steps for any count,
    # as ReSample's fast preset); the same step size per step.
    "fast": LatentDPSConfig(steps=100, grid="scheduler"),
    # DPS's own pixel-space settings: 1000 ancestral steps (configs/diffusion_config.yaml:
    # sampler ddpm, steps 1000) over the scheduler's full grid, its per-task zeta.
    "dps": LatentDPSConfig(steps=1000, eta=1.0, grid="scheduler", zeta=None),
}

PSLD_PRESETS: dict[str, PSLDConfig] = {
    # PSLD's LDM scripts: 1000 deterministic DDIM steps, omega and gamma per task.
    "paper": PSLDConfig(),
    # A tenth of the steps, on the scheduler's grid, as Latent-DPS's fast preset.
    "fast": PSLDConfig(steps=100, grid="scheduler"),
    # ReSample's retuned gamma (its Table 8), for CelebA-HQ and for FFHQ images.
    "resample-celeba": PSLDConfig(task_values="resample-celeba"),
    "resample-ffhq": PSLDConfig(task_values="resample-ffhq"),
}


def gluing_transpose(operator: Operator, kind: Transpose) -> Callable[[torch.Tensor], torch.Tensor]:
    """T of PSLD's gluing term for the linear ``operator``: its adjoint (``kind="adjoint"``),
    or the pseudo-transpose PSLD's code uses for the task (``"source"``; see ``PSLDConfig``).
    A wrapper's T is the adjoint of its image map after the inner operator's T."""
    if isinstance(operator, Wrapped):
        inner = gluing_transpose(operator.inner, kind)
        return lambda y: operator.image_map.adjoint(inner(y))
    if kind == "source":
        if isinstance(operator, BicubicDownsample):
            return lambda y: F.interpolate(y, scale_factor=operator.scale, mode="nearest")
        if isinstance(operator, (Blur, Inpainting)):
            return lambda y: y
    return operator.adjoint


def latent_dps(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: LatentDPSConfig,
    *,
    sigma_y: float,
    image_size: tuple[int, int] | None = None,
    generator: Generators = None,
    callback: Callable[[StepInfo], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Result:
    """Latent-DPS restorations of the images measured as ``y`` (batch N: N independent
    runs); the arguments are those of ``resample``. ``sigma_y`` is accepted for the shared
    interface and unused: DPS's step does not depend on the noise level."""
    return _guided_ddim(
        y, operator, prior, config.resolved(operator), None, 0.0, image_size, generator, callback, autocast
    )


def psld(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: PSLDConfig,
    *,
    sigma_y: float,
    image_size: tuple[int, int] | None = None,
    generator: Generators = None,
    callback: Callable[[StepInfo], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Result:
    """PSLD restorations of the images measured as ``y``; as ``latent_dps``, for a linear
    operator (one with ``adjoint``) only. ``sigma_y`` is the std of the noise added to each
    prediction A(x0hat) when ``config.noisy_prediction`` (as PSLD's code does)."""
    if not operator.linear:
        raise ValueError(
            f"PSLD needs a linear operator (its gluing term uses A^T); {type(operator).__name__} is not"
        )
    refused = SOLVERS["psld"].refuses(operator.linear, prior.space)  # a pixel prior: no gluing term
    if refused:
        raise ValueError(refused)
    config = config.resolved(operator)
    transpose = gluing_transpose(operator, config.transpose)
    noise = sigma_y if config.noisy_prediction else 0.0
    return _guided_ddim(
        y, operator, prior, config, transpose, noise, image_size, generator, callback, autocast
    )


def _guided_ddim(
    y, operator, prior, config, transpose, noise_std, image_size, generator, callback, autocast
) -> Result:
    """The loop both share. ``transpose`` is PSLD's T (None: Latent-DPS, no gluing term);
    ``noise_std`` that of the noise added to each prediction A(x0hat)."""
    trace = Trace()
    net = CountingPrior(prior, trace, autocast)
    n = y.shape[0]
    h, w = image_size or tuple(y.shape[-2:])
    y = operator.observed(y)
    observed = operator.measurement_count(y).to(y) / y[0].numel()
    grid = ddim_grid(prior, config.steps, config.grid)
    with counting_operator_calls(operator, trace), trace.timed("total"):
        z = randn_like(torch.empty(n, *prior.latent_shape(h, w), device=prior.device), generator)
        for i, step in enumerate(grid):
            with trace.timed("sampling"):
                z = _guided_step(net, operator, y, z, step, config, transpose, noise_std, generator)
            if callback is not None:
                callback(StepInfo(i + 1, len(grid), step.t, None, None))
        with torch.no_grad():
            x = net.decode(z).clamp(0, 1)
            trace.final_residual = (per_sample_mse(operator(x), y) / observed).sqrt().tolist()
    return Result(x, z, trace)


def _guided_step(net, operator, y, z, step: GridStep, config, transpose, noise_std, generator):
    """One DDIM step from z_t, then the gradient step on the Latent-DPS (+ gluing) loss, each
    image's loss its own norms."""
    glue = transpose is not None
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        eps = net.eps(z, step.t)
        z0hat = tweedie(z, eps, step.abar)
        sigma = ddim_sigma(step.abar, step.abar_next, config.eta)
        noise = randn_like(z, generator) if sigma else None
        z_prev = ddim_step(z0hat.detach(), eps.detach(), step.abar_next, sigma, noise)
        x0hat = net.decode(z0hat)
        ax = operator(x0hat)
        prediction = ax + noise_std * randn_like(ax, generator) if noise_std else ax
        residual = (y - prediction).flatten(1).norm(dim=1)
        loss = config.zeta * config.residual_scale * residual
        if glue:
            glued = transpose(y) + x0hat - transpose(ax)
            loss = loss + config.gamma * (net.encode(glued) - z0hat).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    net.count_backward(z.shape[0], unet=True, decoder=True, encoder=glue)
    return (z_prev - grad).detach()


__all__ = [
    "LATENT_DPS_PRESETS",
    "PSLD_PRESETS",
    "LatentDPSConfig",
    "PSLDConfig",
    "gluing_transpose",
    "latent_dps",
    "psld",
]
