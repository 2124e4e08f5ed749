"""DiffPIR beside ReSample: plug-and-play data proximal steps between denoising steps.

Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image Restoration", CVPR-W 2023
(Algorithm 1), as the authors' code runs it (github.com/yuanzhi-zhu/DiffPIR, commit 111d26e8;
file:line references below are to that commit). Each step t of the grid, from z_t:

    z0      = (z_t - sqrt(1 - abar_t) eps(z_t, t)) / sqrt(abar_t)            denoise (Tweedie)
    x0      = argmin_x ||y - A(x)||^2 + rho_t ||x - D(z0)||^2                 data proximal step
    rho_t   = lam max(sigma_y, sigma_min)^2 / sigmabar_t^2,  sigmabar_t^2 = (1 - abar_t) / abar_t
    z0      = E(x0)
    epshat  = (z_t - sqrt(abar_t) z0) / sqrt(1 - abar_t)                      effective noise
    z_next  = sqrt(abar_next) z0 + sqrt(1 - zeta) (sqrt(1 - abar_next - s^2) epshat + s xi1)
              + sqrt(zeta) sqrt(1 - abar_next) xi2,     s = the DDIM std of eta, xi ~ N(0, I)

The proximal step is in pixel space, on images in [0, 1] (D and E: the prior's decoder and
encoder; the identity for a pixel-space prior). A linear operator solves it with its own
regularised solve (no gradient through any network); a nonlinear one takes ``prox_steps``
gradient steps on the same objective (``data_step``), still in pixel space only.

Units, as their code has them: sigma_y is the noise std of y in [0, 1] image units (they add
N(0, (2 sigma)^2) to the [-1, 1] image, main_ddpir_deblur.py:198-200, and set
sigma = max(0.001, sigma) in [0, 1] units, :49); sigmabar_t is the denoiser's noise level in
the model's [-1, 1] units (:89, :212); the blur and super-resolution solves run on [0, 1]
images (:291-293, main_ddpir_sisr.py:316-318) with tau = rho_t (:216, :288). Our operators act
on [0, 1] images, so ``operator.solve(y, x0, rho_t)`` is their step. (Their inpainting step
runs on [-1, 1] images, main_ddpir_inpainting.py:267, where the masked solve is the same.)
For a latent prior rho_t uses the latent's sigmabar_t, as a pixel prior's would.

Where this differs from their code:
- Start: z_T ~ N(0, I). Theirs noises the measurement (the blurred image, or the upsampled
  one for super-resolution) to t = 999 (main_ddpir_deblur.py:228-231), whose weight there,
  sqrt(abar_999) ~ 0.006, is negligible; a latent prior has no image-sized y to noise.
- End: every grid step is a full step, the last landing on abar = 1 (Algorithm 1 ends at
  x_0 = x0 of its last step). Their last network call, at t = 0, skips the data step and
  they output x_0 as it stands (main_ddpir_deblur.py:284, :339-350), noise std
  sqrt(1 - abar_0) = 0.01. With the quad grid the network calls are the same in number;
  with "uniform" they make one more, at t = 0, whose output they drop.
- eta: the DDIM std with abar_t / abar_next (``ddim.ddim_sigma``); theirs uses the
  one-step beta_t (main_ddpir_deblur.py:345). Both are 0 at eta = 0, as in every preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch

from ..operators.base import Operator
from ..priors.base import LatentPrior
from .consistency import per_sample_mse
from .ddim import Generators, ddim_sigma, randn_like, tweedie
from .resample import Result, StepInfo
from .schedule import GridStep, ddim_grid
from .trace import CountingPrior, Trace, counting_operator_calls

Grid = Literal["quad", "uniform", "scheduler", "authors"]

# (lam, zeta) of the authors' runs, by task.
TASK_SETTINGS: dict[str, tuple[float, float]] = {
    # lam = 1 x 7, zeta = 0.1 x 3: configs/deblur.yaml:16-17 scaled by the loop that runs
    # it, main_ddpir.py:565-567 (likewise main_ddpir_deblur.py:50, :59, :440-442).
    "blur": (7.0, 0.3),
    "gaussian-blur": (7.0, 0.3),
    # zeta: configs/sisr.yaml:17 (main_ddpir_sisr.py:485). lam: their loop sweeps 2..12
    # (main_ddpir.py:556, main_ddpir_sisr.py:482) and names no single value; we take 7, the
    # middle of that sweep and their deblurring value.
    "superres": (7.0, 0.25),
    # configs/inpaint.yaml:16-17, run once by main_ddpir.py:574-577 (main_ddpir_inpainting.py:52, :55).
    "inpainting": (1.0, 1.0),
}
# Operators of no task of theirs (CT, dense matrices, nonlinear models) get deblurring's
# values, their setting for a noisy measurement.
DEFAULT_TASK = "blur"


@dataclass(frozen=True)
class DiffPIRConfig:
    """Settings of a DiffPIR run (defaults are the ``paper`` preset).

    steps: grid steps, each one network call (their ``iter_num``: 100 for deblurring and
    super-resolution, configs/deblur.yaml:9, configs/sisr.yaml:9; 20 for inpainting,
    configs/inpaint.yaml:9: pass steps=20 to run theirs). grid: "quad" or "uniform", their
    ``skip_type`` (configs/*.yaml:23: quad), over the training timesteps (``diffpir_grid``);
    or "scheduler" / "authors", the DDIM grids of ``schedule.ddim_grid``.
    lam: lambda in rho_t = lam sigma^2 / sigmabar_t^2. zeta: the share of fresh noise in the
    re-noising (0: deterministic, 1: all fresh). None: the authors' value for the
    operator's task (``TASK_SETTINGS``, ``resolved``). eta: DDIM stochasticity inside the
    predicted-noise part (configs/*.yaml:24: 0). inner_iters: repetitions of each step,
    re-noising back to t between them (their ``iter_num_U``, configs/*.yaml:10: 1).
    sigma_min: floor on sigma_y in rho_t (their max(0.001, sigma), main_ddpir_deblur.py:49).
    prox_steps, prox_lr: the nonlinear data step, gradient descent with backtracking from
    step size min(1 / (2 rho_t), prox_lr); one step of 1 / (2 rho_t) is their first-order
    variant (main_ddpir_deblur.py:312-313, the slides' x0 - sigmabar^2 / (2 lam sigma^2)
    grad ||y - H(x0)||^2). Linear operators ignore both.
    """

    steps: int = 100
    grid: Grid = "quad"
    lam: float | None = None
    zeta: float | None = None
    eta: float = 0.0
    inner_iters: int = 1
    sigma_min: float = 1e-3
    prox_steps: int = 1
    prox_lr: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.inner_iters < 1 or self.prox_steps < 0:
            raise ValueError("steps and inner_iters must be >= 1 and prox_steps >= 0")
        if self.zeta is not None and not 0 <= self.zeta <= 1:
            raise ValueError(f"zeta must be in [0, 1], got {self.zeta}")
        if self.lam is not None and self.lam <= 0:
            raise ValueError(f"lam must be positive, got {self.lam}")

    @classmethod
    def preset(cls, name: str, **overrides) -> DiffPIRConfig:
        """A named preset, with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def resolved(self, operator: Operator) -> DiffPIRConfig:
        """This config with ``lam`` and ``zeta`` left as None set to the authors' values
        for ``operator``'s task (``Operator.task``); record this one to know what ran."""
        lam, zeta = TASK_SETTINGS.get(operator.task, TASK_SETTINGS[DEFAULT_TASK])
        return replace(
            self, lam=lam if self.lam is None else self.lam, zeta=zeta if self.zeta is None else self.zeta
        )

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, DiffPIRConfig] = {
    # The authors' settings (see the fields); lam and zeta by task.
    "paper": DiffPIRConfig(),
    # Their 20-step setting (the NFE-20 rows of their tables; inpainting's default), with
    # a few more gradient steps where the operator is nonlinear.
    "fast": DiffPIRConfig(steps=20, prox_steps=3),
}


def diffpir_grid(prior: LatentPrior, config: DiffPIRConfig) -> list[GridStep]:
    """The steps of a run, in sampling order, the last landing on abar = 1.

    "quad": their seq = int(sqrt(linspace(0, T^2, steps))), last entry minus 1; "uniform":
    seq = 0, c, 2c, ... (c = T // steps), ``steps`` of them (they append T - 1, a final call
    whose output they drop); timestep T - 1 - seq (main_ddpir_deblur.py:244-251, :258-260).
    """
    if config.grid in ("scheduler", "authors"):
        return ddim_grid(prior, config.steps, config.grid)
    abar = prior.alphas_cumprod
    total = len(abar)
    if not (2 if config.grid == "quad" else 1) <= config.steps <= total:
        raise ValueError(f"a {config.grid} grid takes 2 to {total} steps, not {config.steps}")
    if config.grid == "quad":
        seq = [int(s) for s in np.sqrt(np.linspace(0, total**2, config.steps))]
        seq[-1] -= 1
    else:
        seq = [i * (total // config.steps) for i in range(config.steps)]
    ts = [total - 1 - s for s in seq]
    landing = [float(abar[t]) for t in ts[1:]] + [1.0]
    return [GridStep(t, float(abar[t]), a) for t, a in zip(ts, landing, strict=True)]


def data_weight(abar: float, lam: float, sigma: float) -> float:
    """rho_t = lam sigma^2 / sigmabar_t^2 with sigmabar_t^2 = (1 - abar) / abar."""
    return lam * sigma**2 * abar / (1 - abar)


def diffpir(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: DiffPIRConfig,
    *,
    sigma_y: float,
    image_size: tuple[int, int] | None = None,
    generator: Generators = None,
    callback: Callable[[StepInfo], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Result:
    """DiffPIR restorations of the images measured as ``y`` (batch N: N independent runs);
    the arguments are those of ``resample``. ``sigma_y`` (floored at ``sigma_min``) sets the
    data weight rho_t. No network is differentiated; a nonlinear operator is."""
    cfg = config.resolved(operator)
    trace = Trace()
    net = CountingPrior(prior, trace, autocast)
    h, w = image_size or tuple(y.shape[-2:])
    y = operator.observed(y)
    observed = operator.measurement_count(y) / y[0].numel()
    sigma = max(sigma_y, cfg.sigma_min)
    grid = diffpir_grid(prior, cfg)
    with counting_operator_calls(operator, trace), trace.timed("total"), torch.no_grad():
        z = randn_like(torch.empty(y.shape[0], *prior.latent_shape(h, w), device=prior.device), generator)
        for i, step in enumerate(grid):
            a, a_next = step.abar, step.abar_next
            for u in range(cfg.inner_iters):
                with trace.timed("sampling"):
                    z0 = tweedie(z, net.eps(z, step.t), a)
                with trace.timed("pixel"):
                    x0 = data_step(operator, y, net.decode(z0), data_weight(a, cfg.lam, sigma), cfg)
                    rms = (per_sample_mse(operator(x0), y) / observed).sqrt().tolist()
                    trace.residual_per_dc_step.append(rms)
                    z0 = net.encode(x0)
                with trace.timed("sampling"):
                    z = renoise(z, z0, a, a_next, cfg.zeta, cfg.eta, generator)
                    if u + 1 < cfg.inner_iters:  # repeat the step: back from abar_next to abar_t
                        z = rediffuse(z, a_next, a, generator)
            if callback is not None:
                callback(StepInfo(i + 1, len(grid), step.t, "pixel", rms))
        x = net.decode(z).clamp(0, 1)
        trace.final_residual = (per_sample_mse(operator(x), y) / observed).sqrt().tolist()
    return Result(x, z, trace)


def renoise(
    z: torch.Tensor,
    z0: torch.Tensor,
    abar: float,
    abar_next: float,
    zeta: float,
    eta: float,
    generator: Generators,
) -> torch.Tensor:
    """z_next from z_t and the data-consistent z0: the effective noise
    epshat = (z_t - sqrt(abar) z0) / sqrt(1 - abar) (DDIM-stepped with ``eta``) mixed with
    fresh noise, sqrt(1 - zeta) : sqrt(zeta) (main_ddpir_deblur.py:344-347)."""
    eps_hat = (z - math.sqrt(abar) * z0) / math.sqrt(1 - abar)
    s = ddim_sigma(abar, abar_next, eta) if zeta < 1 else 0.0
    kept = math.sqrt(max(1 - abar_next - s**2, 0.0)) * eps_hat
    if s:
        kept = kept + s * randn_like(z, generator)
    z_next = math.sqrt(abar_next) * z0 + math.sqrt(1 - zeta) * kept
    if zeta and abar_next < 1:
        z_next = z_next + math.sqrt(zeta * (1 - abar_next)) * randn_like(z, generator)
    return z_next


def rediffuse(z: torch.Tensor, abar: float, abar_back: float, generator: Generators) -> torch.Tensor:
    """z at abar noised forward to abar_back < abar (main_ddpir_deblur.py:353-357)."""
    ratio = abar_back / abar
    std = math.sqrt(max(1 - abar_back - ratio * (1 - abar), 0.0))
    return math.sqrt(ratio) * z + std * randn_like(z, generator)


def data_step(
    operator: Operator, y: torch.Tensor, x0: torch.Tensor, rho: float, config: DiffPIRConfig
) -> torch.Tensor:
    """argmin_x ||y - A(x)||^2 + rho ||x - x0||^2 per image, images in [0, 1]: the
    operator's regularised solve when it is linear, else ``config.prox_steps`` gradient
    steps from x0 (``gradient_prox``)."""
    if operator.linear:
        return operator.solve(y, x0, rho)
    return gradient_prox(operator, y, x0, rho, config.prox_steps, config.prox_lr)


def gradient_prox(
    operator: Operator, y: torch.Tensor, x0: torch.Tensor, rho: float, steps: int, lr: float
) -> torch.Tensor:
    """``steps`` gradient steps on f(x) = ||y - A(x)||^2 + rho ||x - x0||^2 from x0, each
    image on its own: the step size starts at min(1 / (2 rho), lr) and is halved until
    f(x - s g) <= f(x) - c s ||g||^2 (Armijo, c = 1e-4); an image with no such step stays
    put. From x0 the first trial is x0 - grad ||y - A(x0)||^2 / (2 rho), the authors'
    first-order step, accepted when lr allows it and rho outweighs the data term's
    curvature along the gradient (late in the run, where rho_t is large)."""

    def objective(x):
        return (operator(x) - y).pow(2).flatten(1).sum(1) + rho * (x - x0).pow(2).flatten(1).sum(1)

    def per_image(v):
        return v.reshape(-1, *([1] * (x0.ndim - 1)))

    x = x0.detach()
    size = torch.full((x.shape[0],), min(lr, 1 / (2 * rho)), dtype=x.dtype, device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            v = x.detach().requires_grad_(True)
            f = objective(v)
            (g,) = torch.autograd.grad(f.sum(), v)
        f, gg = f.detach(), g.pow(2).flatten(1).sum(1)
        todo = gg > 0
        for _ in range(_MAX_HALVINGS):
            if not bool(todo.any()):
                break
            trial = x - per_image(size) * g
            ok = todo & (objective(trial) <= f - _ARMIJO * size * gg)
            x = torch.where(per_image(ok), trial, x)
            todo = todo & ~ok
            size = torch.where(todo, size / 2, size)
    return x


_MAX_HALVINGS = 30
_ARMIJO = 1e-4


__all__ = [
    "PRESETS",
    "TASK_SETTINGS",
    "DiffPIRConfig",
    "data_step",
    "data_weight",
    "diffpir",
    "diffpir_grid",
    "gradient_prox",
    "rediffuse",
    "renoise",
]
