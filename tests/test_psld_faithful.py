"""Latent-DPS and PSLD set up as their sources run them: the presets' numbers, the units of
the step, PSLD's gluing term and transposes, the deterministic DDIM and the LDM grid. Each
reference is computed here, independently of the solver's code: by hand (autograd on the
loss as the sources write it, in [-1, 1] units), numpy, or numbers read off the sources."""

import math

import numpy as np
import pytest
import torch
from test_solver import _gaussian_problem

from resample_cli.operators import BicubicDownsample, Blur, GaussianBlur, Inpainting, ParallelBeamCT
from resample_cli.operators.compose import ChannelMean, Cropped
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.solvers.latent_dps import (
    LatentDPSConfig,
    PSLDConfig,
    gluing_transpose,
    latent_dps,
    psld,
)
from resample_cli.solvers.schedule import ddim_grid

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def test_paper_presets_hold_the_sources_numbers():
    dps = LatentDPSConfig.preset("paper")
    # soominkwon/resample sample_condition.py:33-34, condition_methods.py:60; LDM "uniform" grid.
    assert (dps.steps, dps.eta, dps.grid, dps.zeta, dps.residual_scale) == (500, 0.0, "authors", 0.3, 2.0)
    p = PSLDConfig.preset("paper")
    # LituRout/PSLD stable-diffusion/scripts/inverse.py:130 and 156.
    assert (p.steps, p.eta, p.grid, p.transpose, p.noisy_prediction) == (1000, 0.0, "authors", "source", True)


SR, BLUR, MASK = BicubicDownsample(4), GaussianBlur(3.0, kernel_size=7), Inpainting(torch.ones(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("preset", "operator", "omega", "gamma"),
    [
        # PSLD's LDM scripts (run/inverse_*_ldm.sh lines 7-8).
        ("paper", SR, 0.9, 0.1),
        ("paper", BLUR, 0.1, 0.1),
        ("paper", Blur(torch.ones(3, 3) / 9), 0.1, 0.1),  # the motion-blur script's values
        ("paper", MASK, 0.1, 0.1),
        ("paper", ParallelBeamCT([0.0, 90.0], 8), 1.0, 0.1),  # no script: inverse.py's defaults
        # Wrapped operators are looked up by the operator inside.
        ("paper", ChannelMean(SR), 0.9, 0.1),
        ("paper", Cropped(MASK, (0, 0, 8, 8), (8, 8)), 0.1, 0.1),
        # ReSample's Table 8: SR 1.1 (CelebA-HQ) / 1.0 (FFHQ), Gaussian deblurring 0.15.
        ("resample-celeba", SR, 0.9, 1.1),
        ("resample-celeba", BLUR, 0.1, 0.15),
        ("resample-celeba", MASK, 0.1, 0.1),
        ("resample-ffhq", SR, 0.9, 1.0),
        ("resample-ffhq", BLUR, 0.1, 0.1),
    ],
)
def test_psld_takes_omega_and_gamma_per_task_from_the_source(preset, operator, omega, gamma):
    config = PSLDConfig.preset(preset)
    assert config.zeta is None and config.gamma is None
    resolved = config.resolved(operator).to_dict()
    assert (resolved["zeta"], resolved["gamma"]) == (omega, gamma)
    # A value given explicitly wins over the task's.
    assert PSLDConfig.preset(preset, zeta=0.7, gamma=0.2).resolved(operator).to_dict()["zeta"] == 0.7


def test_the_dps_preset_takes_zeta_per_task_from_dps_configs():
    config = LatentDPSConfig.preset("dps")
    assert (config.steps, config.eta, config.grid) == (1000, 1.0, "scheduler")
    assert config.resolved(MASK).zeta == 0.5
    assert config.resolved(SR).zeta == 0.3
    assert config.resolved(BLUR).zeta == 0.3
    # The paper preset's zeta is the same for every task.
    assert LatentDPSConfig.preset("paper").resolved(MASK).zeta == 0.3


def test_source_transposes_are_psld_measurements_pseudo_transposes():
    y = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    nearest = np.repeat(np.repeat(y.numpy(), 4, axis=-2), 4, axis=-1)
    assert np.array_equal(gluing_transpose(SR, "source")(y).numpy(), nearest)
    # Not the adjoint of the bicubic filter.
    assert not torch.allclose(gluing_transpose(SR, "adjoint")(y), torch.from_numpy(nearest), atol=1e-3)
    assert torch.equal(gluing_transpose(BLUR, "source")(y), y)
    assert torch.equal(gluing_transpose(MASK, "source")(y), y)
    # A crop's adjoint (zero padding) after the inner operator's T.
    cropped = Cropped(SR, (4, 8, 16, 20), (24, 32))
    padded = np.zeros((2, 3, 24, 32), dtype=np.float32)
    padded[..., 4:20, 8:28] = nearest
    assert np.array_equal(gluing_transpose(cropped, "source")(y).numpy(), padded)
    # Operators PSLD has no transpose for get the exact one.
    m = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    t = gluing_transpose(MatrixOperator(m, (1, 4, 4)), "source")(v)
    assert torch.allclose(t.reshape(2, 16), v @ m, atol=1e-6)


def _runs(solver, config, n, seed, eta, **extra):
    prior, op, y, sigma, *_ = _gaussian_problem()
    gen = torch.Generator().manual_seed(seed)
    cfg = config.preset("fast", steps=10, eta=eta, zeta=0.15, **extra)
    solver(y.expand(n, -1).clone(), op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=gen)
    return gen


@pytest.mark.parametrize(
    ("solver", "config", "extra"),
    [(latent_dps, LatentDPSConfig, {}), (psld, PSLDConfig, {"noisy_prediction": False})],
)
def test_eta_zero_draws_nothing_but_the_start(solver, config, extra):
    n = 3
    after_start = torch.Generator().manual_seed(5)
    torch.randn((n, 1, 4, 4), generator=after_start)  # z_T, the only draw of a deterministic run
    assert torch.equal(_runs(solver, config, n, 5, 0.0, **extra).get_state(), after_start.get_state())
    assert not torch.equal(_runs(solver, config, n, 5, 1.0, **extra).get_state(), after_start.get_state())


def test_psld_noisy_prediction_draws_noise():
    n = 3
    after_start = torch.Generator().manual_seed(5)
    torch.randn((n, 1, 4, 4), generator=after_start)
    assert not torch.equal(_runs(psld, PSLDConfig, n, 5, 0.0).get_state(), after_start.get_state())


def _one_step_by_hand(prior, z, loss_of):
    """The sources' single DDIM step at t = 1 (the one-step LDM grid: 1 -> abar[0]), eta 0,
    then z minus the gradient of ``loss_of(z0hat)`` (summed over images) with respect to z."""
    abar = prior.scheduler.alphas_cumprod.to(torch.float64)
    a, a_next = float(abar[1]), float(abar[0])
    z = z.to(torch.float64).requires_grad_(True)
    eps = prior.eps(z, torch.ones(z.shape[0], dtype=torch.long))
    z0 = (z - math.sqrt(1 - a) * eps) / math.sqrt(a)
    stepped = math.sqrt(a_next) * z0 + math.sqrt(1 - a_next) * eps
    (grad,) = torch.autograd.grad(loss_of(z0).sum(), z)
    return (stepped - grad).detach(), stepped.detach()


def _measurements(op, prior, n, seed):
    # n different measurements: per-image norms must keep them apart.
    g = torch.Generator().manual_seed(seed)
    z0 = prior.means[1].float().reshape(1, 1, 4, 4) + 0.3 * torch.randn(n, 1, 4, 4, generator=g)
    return op((z0 + 1) / 2) + 0.02 * torch.randn(op((z0 + 1) / 2).shape, generator=g)


def test_dps_step_in_source_units_is_twice_the_unit_interval_step():
    prior, op, _, sigma, *_ = _gaussian_problem()
    n, zeta = 3, 0.3
    y = _measurements(op, prior, n, 3)
    m = op.matrix.to(torch.float64)
    # DPS's loss in its units: x' = D'(z0) in [-1, 1], measured by the same linear A, and
    # y' = A (2 x - 1) = 2 y - A 1 the measurement of the centred image.
    y_src = 2 * y.to(torch.float64) - m.sum(1)

    def loss(z0):
        return zeta * (y_src - prior.decode(z0).flatten(1) @ m.T).norm(dim=1)

    z_t = torch.randn((n, 1, 4, 4), generator=torch.Generator().manual_seed(4))
    expected, stepped = _one_step_by_hand(prior, z_t, loss)

    def run(**kw):
        cfg = LatentDPSConfig.preset("paper", steps=1, zeta=zeta, **kw)
        gen = torch.Generator().manual_seed(4)
        return latent_dps(y, op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=gen).z

    source_units = run()
    assert torch.allclose(source_units.to(torch.float64), expected, atol=1e-5)
    unit_interval = run(residual_scale=1.0)
    step, half = stepped - source_units.double(), stepped - unit_interval.double()
    assert step.abs().max() > 1e-2  # the step is not negligible
    assert torch.allclose(step, 2 * half, atol=1e-5)


def _mask(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, 4, 4, generator=g) < 0.5).float()


@pytest.mark.parametrize("case", ["mask-adjoint", "mask-source", "superres-source"])
def test_psld_step_glues_as_the_source_writes_it(case):
    prior, _, _, sigma, *_ = _gaussian_problem()
    n, omega, gamma = 3, 0.2, 0.5
    if case.startswith("mask"):
        mask = _mask(6)
        op = Inpainting(mask)

        def glue(y, x):  # the data-consistent projection: measured pixels from y, others from x
            return mask * y + (1 - mask) * x

    else:
        op = BicubicDownsample(2)

        def up(v):  # nearest upsampling, PSLD's T for super-resolution: each pixel a 2x2 block
            return v.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

        def glue(y, x):
            return up(y) + x - up(op(x))

    y = _measurements(op, prior, n, 7)
    yd = op.observed(y).to(torch.float64)

    def loss(z0):
        x = (prior.decode(z0) + 1) / 2  # [0, 1]; the glued image is the same in [-1, 1] units
        data = omega * 2 * (yd - op(x)).flatten(1).norm(dim=1)
        glued = glue(yd, x)
        return data + gamma * (prior.encode(2 * glued - 1) - z0).flatten(1).norm(dim=1)

    z_t = torch.randn((n, 1, 4, 4), generator=torch.Generator().manual_seed(8))
    expected, stepped = _one_step_by_hand(prior, z_t, loss)
    transpose = "adjoint" if case == "mask-adjoint" else "source"
    cfg = PSLDConfig.preset(
        "paper", steps=1, zeta=omega, gamma=gamma, transpose=transpose, noisy_prediction=False
    )
    gen = torch.Generator().manual_seed(8)
    got = psld(y, op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=gen).z
    assert (stepped - expected).abs().max() > 1e-2
    assert torch.allclose(got.to(torch.float64), expected, atol=1e-5)


def _ldm_sampler_schedule(abar: np.ndarray, steps: int):
    """The latent-diffusion DDIM sampler's (UNet timestep, abar, abar_prev) in sampling order,
    written from its make_ddim_timesteps and make_ddim_sampling_parameters."""
    c = len(abar) // steps
    labels = np.arange(0, len(abar), c) + 1
    # The source subtracts 1 when the last label is the number of labels (c = 1) and
    # otherwise indexes abar at T when the last label is T, and fails: both go one down.
    index = labels - 1 if labels[-1] in (len(labels), len(abar)) else labels
    prev = np.concatenate([[abar[0]], abar[index[:-1]]])
    return labels[::-1], abar[index][::-1], prev[::-1]


@pytest.mark.parametrize("steps", [500, 1000, 100, 12, 3])
def test_the_ldm_grid_is_the_latent_diffusion_samplers(steps):
    prior, *_ = _gaussian_problem()
    abar = prior.scheduler.alphas_cumprod.to(torch.float64).numpy()
    labels, a, a_prev = _ldm_sampler_schedule(abar, steps)
    grid = ddim_grid(prior, steps, "authors")
    assert len(grid) == len(labels)
    assert np.allclose([s.abar for s in grid], a, rtol=0, atol=1e-12)
    assert np.allclose([s.abar_next for s in grid], a_prev, rtol=0, atol=1e-12)
    # The UNet is told abar's own index, one below the source's label where that label is T.
    shift = 1 if labels[0] == len(abar) else 0
    assert [s.t for s in grid] == [int(t) - shift for t in labels]
