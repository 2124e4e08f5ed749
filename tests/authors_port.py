"""An independent port of the authors' ReSample sampling loop, in their units, quirks included.

A helper for tests and ``benchmarks/paper_oracle.py``, not a test. It shares nothing with
``resample_cli/solvers/``: it uses only a prior's ``eps``/``encode``/``decode``/
``alphas_cumprod``/``latent_shape`` (and, for the ``grid`` switch, a copy of its
``scheduler``) and an operator's forward. Each switch in ``PortConfig`` turns one quirk of
the authors' code into the alternative a ``ReSampleConfig`` field offers (``QUIRKS``), so
that a caller can measure what each is worth; ``PortConfig().ours()`` switches all of them,
which is what ``paper`` did before it was made faithful (CHANGELOG).

Reference: github.com/soominkwon/resample at commit 3e332b2. Line numbers below are of
``ldm/models/diffusion/ddim.py`` (``ddim.py``) unless another file is named;
``util.py`` is ``ldm/modules/diffusionmodules/util.py``, ``cond.py`` is
``ldm_inverse/condition_methods.py`` and ``sample.py`` is ``sample_condition.py``.

The loop, step by step (``DDIMSampler.resample_sampling``, ddim.py:189-334)
---------------------------------------------------------------------------
0. Set-up. ``sample.py:33-35,66-76`` calls ``posterior_sampler`` with S = 500 DDIM steps,
   eta = 0, batch size 1 (``--n_samples_per_class``, and the data loader's batch of 1,
   ``sample.py:89``); its ``ddim_use_original_steps=True`` is swallowed by ``**kwargs``
   because ``posterior_sampler`` passes ``False`` (ddim.py:172). The measurement is made
   on images in [-1, 1] (``sample.py:86-87,115-116``).
1. Grid (``make_schedule``, ddim.py:27-57; ``util.py:46-60`` ``make_ddim_timesteps``;
   ``util.py:63-74`` ``make_ddim_sampling_parameters``): c = T // S, timesteps
   {0, c, 2c, ...} + 1, i.e. 1, 3, ..., 999 for S = 500; a_t = abar[t]; the ``a_prev`` of
   the smallest timestep is abar[0], not 1. Sampling runs the grid from the top
   (ddim.py:223-224); at loop position i the count-down index is S - 1 - i (ddim.py:235),
   a_t and a_prev are read at that index (ddim.py:237-238).
2. Start: z_T ~ N(0, I) (ddim.py:209-210). [``_Sampler.run``]
3. Unconditional DDIM step (``p_sample_ddim``, ddim.py:500-542, called at 248-253): eps at
   the step's timestep, pred_x0 = (z - sqrt(1 - a_t) eps) / sqrt(a_t) (Tweedie, 530),
   z' = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev) eps (534-538, eta = 0), and a second
   estimate pseudo_x0 = (z - (1 - a_t) eps) / sqrt(a_t) (541). [``_Sampler.dps_step``]
4. Latent DPS on every step (ddim.py:255-261; cond.py:29-33 and 58-64):
   z' -= 0.5 a_t grad_z ||y - A(D(pseudo_x0))||, the UNSQUARED norm, taken by
   ``torch.linalg.norm`` over the whole batch, in [-1, 1] units, differentiated through
   pseudo_x0 and the eps network back to z. [``_Sampler.dps_step``]
5. Data-consistency window (ddim.py:264-273): with split = S // 3, only where
   0 < index <= S - split and index % 10 == 0. The anchor is the DPS-updated z' (269).
6. Look-ahead (ddim.py:274-285): for k = i .. min(i + 5, S - 1) - 1, one more
   ``p_sample_ddim`` with the NETWORK at the next grid timestep (``ts_`` from k + 1, 275-276)
   but the COEFFICIENTS a_t, a_prev of index S - 1 - k (277), i.e. of grid position k, one
   behind. The z0 estimate handed on is the last ``pseudo_x0`` (280). [``_Sampler.lookahead``]
7. Resampling variance sigma^2 = 40 (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev) with the
   main step's a_t, a_prev (288-289, again 318).
8a. Pixel stage, index >= split (294-307): x = D(pseudo_x0) in [-1, 1] (297-298), then
   ``pixel_optimization`` (337-370): AdamW(lr = 1e-2, torch's default weight decay 0.01)
   (353) on ``MSELoss`` = mean over all entries of the batch (349, 361), at most 2000
   iterations (358), stopping when that loss, measured BEFORE the step that was just
   taken, is < 1e-3 ** 2 = 1e-6 (363-368): the returned iterate is one step past the one
   that met the test; no plateau rule. Back to the latent by the encoder (304).
   [``_Sampler.solve``]
8b. Latent stage, index < split (310-315): ``latent_optimization`` (373-432) from the
   look-ahead's pseudo_x0: AdamW(lr = 5e-3) (394-399) on the MSE through the decoder
   (408), at most 500 iterations (406); after each step (413-415), from iteration 200 on,
   stop if the loss is STRICTLY higher than the loss 200 iterations before (419-426);
   then stop if it is < 1e-6 (428-429). Same "one step past" return.
9. Stochastic resampling (``stochastic_resample``, 435-441, called at 306 and 320):
   z ~ N((s2 sqrt(a_prev) z0y + (1 - a_prev) z') / (s2 + 1 - a_prev),
         1 / (1 / s2 + 1 / (1 - a_prev)) I). [``_Sampler.run``]
10. After the loop, one more ``latent_optimization`` from the final z (329-332).

The quirks (authors' behaviour -> ``PortConfig`` switch -> the alternative)
--------------------------------------------------------------------------------------
- ``units="pm1"``: every constant acts on [-1, 1] quantities (steps 4, 8a, 8b): the DPS norm
  is that of the [-1, 1] residual (twice the [0, 1] one), pixel AdamW moves [-1, 1] pixels
  (lr 1e-2 there = 5e-3 on [0, 1], and weight decay pulls toward 0 = grey, not black), the
  stopping MSE 1e-6 is on the [-1, 1] scale (2.5e-7 on [0, 1]). "unit": all on [0, 1].
  The port's [-1, 1] measurement is y' = 2 y - 1 and its operator A'(x) = 2 A((x + 1) / 2) - 1,
  whose residual is exactly twice the [0, 1] one for any operator (for a linear A this is
  the same as applying A to the [-1, 1] image with y' = 2 y - A(1), what the authors do).
- ``dps_z0="authors"``: the DPS term uses (z - (1 - a) eps) / sqrt(a) (step 4); "tweedie":
  (z - sqrt(1 - a) eps) / sqrt(a), the README's one documented difference.
- ``start_z0="authors"``: the same estimate starts every solve after the look-ahead (steps
  6, 8a, 8b); "tweedie": Tweedie's.
- ``lookahead_lag=True``: the look-ahead's coefficients lag the network's timestep by one
  grid step (step 6); False: network and coefficients at the same, correct timestep,
  starting one grid step below the main step.
- ``grid="authors"``: 999, 997, ..., 1, the last step going to abar[0] (step 1);
  "diffusers": the prior's own ``timesteps`` (998, ..., 0 for DDIMScheduler's "leading"
  spacing) ending at ``final_alpha_cumprod`` (1 when ``set_alpha_to_one``).
- ``stop_rule="authors"``: tests after the step, strict "<" on the MSE, latent plateau every
  iteration from 200 on with a strict ">" (steps 8a, 8b); "ours": tests before the step (an
  image that stops keeps the iterate it was measured on), "<=" on the MSE, plateau only at
  iterations 200, 400, ... against the loss of the previous checkpoint with ">=".
- ``pixel_plateau=False``: no plateau test in the pixel stage (8a); True: the same plateau
  test there as in the latent stage.
- ``batch_norms=False``: each image is its own problem, as the authors ran it (batch 1,
  step 0): the DPS norm and the solve losses are per image and each image stops on its
  own. True: the published code run on a batch: one norm and one mean-squared loss over
  the whole batch, and the whole batch stops together.
- Not switchable because they cannot change the result in distribution: the authors'
  ``p_sample_ddim`` draws unused noise when eta = 0 (ddim.py:535; this port draws only what
  is used), and their ``a_t``/``abar`` are float32 copies (ddim.py:32-35).

Random draws, in order: the start latent, then one latent-shaped standard normal per
data-consistency step for the resampling. That is also the order of ``resample_cli``'s
``resample`` with eta = 0 (it draws through ``torch.randn(shape, generator=g,
dtype=float32)``), so the same seeded ``torch.Generator`` handed to both gives both the
same draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from diffusers import DDIMScheduler

Draw = Callable[[tuple[int, ...]], torch.Tensor]

AUTHORS_STEPS = 500  # sample.py:33
DC_EVERY = 10  # ddim.py:273
SPLITS = 3  # ddim.py:264
BETAS = (0.9, 0.999)  # torch.optim.AdamW defaults, which the authors keep (ddim.py:353, 399)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 1e-2


@dataclass(frozen=True)
class PortConfig:
    """The authors' constants (defaults) and one switch per quirk (see the module doc)."""

    steps: int = AUTHORS_STEPS
    lookahead: int = 5  # ddim.py:206
    dps_scale: float = 0.5  # ddim.py:260, times a_t
    gamma: float = 40.0  # ddim.py:289, 318
    pixel_iters: int = 2000  # ddim.py:337
    pixel_lr: float = 1e-2  # ddim.py:353
    latent_iters: int = 500  # ddim.py:373
    latent_lr: float = 5e-3  # ddim.py:394
    stop_mse: float = 1e-6  # eps ** 2 with eps = 1e-3, ddim.py:337, 373
    window: int = 200  # ddim.py:419
    units: Literal["pm1", "unit"] = "pm1"
    dps_z0: Literal["authors", "tweedie"] = "authors"
    start_z0: Literal["authors", "tweedie"] = "authors"
    lookahead_lag: bool = True
    grid: Literal["authors", "diffusers"] = "authors"
    stop_rule: Literal["authors", "ours"] = "authors"
    pixel_plateau: bool = False
    batch_norms: bool = False

    def ours(self) -> PortConfig:
        """Every quirk switched to its alternative (the earlier ``paper``)."""
        return replace(self, **{k: v for change in QUIRKS.values() for k, v in change.items()})


# One entry per quirk: the overrides that switch it from the authors' behaviour to the
# alternative.
QUIRKS: dict[str, dict] = {
    "units": {"units": "unit"},
    "dps_z0": {"dps_z0": "tweedie"},
    "start_z0": {"start_z0": "tweedie"},
    "lookahead_lag": {"lookahead_lag": False},
    "grid": {"grid": "diffusers"},
    "stop_rule": {"stop_rule": "ours"},
    "pixel_plateau": {"pixel_plateau": True},
}
# The ``ReSampleConfig`` fields that switch the same quirks (names only: this module imports
# nothing of resample_cli's).
CONFIG_FIELDS: dict[str, dict] = {
    "units": {"units": "unit"},
    "dps_z0": {"dps_z0": "tweedie"},
    "start_z0": {"start_z0": "tweedie"},
    "lookahead_lag": {"lookahead_lag": False},
    "grid": {"timestep_grid": "scheduler"},
    "stop_rule": {"stop_check": "before_step"},
    "pixel_plateau": {"pixel_plateau": True},
}
# ``batch_norms`` is not among them: ``paper`` and this port's default both treat each image
# as its own problem, which is how the authors ran their code (one image per call).


@dataclass
class PortResult:
    z: torch.Tensor  # final latents
    x: torch.Tensor  # (D(z) + 1) / 2, not clamped
    counts: dict[str, int]  # network passes per image, as resample_cli's Trace counts them
    iterations: list[list[int]] = field(default_factory=list)  # per data-consistency solve, per image
    final_iterations: list[int] = field(default_factory=list)  # of the final latent solve
    final_rms: list[float] = field(default_factory=list)  # ||y - A(x)|| / sqrt(m), [0, 1] units


def generator_draws(generator: torch.Generator) -> Draw:
    """Standard normal draws from ``generator``, as resample_cli draws them."""
    return lambda shape: torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def authors_resample(
    y: torch.Tensor,
    operator: Callable[[torch.Tensor], torch.Tensor],
    prior,
    config: PortConfig | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    draw: Draw | torch.Generator | None = None,
) -> PortResult:
    """Run the authors' loop on measurements ``y`` of [0, 1] images (batch N).

    ``operator`` maps [0, 1] images to measurements (an ``Operator`` or any callable);
    ``draw`` is a function ``shape -> standard normal tensor``, a ``torch.Generator``, or
    None (torch's global generator). ``config`` defaults to ``PortConfig()``, the authors' code.
    """
    config = config or PortConfig()
    if isinstance(draw, torch.Generator):
        draw = generator_draws(draw)
    elif draw is None:
        draw = lambda shape: torch.randn(shape, dtype=torch.float32)  # noqa: E731
    return _Sampler(y, operator, prior, config, image_size or tuple(y.shape[-2:]), draw).run()


class _Sampler:
    def __init__(self, y, operator, prior, config: PortConfig, image_size, draw: Draw):
        self.prior, self.op, self.cfg, self.draw = prior, operator, config, draw
        self.device = y.device
        self.y01 = y.float()
        self.y = 2 * self.y01 - 1 if config.units == "pm1" else self.y01
        self.n = y.shape[0]
        self.shape = (self.n, *prior.latent_shape(*image_size))
        self.groups = torch.arange(self.n, device=self.device) * (not config.batch_norms)
        self.counts = dict.fromkeys(
            ("unet_forward", "unet_backward", "decoder_forward", "decoder_backward", "encoder_forward"), 0
        )
        self.counts["operator_calls"] = 0
        self.iterations: list[list[int]] = []
        self.grid = self._grid()

    # -- prior and operator, in the configured units ---------------------------------------
    def eps(self, z: torch.Tensor, t: int) -> torch.Tensor:
        self.counts["unet_forward"] += z.shape[0]
        return self.prior.eps(z, torch.full((z.shape[0],), t, dtype=torch.long, device=z.device))

    def image(self, z: torch.Tensor) -> torch.Tensor:
        self.counts["decoder_forward"] += z.shape[0]
        x = self.prior.decode(z)
        return x if self.cfg.units == "pm1" else (x + 1) / 2

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        self.counts["encoder_forward"] += x.shape[0]
        return self.prior.encode(x if self.cfg.units == "pm1" else 2 * x - 1)

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        self.counts["operator_calls"] += x.shape[0]
        if self.cfg.units == "pm1":
            return 2 * self.op((x + 1) / 2) - 1
        return self.op(x)

    # -- schedule ---------------------------------------------------------------------------
    def _grid(self) -> list[tuple[int, float, float]]:
        """(timestep, abar_t, abar of the next step) in sampling order."""
        abar = self.prior.alphas_cumprod.to(torch.float64)
        if self.cfg.grid == "authors":
            stride = len(abar) // self.cfg.steps
            ascending = [k + 1 for k in range(0, len(abar), stride)]
            below = [0, *ascending[:-1]]  # abar[0] under the lowest timestep
            rows = [(t, float(abar[t]), float(abar[b])) for t, b in zip(ascending, below, strict=True)]
            return rows[::-1]
        scheduler = DDIMScheduler.from_config(self.prior.scheduler.config)
        scheduler.set_timesteps(self.cfg.steps)
        ts = [int(t) for t in scheduler.timesteps]
        nxt = [float(abar[t]) for t in ts[1:]] + [float(scheduler.final_alpha_cumprod)]
        return [(t, float(abar[t]), a) for t, a in zip(ts, nxt, strict=True)]

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> PortResult:
        cfg, steps = self.cfg, len(self.grid)
        split = steps // SPLITS
        z = self.draw(self.shape).to(self.device, torch.float32)
        for i, (t, a, a_next) in enumerate(self.grid):
            index = steps - 1 - i
            z_next, est = self.dps_step(z, t, a, a_next)
            if 0 < index <= steps - split and index % DC_EVERY == 0:
                anchor = z_next
                start = self.lookahead(z_next, i, est)
                s2 = cfg.gamma * (1 - a_next) / (1 - a) * (1 - a / a_next)
                if index >= split:
                    with torch.no_grad():
                        x0 = self.image(start)
                    x = self.solve(x0, self.measure, cfg.pixel_iters, cfg.pixel_lr, cfg.pixel_plateau, False)
                    with torch.no_grad():
                        z0y = self.latent(x)
                else:
                    z0y = self.solve(
                        start,
                        lambda v: self.measure(self.image(v)),
                        cfg.latent_iters,
                        cfg.latent_lr,
                        True,
                        True,
                    )
                mean = (s2 * math.sqrt(a_next) * z0y + (1 - a_next) * anchor) / (s2 + 1 - a_next)
                std = math.sqrt(1 / (1 / s2 + 1 / (1 - a_next)))
                z_next = mean + std * self.draw(self.shape).to(mean)
            z = z_next
        z = self.solve(z, lambda v: self.measure(self.image(v)), cfg.latent_iters, cfg.latent_lr, True, True)
        final_iterations = self.iterations.pop()
        with torch.no_grad():
            self.counts["decoder_forward"] += self.n
            self.counts["operator_calls"] += self.n
            x = (self.prior.decode(z) + 1) / 2
            rms = (self.op(x) - self.y01).pow(2).flatten(1).mean(1).sqrt()
        return PortResult(z, x, self.counts, self.iterations, final_iterations, rms.tolist())

    def dps_step(self, z, t, a, a_next):
        """DDIM step from z_t and the DPS nudge; returns (z_{t-1}, both z0 estimates)."""
        z = z.detach().requires_grad_(True)
        e = self.eps(z, t)
        tweedie = (z - math.sqrt(1 - a) * e) / math.sqrt(a)
        authors = (z - (1 - a) * e) / math.sqrt(a)
        z_next = math.sqrt(a_next) * tweedie + math.sqrt(1 - a_next) * e
        r = (self.y - self.measure(self.image(authors if self.cfg.dps_z0 == "authors" else tweedie))).flatten(
            1
        )
        norm = r.norm() if self.cfg.batch_norms else r.norm(dim=1).sum()
        (grad,) = torch.autograd.grad(norm, z)
        self.counts["unet_backward"] += self.n
        self.counts["decoder_backward"] += self.n
        z_next = z_next - self.cfg.dps_scale * a * grad
        return z_next.detach(), {"tweedie": tweedie.detach(), "authors": authors.detach()}

    @torch.no_grad()
    def lookahead(self, z, i, est):
        """The look-ahead DDIM steps; returns the chosen z0 estimate of the last."""
        steps, k_steps = len(self.grid), self.cfg.lookahead
        if self.cfg.lookahead_lag:  # ddim.py:274-277: network at k + 1, coefficients at k
            plan = [(self.grid[k + 1][0], *self.grid[k][1:]) for k in range(i, min(i + k_steps, steps - 1))]
        else:
            plan = [self.grid[j] for j in range(i + 1, min(i + 1 + k_steps, steps))]
        for t, a, a_next in plan:
            e = self.eps(z, t)
            tweedie = (z - math.sqrt(1 - a) * e) / math.sqrt(a)
            est = {"tweedie": tweedie, "authors": (z - (1 - a) * e) / math.sqrt(a)}
            z = math.sqrt(a_next) * tweedie + math.sqrt(1 - a_next) * e
        return est[self.cfg.start_z0]

    def solve(self, init, predict, iters, lr, plateau, latent) -> torch.Tensor:
        """argmin_v MSE(y, predict(v)) by AdamW (torch's formulas, written out here), each
        group (an image, or the whole batch) on its own, under the configured stopping."""
        cfg, groups = self.cfg, self.groups
        n_groups = int(groups.max()) + 1
        per_group = torch.bincount(groups, minlength=n_groups).double() * self.y[0].numel()
        v = init.detach().clone().float()
        m1, m2 = torch.zeros_like(v), torch.zeros_like(v)
        active = torch.ones(n_groups, dtype=torch.bool, device=self.device)
        taken = torch.zeros(self.n, dtype=torch.long, device=self.device)
        history: list[torch.Tensor] = []  # group losses, one entry per iteration
        checkpoint = torch.full((n_groups,), math.inf, dtype=torch.float64, device=self.device)
        for k in range(iters):
            every = bool(active.all())  # the common case, without indexing
            idx = torch.arange(self.n, device=self.device) if every else active[groups].nonzero().squeeze(1)
            p = (v if every else v[idx]).clone().requires_grad_(True)
            gi = groups[idx]
            sq = ((self.y if every else self.y[idx]) - predict(p)).pow(2).flatten(1).sum(1).double()
            loss = (
                torch.zeros(n_groups, dtype=torch.float64, device=self.device).index_add(0, gi, sq)
                / per_group
            )
            loss = torch.where(active, loss, torch.full_like(loss, math.nan))
            lv = loss.detach()
            if cfg.stop_rule == "ours":  # test first; a stopping group keeps this iterate
                stop_now = active & (lv <= cfg.stop_mse)
                if plateau and k and k % cfg.window == 0:
                    stop_now |= active & (lv >= checkpoint)
                if plateau and k % cfg.window == 0:
                    checkpoint = torch.where(active, lv, checkpoint)
                active = active & ~stop_now
                if not bool(active.any()):
                    break
            (grad,) = torch.autograd.grad(loss[active].sum(), p)
            if latent:
                self.counts["decoder_backward"] += idx.numel()
            move = active[gi]  # images that take this step
            if every and bool(move.all()):
                _adamw_step(v, m1, m2, grad, k, lr)
                taken += 1
            else:
                sel = idx[move]
                parts = [v[sel], m1[sel], m2[sel]]
                _adamw_step(*parts, grad[move], k, lr)
                v[sel], m1[sel], m2[sel] = parts
                taken[sel] += 1
            if cfg.stop_rule == "authors":  # test the loss measured before this step
                history.append(lv)
                done = lv < cfg.stop_mse
                if plateau and k >= cfg.window:
                    done |= history[-1 - cfg.window] < lv
                active = active & ~done
                if not bool(active.any()):
                    break
        self.iterations.append(taken.tolist())
        return v


def _adamw_step(v, m1, m2, grad, k, lr) -> None:
    """One step of torch.optim.AdamW (its defaults; the step count is k + 1), in place."""
    g = grad.float()
    v.mul_(1 - lr * WEIGHT_DECAY)
    m1.lerp_(g, 1 - BETAS[0])
    m2.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
    c1, c2 = 1 - BETAS[0] ** (k + 1), 1 - BETAS[1] ** (k + 1)
    v.addcdiv_(m1, m2.sqrt().div_(math.sqrt(c2)).add_(ADAM_EPS), value=-lr / c1)
