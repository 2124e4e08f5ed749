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
from .consistency import (
    UNIT_SCALE,
    Fit,
    StopRule,
    Units,
    fit_latent,
    fit_latent_gauss_newton,
    fit_pixels_adam,
    fit_pixels_discrepancy,
    per_sample_mse,
)
from .ddim import (
    Generators,
    Z0Estimate,
    authors_z0,
    ddim_sigma,
    ddim_step,
    randn_like,
    resample_ratio,
    stochastic_resample,
    tweedie,
)
from .schedule import GridKind, GridStep, ddim_grid
from .trace import CountingPrior, Trace, counting_operator_calls

Stage = Literal["pixel", "latent"]


@dataclass(frozen=True)
class ReSampleConfig:
    """Settings of a ReSample run (defaults are the ``paper`` preset: the authors' code,
    soominkwon/resample at 3e332b2, ``ldm/models/diffusion/ddim.py``; line numbers below
    are of that file).

    steps: DDIM steps (sample_condition.py:33). eta: DDIM stochasticity (0 =
    deterministic). timestep_grid: "authors" is the latent-diffusion code's grid
    999, 997, ..., 1 landing on abar_0 (27-57); "scheduler" is the prior's diffusers
    DDIM spacing (998, ..., 0 landing on 1 for "leading").
    dc_every: data consistency at every k-th step (counted from the end, as the
    authors' code does, 273). dc_start: fraction of the trajectory, from pure noise, with
    no data consistency (264). pixel_fraction: the part of the data-consistency window,
    from its start, solved in pixel space; the rest is solved in latent space.
    lookahead: unconditional DDIM steps run ahead of each data-consistency step, whose
    z0 estimate is the starting point of the solve (206, 274-285). lookahead_lag: the
    authors' look-ahead runs the network at the next grid timestep but takes the step's
    coefficients one grid step behind (277); False puts both at the same timestep.
    gamma: scale of the resampling variance (289).
    dps_scale: Latent-DPS step zeta_t = dps_scale * abar_t on the residual norm at every
    step (260; 0 turns it off and saves a UNet and decoder backward pass per step).
    dps_z0, start_z0: the z0 estimate decoded in the DPS term and the one that starts
    each solve: "authors" is (z - (1 - abar) eps) / sqrt(abar) (541, used at 260 and
    280), "tweedie" is (z - sqrt(1 - abar) eps) / sqrt(abar).
    units: "pm1" acts as the authors' code, whose images and measurements are in [-1, 1]:
    the DPS norm, the losses AdamW sees, its pixel step and weight decay (towards grey)
    and ``stop_mse`` are those of [-1, 1] quantities (residuals twice the [0, 1] ones);
    "unit" takes all of them on [0, 1].
    pixel_solver: "adam" (AdamW on the pixels, 337-370) or "operator" (the operator's
    regularised least-squares solve, lam chosen by the discrepancy principle; linear
    operators only, nonlinear ones fall back to "adam").
    latent_solver: "adam" (AdamW through the decoder for at most ``latent_iters`` steps of
    ``latent_lr``, as the authors' code does) or "gauss_newton" (CGLS on the problem
    linearised at the latent, relinearised every few iterations, Jacobian products by a
    decoder backward pass and a forward difference; at most ``latent_iters`` iterations,
    stopped by ``stop``'s target alone: ``consistency.fit_latent_gauss_newton``; with a
    quantising (VQ) decoder, whose forward differences are no derivative, "adam").
    stop: "threshold" stops an optimisation when its MSE (in ``units``) is below
    ``stop_mse`` (363, 428); "discrepancy" when the residual norm is at most
    tau * sigma_y * sqrt(m). stop_check: "after_step" as the authors' loop (the test of
    an iterate comes after the step from it); "before_step" tests first
    (``consistency.StopRule``). plateau: the window of the plateau test (0: off; 419-426).
    pixel_plateau: the plateau test in pixel solves too (the authors have it in latent
    solves only). final_consistency: one more latent solve on the final z_0 (329-332).
    final_pixel_consistency: the output is not the decoded image D(z_0) but the
    regularised least-squares solution x = argmin ||y - A x||^2 + lam ||x - D(z_0)||^2,
    lam chosen by the discrepancy principle (residual tau * sigma_y * sqrt(m)), so that
    it fits the data to the noise level even where the prior cannot represent the
    image; images whose D(z_0) already fits keep it. Linear operators only (their own
    regularised ``solve``); for a nonlinear operator the step is skipped and
    Result.decoded is None: there is no regularised solve to call, and gradient steps in
    pixel space would overfit the noise unless stopped by a rule of their own.
    Off in ``paper`` (the authors output D(z_0)).

    One difference from the authors' code is kept in every preset: the images of a batch
    are independent problems (norms, losses and stopping per image), where their code,
    run on a batch, would take one norm and one loss over the whole batch. They ran it
    one image at a time, where the two agree.
    """

    steps: int = 500
    eta: float = 0.0
    timestep_grid: GridKind = "authors"
    dc_every: int = 10
    dc_start: float = 1 / 3
    pixel_fraction: float = 0.5
    lookahead: int = 5
    lookahead_lag: bool = True
    gamma: float = 40.0
    dps_scale: float = 0.5
    dps_z0: Z0Estimate = "authors"
    start_z0: Z0Estimate = "authors"
    units: Units = "pm1"
    pixel_solver: Literal["adam", "operator"] = "adam"
    pixel_iters: int = 2000
    pixel_lr: float = 1e-2
    latent_iters: int = 500
    latent_lr: float = 5e-3
    latent_solver: Literal["adam", "gauss_newton"] = "adam"
    stop: Literal["threshold", "discrepancy"] = "threshold"
    stop_mse: float = 1e-6
    tau: float = 1.0
    stop_check: Literal["after_step", "before_step"] = "after_step"
    plateau: int = 200
    pixel_plateau: bool = False
    final_consistency: bool = True
    final_pixel_consistency: bool = False

    @classmethod
    def preset(cls, name: str, **overrides) -> ReSampleConfig:
        """A named preset, with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def resolved(self, operator: Operator) -> ReSampleConfig:
        """This config as it runs with ``operator``: ReSample sets nothing per task."""
        return self

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ReSampleConfig] = {
    # The authors' code (tests/test_paper_oracle.py compares it with an independent port).
    "paper": ReSampleConfig(),
    # Few steps, closed-form/CG pixel solves, discrepancy stopping, no DPS gradient, and
    # the output pulled to the data by a final pixel solve (docs/BENCHMARKS.md: it won on
    # every CT image and on average on real CT slices and photographs). Grid, start
    # estimate and stopping as tuned (docs/BENCHMARKS.md).
    "fast": ReSampleConfig(
        steps=50,
        timestep_grid="scheduler",
        dc_every=2,
        pixel_fraction=0.75,
        lookahead=0,
        dps_scale=0.0,
        start_z0="tweedie",
        units="unit",
        pixel_solver="operator",
        pixel_iters=200,
        latent_iters=50,
        latent_lr=1e-2,
        stop="discrepancy",
        stop_check="before_step",
        plateau=10,
        pixel_plateau=True,
        final_pixel_consistency=True,
    ),
}
# At most 30 decoder backward passes and 50 UNet forwards, no UNet backward (issue 20's
# budget): data consistency at every step, by the operator's own solve in pixel space but
# for the last two steps, which are solved in latent space like the final solve, each by
# at most 10 Gauss-Newton iterations (pixel_fraction 0.9 leaves those two steps of the 33
# in the window of a 50-step run). Chosen on 10 held-out phantoms; the CT table, the
# exact-posterior cases and its cost against `fast` are in docs/BENCHMARKS.md ("`lean`
# against `fast`").
# latent_lr is the step of the AdamW fallback for quantising decoders (VQ), as tuned for
# the AdamW `lean` before it.
PRESETS["lean"] = replace(
    PRESETS["fast"],
    dc_every=1,
    pixel_fraction=0.9,
    latent_iters=10,
    latent_lr=3e-2,
    latent_solver="gauss_newton",
)


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
    generator: Generators = None,
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
    y = operator.observed(y)
    # The solves work with the mean over all entries of y; only a fraction carries data
    # (inpainting: the observed pixels), so targets and reported RMS values are rescaled.
    observed = (operator.measurement_count(y) / y[0].numel()).to(y.device, torch.float32)
    target_mse = (config.tau * sigma_y) ** 2 * observed
    if config.stop == "threshold":  # stop_mse is in the configured units
        target_mse = torch.full_like(observed, config.stop_mse / UNIT_SCALE[config.units] ** 2)
    latent_stop = StopRule(target_mse, config.plateau, config.stop_check)
    pixel_stop = replace(latent_stop, plateau=config.plateau if config.pixel_plateau else 0)
    sigma_data = config.tau * sigma_y * observed.sqrt()
    grid = ddim_grid(prior, config.steps, config.timestep_grid)
    stages = dc_schedule(replace(config, steps=len(grid)))

    def solve_latent(z_init: torch.Tensor) -> Fit:
        if config.latent_solver == "gauss_newton" and prior.continuous_decoder:
            return fit_latent_gauss_newton(
                net, operator, y, z_init, iters=config.latent_iters, target_mse=latent_stop.mse
            )
        return fit_latent(
            net,
            operator,
            y,
            z_init,
            iters=config.latent_iters,
            lr=config.latent_lr,
            stop=latent_stop,
            units=config.units,
        )

    def record(fit: Fit) -> list[float]:
        rms = (fit.rms / observed.sqrt()).tolist()
        trace.residual_per_dc_step.append(rms)
        trace.dc_iterations.append(fit.iterations.tolist())
        return rms

    with counting_operator_calls(operator, trace), trace.timed("total"):
        z = randn_like(torch.empty(n, *prior.latent_shape(h, w), device=prior.device), generator)
        for i, step in enumerate(grid):
            with trace.timed("sampling"):
                z_prev, z0hat = _ddim_with_dps(net, operator, y, z, step, config, generator)
            residual = None
            stage = stages[i]
            if stage is not None:
                if config.lookahead:
                    with trace.timed("lookahead"):
                        z0hat = _lookahead(net, z_prev, grid, i, config)
                with trace.timed(stage):
                    if stage == "pixel":
                        fit = _pixel_fit(operator, y, net.decode(z0hat), config, sigma_data, pixel_stop)
                        z0y = net.encode(fit.value)
                        # What the latent achieves, not the pixel solution it was encoded from.
                        with torch.no_grad():
                            fit.rms = per_sample_mse(operator(net.decode(z0y)), y).sqrt()
                    else:
                        fit = solve_latent(z0hat)
                        z0y = fit.value
                    residual = record(fit)
                    ratio = resample_ratio(step.abar, step.abar_next, config.gamma)
                    z_prev = stochastic_resample(z0y, z_prev, step.abar_next, ratio, generator)
            z = z_prev
            if callback is not None:
                callback(StepInfo(i + 1, len(grid), step.t, stage, residual))
        if config.final_consistency:
            with trace.timed("final"):
                z = solve_latent(z).value
        with torch.no_grad():
            x = net.decode(z).clamp(0, 1)
            decoded = None
            if config.final_pixel_consistency and operator.linear:
                with trace.timed("final_pixel"):
                    decoded, x = x, _final_pixel_solve(operator, y, x, sigma_data, trace)
            trace.final_residual = (per_sample_mse(operator(x), y) / observed).sqrt().tolist()
    return Result(x, z, trace, decoded)


def _z0(z: torch.Tensor, eps: torch.Tensor, abar: float, kind: Z0Estimate) -> torch.Tensor:
    return tweedie(z, eps, abar) if kind == "tweedie" else authors_z0(z, eps, abar)


def _ddim_with_dps(net, operator, y, z, step: GridStep, config: ReSampleConfig, generator):
    """One DDIM step from z_t, with the optional Latent-DPS nudge on the residual norm;
    returns z_{t-1} and the z0 estimate (``start_z0``) that starts a solve here."""
    dps = config.dps_scale > 0
    with torch.set_grad_enabled(dps):
        z = z.detach().requires_grad_(dps)
        eps = net.eps(z, step.t)
        sigma = ddim_sigma(step.abar, step.abar_next, config.eta)
        noise = randn_like(z, generator) if sigma else None
        z_prev = ddim_step(tweedie(z, eps, step.abar), eps, step.abar_next, sigma, noise)
        if dps:
            x0 = net.decode(_z0(z, eps, step.abar, config.dps_z0))
            norm = UNIT_SCALE[config.units] * (y - operator(x0)).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(norm.sum(), z)
            net.count_backward(z.shape[0], unet=True, decoder=True)
            z_prev = z_prev - config.dps_scale * step.abar * grad
    return z_prev.detach(), _z0(z, eps, step.abar, config.start_z0).detach()


@torch.no_grad()
def _lookahead(net, z, grid: list[GridStep], i: int, config: ReSampleConfig) -> torch.Tensor:
    """Run ``config.lookahead`` unconditional DDIM steps ahead from z (at grid[i + 1]) and
    return the z0 estimate of the last; fewer when the trajectory ends first (data
    consistency never runs at the last step, so there is always at least one). With
    ``lookahead_lag`` each step runs the network at grid[j] with the coefficients of
    grid[j - 1], as the authors' code does."""
    for j in range(i + 1, min(i + 1 + config.lookahead, len(grid))):
        coefficients = grid[j - 1] if config.lookahead_lag else grid[j]
        eps = net.eps(z, grid[j].t)
        z0hat = _z0(z, eps, coefficients.abar, config.start_z0)
        z = ddim_step(tweedie(z, eps, coefficients.abar), eps, coefficients.abar_next, 0.0, None)
    return z0hat


def _pixel_fit(operator, y, x_init, config: ReSampleConfig, sigma_data, stop) -> Fit:
    if config.pixel_solver == "operator" and operator.linear:
        return fit_pixels_discrepancy(operator, y, x_init.detach(), sigma_data)
    return fit_pixels_adam(
        operator, y, x_init, iters=config.pixel_iters, lr=config.pixel_lr, stop=stop, units=config.units
    )


def _final_pixel_solve(
    operator: Operator, y: torch.Tensor, decoded: torch.Tensor, target_rms: torch.Tensor, trace: Trace
) -> torch.Tensor:
    """The discrepancy-principle Tikhonov solution around the decoded images, clamped to
    [0, 1] (a projection onto a set holding the truth, so it only brings x closer to it);
    records each image's lam in ``trace``."""
    fit = fit_pixels_discrepancy(operator, y, decoded, target_rms)
    trace.final_pixel_lam = [None if math.isinf(lam) else lam for lam in fit.lam.tolist()]
    return fit.value.clamp(0, 1)
