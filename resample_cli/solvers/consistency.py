"""Hard data consistency: fit the measurement in latent or pixel space.

Every function works on a batch of independent problems and stops each one on its
own, so a batch of N costs what its slowest member needs, and each image's result is
what it would be alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..operators.base import LinearOperator, Operator
from .krylov import tikhonov_by_discrepancy
from .trace import CountingPrior


@dataclass(frozen=True)
class StopRule:
    """When an optimisation stops, per image.

    ``mse``: (N,) per-image target of the loss. ``plateau``: the window of the plateau test
    (0: none). ``check``: "after_step" is the authors' loop: the loss of an iterate is
    tested after the step from it was taken (so the solve returns one step past the
    iterate that met the test), stop when it is strictly below ``mse`` or, from iteration
    ``plateau`` on, strictly above the loss ``plateau`` iterations before. "before_step"
    tests first (an image that stops keeps the iterate its loss was measured on), stops at
    or below ``mse``, and tests the plateau only every ``plateau`` iterations, against
    the previous such checkpoint, with at-or-above.
    """

    mse: torch.Tensor
    plateau: int = 0
    check: Literal["after_step", "before_step"] = "before_step"


@dataclass
class Fit:
    value: torch.Tensor  # the fitted latents or images
    rms: torch.Tensor  # (N,) RMS residual at the last evaluated iterate
    iterations: torch.Tensor  # (N,) gradient steps taken
    # (N,) the regularisation weight of a regularised solve; inf where the start was kept
    lam: torch.Tensor | None = None


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def adam_fit(
    init: torch.Tensor,
    mse_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    iters: int,
    lr: float,
    stop: StopRule,
    on_step: Callable[[int], None] | None = None,
    whole_batch: bool = False,
) -> Fit:
    """Minimise ``mse_of(v[idx], idx)`` (one loss per image) with AdamW (torch's defaults,
    weight decay 0.01), as the authors' code does. An image stops when its loss meets
    ``stop``; stopped images are held fixed and left out of later evaluations, unless
    ``whole_batch`` (for an operator that only applies to the whole batch: one mask per
    image), where they are evaluated and ignored. ``on_step(k)`` is told how many images
    the backward pass went through.
    """
    n = init.shape[0]
    v = init.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=lr)
    active = torch.ones(n, dtype=torch.bool, device=init.device)
    last = torch.full((n,), float("inf"), device=init.device)
    history = torch.full((iters, n), float("nan"), device=init.device)  # losses, by iteration
    taken = torch.zeros(n, dtype=torch.long, device=init.device)
    target = stop.mse.to(init.device, torch.float32)
    window, after = stop.plateau, stop.check == "after_step"
    everyone = torch.arange(n, device=init.device)
    for k in range(iters):
        idx = everyone if whole_batch else active.nonzero().squeeze(1)
        running = active[idx]
        opt.zero_grad(set_to_none=True)
        loss = mse_of(v[idx], idx)
        measured = loss.detach()
        last[idx[running]] = measured[running]
        history[k, idx] = measured
        done = torch.zeros_like(running)
        if not after:
            done = measured <= target[idx]
            if window and k and k % window == 0:
                done |= measured >= history[k - window, idx]
            done &= running
            active[idx[done]] = False
            if not bool(active.any()):
                break
        # Images that stopped here keep the iterate their loss was measured on.
        loss.masked_fill(done | ~running, 0).sum().backward()
        held = v.detach()[~active].clone()
        opt.step()
        with torch.no_grad():
            v[~active] = held
        taken[active] += 1
        if on_step is not None:
            on_step(idx.numel())
        if after:
            done = measured < target[idx]
            if window and k >= window:
                done |= history[k - window, idx] < measured
            active[idx[done & running]] = False
            if not bool(active.any()):
                break
    return Fit(v.detach(), last.sqrt(), taken)


Units = Literal["pm1", "unit"]
# How much a residual grows when images and measurements are taken to [-1, 1] (x' = 2x - 1,
# y' = 2y - 1, A'(x') = 2 A((x' + 1) / 2) - 1), the authors' units, from [0, 1].
UNIT_SCALE: dict[Units, float] = {"pm1": 2.0, "unit": 1.0}


def fit_latent(
    net: CountingPrior,
    operator: Operator,
    y: torch.Tensor,
    z_init: torch.Tensor,
    *,
    iters: int,
    lr: float,
    stop: StopRule,
    units: Units = "unit",
) -> Fit:
    """z0y = argmin_z ||y - A(D(z))||^2 by AdamW through the decoder, from z_init. The loss
    AdamW sees is the mean squared residual in ``units``; ``stop.mse`` and the returned
    ``rms`` are in y's units."""
    s2 = UNIT_SCALE[units] ** 2

    def mse_of(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return s2 * per_sample_mse(operator(net.decode(z)), y[idx])

    fit = adam_fit(
        z_init,
        mse_of,
        iters=iters,
        lr=lr,
        stop=replace(stop, mse=stop.mse * s2),
        on_step=lambda k: net.count_backward(k, decoder=True),
        whole_batch=operator.batch_parameters,
    )
    return replace(fit, rms=fit.rms / UNIT_SCALE[units])


# Gauss-Newton: the iterations of CGLS on one linearisation before the next, and the
# size of the forward-difference step relative to the latent's norm (float32 decoder
# passes: a relative error of about 1e-4 in K p).
GN_RESTART = 5
GN_DIFFERENCE_STEP = 1e-3


def fit_latent_gauss_newton(
    net: CountingPrior,
    operator: Operator,
    y: torch.Tensor,
    z_init: torch.Tensor,
    *,
    iters: int,
    target_mse: torch.Tensor,
) -> Fit:
    """z0y near argmin_z ||y - A(D(z))||^2 from z_init by Gauss-Newton: CGLS on the
    problem linearised at z (K the Jacobian of z -> A(D(z)), min_d ||y - A(D(z)) - K d||^2),
    relinearised every ``GN_RESTART`` iterations, each image stopped once its residual
    meets ``target_mse`` (the mean over y's entries, as ``StopRule.mse``) or after ``iters``
    iterations (early-stopped CGLS is to this problem what early-stopped gradient descent
    is, in far fewer products). An iteration costs one decoder backward pass (K^T q, on
    the graph of the linearisation's forward) and one decoder forward (K p by a forward
    difference); each linearisation one decoder forward. The decoder runs in float32
    whatever ``net.autocast`` is, as the differences need. The batch is solved as a
    whole (an image that stops stays where it stopped), so every pass counts every image.
    """
    n, m = y.shape[0], y[0].numel()
    target = target_mse.to(y.device, torch.float32) * m
    met = target * (1 + 1e-3)  # what counts as on the target, against float32 rounding

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).flatten(1).sum(1)

    def model(z: torch.Tensor) -> torch.Tensor:
        return operator(net.decode(z, full_precision=True))

    z = z_init.detach().float()
    taken = torch.zeros(n, dtype=torch.long, device=y.device)
    while True:
        base = z.clone().requires_grad_(True)
        f_base = model(base)
        r = y - f_base.detach()
        rr = dot(r, r)
        active = (rr > met) & (taken < iters)
        if not bool(active.any()):
            return Fit(z, (rr / m).sqrt(), taken)

        d = torch.zeros_like(z)
        s = _decoder_vjp(net, f_base, base, r)
        p, gamma = s, dot(s, s)
        for inner in range(GN_RESTART):
            h = (
                GN_DIFFERENCE_STEP
                * z.flatten(1).norm(dim=1).clamp_min(1.0)
                / dot(p, p).sqrt().clamp_min(1e-30)
            )
            with torch.no_grad():
                q = (model(z + _per_image(h, z) * p) - f_base.detach()) / _per_image(h, r)
            qq = dot(q, q).clamp_min(1e-30)
            alpha = gamma / qq
            # A step that would cross the target is shortened to land on it (the residual
            # is quadratic along the step), as the pixel solves land on it by their weight:
            # a full step can fall far below the noise level.
            rq, excess = dot(r, q), (rr - target).clamp_min(0)
            landing = (rq - (rq**2 - qq * excess).clamp_min(0).sqrt()) / qq
            alpha = torch.where(active, torch.minimum(alpha, landing), 0.0)
            d += _per_image(alpha, d) * p
            r -= _per_image(alpha, r) * q
            rr = dot(r, r)
            taken += active.long()
            active &= (rr > met) & (taken < iters)
            if inner == GN_RESTART - 1 or not bool(active.any()):
                break
            s = _decoder_vjp(net, f_base, base, r)
            gamma_next = dot(s, s)
            p = s + _per_image(gamma_next / gamma.clamp_min(1e-30), p) * p
            gamma = gamma_next
        z = z + d


def _decoder_vjp(
    net: CountingPrior, output: torch.Tensor, latent: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """q^T d output / d latent through the decoder (one counted backward pass per image);
    the graph is kept for the next product."""
    (g,) = torch.autograd.grad(output, latent, q, retain_graph=True)
    net.count_backward(latent.shape[0], decoder=True)
    return g


def fit_pixels_adam(
    operator: Operator,
    y: torch.Tensor,
    x_init: torch.Tensor,
    *,
    iters: int,
    lr: float,
    stop: StopRule,
    units: Units = "unit",
) -> Fit:
    """x0y = argmin_x ||y - A(x)||^2 by AdamW on the pixels in ``units`` (so its step and
    its weight decay, towards 0 there, act as they do in those units), from x_init; images
    in and out, ``stop.mse`` and ``rms`` in [0, 1] / y's units."""
    scale = UNIT_SCALE[units]

    def image(u: torch.Tensor) -> torch.Tensor:
        return (u + scale - 1) / scale

    def mse_of(u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return scale**2 * per_sample_mse(operator(image(u)), y[idx])

    fit = adam_fit(
        scale * x_init - (scale - 1),
        mse_of,
        iters=iters,
        lr=lr,
        stop=replace(stop, mse=stop.mse * scale**2),
        whole_batch=operator.batch_parameters,
    )
    return replace(fit, value=image(fit.value), rms=fit.rms / scale)


def fit_pixels_discrepancy(
    operator: LinearOperator,
    y: torch.Tensor,
    x_init: torch.Tensor,
    target_rms: float | torch.Tensor,
    *,
    lam_range: tuple[float, float] = (1e-4, 1e4),
    log_width: float = math.log(1e8) / 4096,
    max_solves: int = 16,
) -> Fit:
    """Regularised least squares x = argmin ||y - A x||^2 + lam ||x - x_init||^2 with
    lam chosen per image by the discrepancy principle: the largest lam (closest to
    x_init) whose residual RMS is at most ``target_rms``. The Fit's ``lam`` holds it
    (inf for images that kept x_init).

    The residual grows with lam; images already within the target keep x_init, and an
    image that no lam in ``lam_range`` brings within the target gets the smallest lam.
    Operators with a ``fast_solve`` search log lam inside a bracket (lo meets the target,
    hi does not) by the Illinois variant of false position on log(residual / target):
    5 to 11 solves where bisection needed 13 for the same bracket width (``log_width``,
    that of 12 bisections of the default range), stopping early once the residual at lo
    is within 1e-4 of the target. Operators without one get every lam from one Krylov
    basis instead (``krylov.tikhonov_by_discrepancy``).
    """
    n = y.shape[0]

    def rms(x: torch.Tensor) -> torch.Tensor:
        return per_sample_mse(operator(x), y).sqrt()

    initial_rms = rms(x_init)
    within = initial_rms <= target_rms
    if not operator.fast_solve:
        fit = tikhonov_by_discrepancy(operator, y, x_init, target_rms, lam_range=lam_range)
        return _keep_within(within, x_init, initial_rms, fit.x, fit.rms, fit.lam)
    log_target = torch.as_tensor(target_rms, dtype=torch.float32, device=y.device).log()
    lo = torch.full((n,), math.log(lam_range[0]), device=y.device)
    hi = torch.full((n,), math.log(lam_range[1]), device=y.device)
    best = operator.solve(y, x_init, lo.exp())
    best_rms = rms(best)
    # The search's function at the bracket's ends; at hi (lam -> inf) x is x_init.
    f_lo, f_hi = best_rms.log() - log_target, initial_rms.log() - log_target
    kept = torch.zeros(n, device=y.device)  # which end the last step moved: 1 lo, -1 hi
    active = (f_lo < 0) & (f_hi > 0)
    for _ in range(max_solves - 1):
        active &= hi - lo > log_width
        if not bool(active.any()):
            break
        t = lo - f_lo * (hi - lo) / (f_hi - f_lo)
        t = torch.minimum(torch.maximum(t, lo + 0.01 * (hi - lo)), hi - 0.01 * (hi - lo))
        x = operator.solve(y, x_init, t.exp())
        r = rms(x)
        f = r.log() - log_target
        ok, over = active & (f <= 0), active & (f > 0)
        # Illinois: an end kept twice in a row has its function value halved.
        f_hi = torch.where(ok & (kept == 1), f_hi / 2, f_hi)
        f_lo = torch.where(over & (kept == -1), f_lo / 2, f_lo)
        lo, f_lo = torch.where(ok, t, lo), torch.where(ok, f, f_lo)
        hi, f_hi = torch.where(over, t, hi), torch.where(over, f, f_hi)
        kept = torch.where(ok, 1.0, torch.where(over, -1.0, kept))
        best = torch.where(_per_image(ok, x), x, best)
        best_rms = torch.where(ok, r, best_rms)
        active &= ~(ok & (f > math.log1p(-1e-4)))
    # best is the solve at lo: the last weight that met the target, or the smallest.
    return _keep_within(within, x_init, initial_rms, best, best_rms, lo.exp())


def _keep_within(within, x_init, initial_rms, best, best_rms, lam) -> Fit:
    """Images already within the target keep ``x_init`` (lam = inf)."""
    best = torch.where(_per_image(within, x_init), x_init, best)
    best_rms = torch.where(within, initial_rms, best_rms)
    lam = torch.where(within, torch.full_like(lam, float("inf")), lam)
    return Fit(best, best_rms, torch.zeros(len(best), dtype=torch.long, device=best.device), lam)


def _per_image(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, *([1] * (like.ndim - 1)))
