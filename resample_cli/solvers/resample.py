"""ReSample: latent DDIM with hard data consistency and stochastic resampling.

Song, Kwon et al., "Solving Inverse Problems with Latent Diffusion Models via Hard
Data Consistency", ICLR 2024, Algorithm 1. ``ReSampleConfig.preset("paper")`` runs the
authors' settings; ``preset("fast")`` is this project's cheaper schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch

from ..operators.base import Operator
from ..priors.base import LatentPrior
from .consistency import Fit, StopRule, fit_latent, fit_pixels_adam, fit_pixels_discrepancy, per_sample_mse
from .ddim import ddim_sigma, ddim_step, randn_like, resample_variance, stochastic_resample, tweedie
from .trace import CountingPrior, Trace, counting_operator_calls

Stage = Literal["pixel", "latent"]


@dataclass(frozen=True)
class ReSampleConfig:
    """Settings of a ReSample run (defaults are the ``paper`` preset).

    steps: DDIM steps. eta: DDIM stochasticity (0 = deterministic).
    dc_every: data consistency at every k-th step (counted from the end, as the
    authors' code does). dc_start: fraction of the trajectory, from pure noise, with
    no data consistency. pixel_fraction: the part of the data-consistency window,
    from its start, solved in pixel space; the rest is solved in latent space.
    lookahead: unconditional DDIM steps run ahead of each data-consistency step, whose
    z0hat is the starting point of the solve. gamma: scale of the resampling variance.
    dps_scale: Latent-DPS step zeta_t = dps_scale * abar_t on ||y - A(D(z0hat))|| at
    every step (0 turns it off and saves a UNet and decoder backward pass per step).
    pixel_solver: "adam" (AdamW on the pixels) or "operator" (the operator's
    regularised least-squares solve, lam chosen by the discrepancy principle; linear
    operators only, nonlinear ones fall back to "adam").
    stop: "threshold" stops an optimisation when its MSE is below ``stop_mse``;
    "discrepancy" when the residual norm is at most tau * sigma_y * sqrt(m).
    plateau: also stop when the loss is no lower than this many iterations before
    (0: off). final_consistency: one more latent solve on the final z_0.
    final_pixel_consistency: the output is not the decoded image D(z_0) but the
    regularised least-squares solution x = argmin ||y - A x||^2 + lam ||x - D(z_0)||^2,
    lam chosen by the discrepancy principle (residual tau * sigma_y * sqrt(m)), so that
    it fits the data to the noise level even where the prior cannot represent the
    image; images whose D(z_0) already fits keep it. Linear operators only (their own
    regularised ``solve``); for a nonlinear operator the step is skipped and
    Result.decoded is None: there is no regularised solve to call, and gradient steps in
    pixel space would overfit the noise unless stopped by a rule of their own.
    Off in ``paper`` (the authors output D(z_0)).
    """

    steps: int = 500
    eta: float = 0.0
    dc_every: int = 10
    dc_start: float = 1 / 3
    pixel_fraction: float = 0.5
    lookahead: int = 5
    gamma: float = 40.0
    dps_scale: float = 0.5
    pixel_solver: Literal["adam", "operator"] = "adam"
    pixel_iters: int = 2000
    pixel_lr: float = 1e-2
    latent_iters: int = 500
    latent_lr: float = 5e-3
    stop: Literal["threshold", "discrepancy"] = "threshold"
    stop_mse: float = 1e-6
    tau: float = 1.0
    plateau: int = 200
    final_consistency: bool = True
    final_pixel_consistency: bool = False

    @classmethod
    def preset(cls, name: str, **overrides) -> ReSampleConfig:
        """A named preset, with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ReSampleConfig] = {
    # The authors' settings, as docs/design.md ("Presets") lists them; not yet their behaviour (README).
    "paper": ReSampleConfig(),
    # Few steps, closed-form/CG pixel solves, discrepancy stopping, no DPS gradient, and
    # the output pulled to the data by a final pixel solve (docs/BENCHMARKS.md: it won on
    # every CT image and on average on real CT slices and photographs).
    "fast": ReSampleConfig(
        steps=50,
        dc_every=2,
        pixel_fraction=0.75,
        lookahead=0,
        dps_scale=0.0,
        pixel_solver="operator",
        pixel_iters=200,
        latent_iters=50,
        latent_lr=1e-2,
        stop="discrepancy",
        plateau=10,
        final_pixel_consistency=True,
    ),
}


@dataclass
class StepInfo:
    """What a solver tells its callback after each DDIM step."""

    step: int  # 1-based
    total: int
    timestep: int
    stage: Stage | None  # the data-consistency stage run at this step, if any
    residual: list[float] | None  # RMS residual of each image's data-consistent estimate


@dataclass
class Result:
    x: torch.Tensor  # restored images in [0, 1]
    z: torch.Tensor  # their latents
    trace: Trace
    decoded: torch.Tensor | None = None  # D(z) in [0, 1] when a final pixel solve replaced it as x


def dc_schedule(config: ReSampleConfig) -> list[Stage | None]:
    """The data-consistency stage of each step, in sampling order, as the authors'
    code decides it from the count-down index = steps - 1 - i."""
    s = config.steps
    last_index = s - math.floor(s * config.dc_start)
    split = math.floor(s * (1 - config.dc_start) * (1 - config.pixel_fraction))
    stages: list[Stage | None] = []
    for i in range(s):
        index = s - 1 - i
        if 0 < index <= last_index and index % config.dc_every == 0:
            stages.append("pixel" if index >= split else "latent")
        else:
            stages.append(None)
    return stages


def resample(
    y: torch.Tensor,
    operator: Operator,
    prior: LatentPrior,
    config: ReSampleConfig,
    *,
    sigma_y: float,
    image_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Result:
    """Restore the images measured as ``y`` (batch N: N independent restorations).

    ``sigma_y`` is the measurement noise std in the units of y. ``image_size`` is the
    (H, W) of the unknown image (default: that of y). ``autocast`` runs the networks
    (not the operator or the solves) in bfloat16/float16.
    """
    trace = Trace()
    net = CountingPrior(prior, trace, autocast)
    n = y.shape[0]
    h, w = image_size or tuple(y.shape[-2:])
    # The solves work with the mean over all entries of y; only a fraction carries data
    # (inpainting: the observed pixels), so targets and reported RMS values are rescaled.
    observed = operator.measurement_count(y) / y[0].numel()
    target_mse = (config.tau * sigma_y) ** 2 * observed if config.stop == "discrepancy" else config.stop_mse
    stop = StopRule(target_mse, config.plateau)
    timesteps = prior.timesteps(config.steps)
    abar = prior.alphas_cumprod
    stages = dc_schedule(replace(config, steps=len(timesteps)))

    def abar_after(i: int) -> float:
        return float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else prior.final_alpha_cumprod

    def record(fit: Fit) -> list[float]:
        rms = (fit.rms / math.sqrt(observed)).tolist()
        trace.residual_per_dc_step.append(rms)
        trace.dc_iterations.append(fit.iterations.tolist())
        return rms

    with counting_operator_calls(operator, trace), trace.stage("total"):
        z = randn_like(torch.empty(n, *prior.latent_shape(h, w), device=prior.device), generator)
        for i, t in enumerate(timesteps):
            a_t, a_prev = float(abar[t]), abar_after(i)
            with trace.stage("sampling"):
                z_prev, z0hat = _ddim_with_dps(net, operator, y, z, t, a_t, a_prev, config, generator)
            residual = None
            stage = stages[i]
            if stage is not None:
                if config.lookahead:
                    with trace.stage("lookahead"):
                        z0hat = _lookahead(net, z_prev, timesteps, i, config.lookahead, abar_after)
                with trace.stage(stage):
                    if stage == "pixel":
                        fit = _pixel_fit(
                            net, operator, y, net.decode(z0hat), config, sigma_y * math.sqrt(observed), stop
                        )
                        z0y = net.encode(fit.value)
                    else:
                        fit = fit_latent(
                            net,
                            operator,
                            y,
                            z0hat,
                            iters=config.latent_iters,
                            lr=config.latent_lr,
                            stop=stop,
                        )
                        z0y = fit.value
                    residual = record(fit)
                    sigma2 = resample_variance(a_t, a_prev, config.gamma)
                    z_prev = stochastic_resample(z0y, z_prev, a_prev, sigma2, generator)
            z = z_prev
            if callback is not None:
                callback(StepInfo(i + 1, len(timesteps), t, stage, residual))
        if config.final_consistency:
            with trace.stage("final"):
                fit = fit_latent(
                    net, operator, y, z, iters=config.latent_iters, lr=config.latent_lr, stop=stop
                )
                z = fit.value
        with torch.no_grad():
            x = net.decode(z).clamp(0, 1)
            decoded = None
            if config.final_pixel_consistency and operator.linear:
                with trace.stage("final_pixel"):
                    target = config.tau * sigma_y * math.sqrt(observed)
                    decoded, x = x, _final_pixel_solve(operator, y, x, target, trace)
            trace.final_residual = (per_sample_mse(operator(x), y) / observed).sqrt().tolist()
    return Result(x, z, trace, decoded)


def _ddim_with_dps(net, operator, y, z, t, a_t, a_prev, config, generator):
    """One DDIM step from z_t, with the optional Latent-DPS nudge on the residual norm."""
    dps = config.dps_scale > 0
    with torch.set_grad_enabled(dps):
        z = z.detach().requires_grad_(dps)
        eps = net.eps(z, t)
        z0hat = tweedie(z, eps, a_t)
        sigma = ddim_sigma(a_t, a_prev, config.eta)
        noise = randn_like(z, generator) if sigma else None
        z_prev = ddim_step(z0hat, eps, a_prev, sigma, noise)
        if dps:
            norm = (y - operator(net.decode(z0hat))).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(norm.sum(), z)
            net.count_backward(z.shape[0], unet=True, decoder=True)
            z_prev = z_prev - config.dps_scale * a_t * grad
    return z_prev.detach(), z0hat.detach()


@torch.no_grad()
def _lookahead(net, z, timesteps, i, k, abar_after):
    """Run k unconditional DDIM steps ahead from z (at timesteps[i + 1]) and return the
    z0hat of the last; fewer when the trajectory ends first (data consistency never
    runs at the last step, so there is always at least one)."""
    for j in range(i + 1, min(i + 1 + k, len(timesteps))):
        a = float(net.prior.alphas_cumprod[timesteps[j]])
        eps = net.eps(z, timesteps[j])
        z0hat = tweedie(z, eps, a)
        z = ddim_step(z0hat, eps, abar_after(j), 0.0, None)
    return z0hat


def _pixel_fit(net, operator, y, x_init, config, sigma_y, stop) -> Fit:
    if config.pixel_solver == "operator" and operator.linear:
        return fit_pixels_discrepancy(operator, y, x_init.detach(), config.tau * sigma_y)
    return fit_pixels_adam(operator, y, x_init, iters=config.pixel_iters, lr=config.pixel_lr, stop=stop)


def _final_pixel_solve(
    operator: Operator, y: torch.Tensor, decoded: torch.Tensor, target_rms: float, trace: Trace
) -> torch.Tensor:
    """The discrepancy-principle Tikhonov solution around the decoded images, clamped to
    [0, 1] (a projection onto a set holding the truth, so it only brings x closer to it);
    records each image's lam in ``trace``."""
    fit = fit_pixels_discrepancy(operator, y, decoded, target_rms)
    trace.final_pixel_lam = [None if math.isinf(lam) else lam for lam in fit.lam.tolist()]
    return fit.value.clamp(0, 1)
