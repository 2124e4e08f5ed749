"""DiffPIR: its data step against closed forms, its schedule against the authors' formulas,
its update equations against a NumPy re-derivation, a pixel-space (identity-autoencoder)
Gaussian prior against the exact posterior, costs, per-image independence, the nonlinear
path, and the per-task settings."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from resample_cli.operators import (
    BicubicDownsample,
    GaussianBlur,
    Inpainting,
    ModuleOperator,
    NonlinearBlur,
    random_mask,
)
from resample_cli.operators.compose import Cropped
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.priors import load_prior
from resample_cli.priors.gaussian import GaussianMixturePrior
from resample_cli.solvers import diffpir as diffpir_module
from resample_cli.solvers.diffpir import (
    DiffPIRConfig,
    data_step,
    data_weight,
    diffpir,
    diffpir_grid,
    gradient_prox,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


class PixelGaussian(GaussianMixturePrior):
    """A pixel-space prior: the latent is the image in [-1, 1] (encode, decode: identity)."""

    def decode(self, z):
        return z

    def encode(self, x):
        return x


def _toy(sigma=0.05, seed=0):
    """One Gaussian N(mu, S) on 4x4 images z in [-1, 1], y = M (z + 1) / 2 + n; the exact
    posterior of x = (z + 1) / 2 (mean, covariance) and its prior mean, in NumPy."""
    d, m = 16, 8
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    cov = 0.04 * a @ a.T / d + 0.01 * np.eye(d)
    mu = 0.3 * rng.standard_normal(d)
    matrix = rng.standard_normal((m, d)) / math.sqrt(d)
    z = mu + np.linalg.cholesky(cov) @ rng.standard_normal(d)
    y = matrix @ ((z + 1) / 2) + sigma * rng.standard_normal(m)
    cov_x, mean_x = cov / 4, (mu + 1) / 2
    post_cov = np.linalg.inv(np.linalg.inv(cov_x) + matrix.T @ matrix / sigma**2)
    post_mean = post_cov @ (np.linalg.solve(cov_x, mean_x) + matrix.T @ y / sigma**2)
    prior = PixelGaussian(torch.ones(1), torch.tensor(mu)[None], torch.tensor(cov)[None], (1, 4, 4))
    op = MatrixOperator(torch.tensor(matrix), (1, 4, 4))
    return (
        prior,
        op,
        torch.tensor(y, dtype=torch.float32),
        (mu, cov, matrix, y),
        (post_mean, post_cov, mean_x),
    )


def _run(prior, op, y, n=1, seed=0, sigma=0.05, **overrides):
    cfg = DiffPIRConfig.preset("paper", **overrides)
    y = y.expand(n, *y.shape[1:]).clone() if y.shape[0] == 1 else y
    return diffpir(
        y, op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=torch.Generator().manual_seed(seed)
    )


# --- the data step --------------------------------------------------------------------


def test_inpainting_data_step_is_the_per_pixel_closed_form():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, 6, 6, generator=g) > 0.5).double()  # one mask per image
    x0, y = torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64), torch.rand(2, 3, 6, 6, generator=g)
    op = Inpainting(mask)
    y = op.observed(y.double())
    rho = 0.37
    got = data_step(op, y, x0, rho, DiffPIRConfig())
    m, yn, xn = mask.numpy(), y.numpy(), x0.numpy()
    np.testing.assert_allclose(got.numpy(), (m * yn + rho * xn) / (m + rho), rtol=1e-12)


def test_matrix_data_step_is_the_regularised_least_squares_solution():
    g = np.random.default_rng(1)
    matrix, rho = g.standard_normal((5, 16)), 0.2
    x0, y = g.random((2, 16)), g.standard_normal((2, 5))
    op = MatrixOperator(torch.tensor(matrix), (1, 4, 4))
    got = data_step(op, torch.tensor(y), torch.tensor(x0).reshape(2, 1, 4, 4), rho, DiffPIRConfig())
    # argmin ||y - M x||^2 + rho ||x - x0||^2 = least squares on [M; sqrt(rho) I] x = [y; sqrt(rho) x0].
    stacked = np.vstack([matrix, math.sqrt(rho) * np.eye(16)])
    for i in range(2):
        want = np.linalg.lstsq(stacked, np.concatenate([y[i], math.sqrt(rho) * x0[i]]), rcond=None)[0]
        np.testing.assert_allclose(got[i].flatten().numpy(), want, atol=1e-10)


def test_gradient_data_step_converges_to_the_closed_form():
    # A linear map presented as a nonlinear operator: the gradient path has no solve to call.
    g = np.random.default_rng(2)
    matrix, rho = g.standard_normal((6, 16)) / 4, 0.5
    layer = nn.Linear(16, 6, bias=False).double()
    layer.weight.data = torch.tensor(matrix)
    op = ModuleOperator(nn.Sequential(nn.Flatten(), layer)).requires_grad_(False)
    assert not op.linear
    x0, y = g.random((2, 16)), g.standard_normal((2, 6))
    cfg = DiffPIRConfig(prox_steps=200)
    got = data_step(op, torch.tensor(y), torch.tensor(x0).reshape(2, 1, 4, 4), rho, cfg)
    want = np.linalg.solve(matrix.T @ matrix + rho * np.eye(16), matrix.T @ y.T + rho * x0.T).T
    np.testing.assert_allclose(got.flatten(1).numpy(), want, atol=1e-6)


def test_one_gradient_step_is_the_authors_first_order_step_when_it_descends():
    op = NonlinearBlur(sigma=1.0, kernel_size=3)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64)
    y = op(torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64))
    rho = 20.0  # 1 / (2 rho) is below 1 / L here, so the first trial is accepted
    got = gradient_prox(op, y, x0, rho, steps=1, lr=1.0)
    # x0 - grad ||y - A(x0)||^2 / (2 rho) = x0 + J^T (y - A(x0)) / rho
    _, vjp = torch.autograd.functional.vjp(op, x0, y - op(x0))
    torch.testing.assert_close(got, x0 + vjp / rho)


# --- schedule and update equations ------------------------------------------------------


def test_quad_grid_and_rho_are_the_authors_formulas():
    prior, *_ = _toy()
    betas = np.linspace(0.1 / 1000, 20 / 1000, 1000)  # their linear schedule, main_ddpir_*.py
    abar = np.cumprod(1 - betas)
    steps = 100
    seq = [int(s) for s in np.sqrt(np.linspace(0, 1000**2, steps))]
    seq[-1] -= 1
    grid = diffpir_grid(prior, DiffPIRConfig(steps=steps))
    assert [s.t for s in grid] == [999 - s for s in seq]
    assert grid[0].t == 999 and grid[-1].t == 0 and grid[-1].abar_next == 1.0
    np.testing.assert_allclose([s.abar for s in grid], abar[[999 - s for s in seq]], rtol=1e-5)
    np.testing.assert_allclose([s.abar_next for s in grid[:-1]], [s.abar for s in grid[1:]])
    # rho_t = lam sigma^2 / sigmabar_t^2 with sigmabar_t = sqrt(1 - abar_t) / sqrt(abar_t)
    for t in (999, 500, 37, 0):
        sigmabar = math.sqrt(1 - abar[t]) / math.sqrt(abar[t])
        assert data_weight(float(abar[t]), 7.0, 0.05) == pytest.approx(7.0 * 0.05**2 / sigmabar**2, rel=1e-4)
    uniform = diffpir_grid(prior, DiffPIRConfig(steps=10, grid="uniform"))
    assert [s.t for s in uniform] == list(range(999, 0, -100))


@pytest.mark.parametrize("zeta, eta, inner", [(0.3, 0.0, 1), (0.6, 0.5, 2)])
def test_run_follows_the_update_equations(monkeypatch, zeta, eta, inner):
    """A 3-step run on the pixel-space Gaussian prior, redone in NumPy from the paper's
    equations with the same normal draws (taken in the solver's order: z_T; then per step
    the DDIM noise if eta, the fresh noise if zeta, the re-noising back to t if repeated)."""
    prior, op, y, (mu, cov, matrix, yn), _ = _toy()
    draws = []

    def record(x, generator):
        draws.append(torch.randn(x.shape, generator=generator).to(x.dtype))
        return draws[-1]

    monkeypatch.setattr(diffpir_module, "randn_like", record)
    lam, sigma, steps = 5.0, 0.05, 3
    out = _run(prior, op, y[None], steps=steps, lam=lam, zeta=zeta, eta=eta, inner_iters=inner, sigma=sigma)

    noise = iter([d.double().flatten().numpy() for d in draws])
    abar_all = prior.alphas_cumprod.numpy()
    ts = [999 - s for s in [int(s) for s in np.sqrt(np.linspace(0, 1000**2, steps))]]
    ts[-1] = 0
    z = next(noise)
    for i, t in enumerate(ts):
        a, a_next = abar_all[t], (abar_all[ts[i + 1]] if i + 1 < steps else 1.0)
        for u in range(inner):
            c = a * cov + (1 - a) * np.eye(16)
            eps = math.sqrt(1 - a) * np.linalg.solve(c, z - math.sqrt(a) * mu)
            x0 = ((z - math.sqrt(1 - a) * eps) / math.sqrt(a) + 1) / 2  # Tweedie, as an image in [0, 1]
            rho = lam * sigma**2 / ((1 - a) / a)
            x0 = np.linalg.solve(matrix.T @ matrix + rho * np.eye(16), matrix.T @ yn + rho * x0)
            z0 = 2 * x0 - 1
            eps_hat = (z - math.sqrt(a) * z0) / math.sqrt(1 - a)
            s = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
            kept = math.sqrt(1 - a_next - s**2) * eps_hat + (s * next(noise) if s else 0)
            z = math.sqrt(a_next) * z0 + math.sqrt(1 - zeta) * kept
            if a_next < 1:
                z = z + math.sqrt(zeta * (1 - a_next)) * next(noise)
            if u + 1 < inner:
                z = math.sqrt(a / a_next) * z + math.sqrt(1 - a - a / a_next * (1 - a_next)) * next(noise)
    assert next(noise, None) is None  # every draw was used
    np.testing.assert_allclose(out.x.flatten().double().numpy(), np.clip((z + 1) / 2, 0, 1), atol=2e-4)


def test_pixel_space_prior_approaches_the_exact_posterior_mean():
    prior, op, y, _, (post_mean, post_cov, prior_mean) = _toy()
    n, sigma = 64, 0.05
    r = _run(prior, op, y[None], n=n, sigma=sigma, steps=20)  # paper lam = 7, zeta = 0.3 (deblurring's)
    xs = r.x.flatten(1).double().numpy()
    # DiffPIR is not an exact sampler: measured over 6 seeds, the mean of 64 samples lies at
    # 0.20-0.23 of the prior-to-posterior distance (Monte Carlo error alone ~0.10), 2-2.3
    # standard errors (RMS over pixels) from the exact mean; the prior mean is at 1.
    rel = np.linalg.norm(xs.mean(0) - post_mean) / np.linalg.norm(prior_mean - post_mean)
    assert rel < 0.35
    z_scores = (xs.mean(0) - post_mean) / np.sqrt(np.diag(post_cov) / n)
    assert np.sqrt((z_scores**2).mean()) < 3.5
    # and it fits the data to the noise level (measured 0.97-1.0), not beyond
    ratio = np.mean(r.trace.final_residual) / sigma
    assert 0.8 < ratio < 1.3


# --- costs, independence, nonlinear path ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_prior(prior_dir):
    return load_prior(str(prior_dir))


@pytest.mark.parametrize("nonlinear", [False, True])
def test_latent_prior_costs_no_network_backward_and_one_unet_call_per_step(tiny_prior, nonlinear):
    g = torch.Generator().manual_seed(0)
    # Inpainting's solve is closed form (no operator call), so the calls are countable.
    op = NonlinearBlur(sigma=1.0, kernel_size=5) if nonlinear else Inpainting(random_mask((32, 32), 0.5, g))
    y = op(torch.rand(2, 3, 32, 32, generator=g))
    n, steps, inner = 2, 4, 2
    seen = []
    cfg = DiffPIRConfig.preset("fast", steps=steps, inner_iters=inner)
    r = diffpir(y, op, tiny_prior, cfg, sigma_y=0.01, generator=g, callback=seen.append)
    c = r.trace.counts
    assert r.x.shape == (n, 3, 32, 32) and torch.isfinite(r.x).all()
    assert r.z.shape == (n, *tiny_prior.latent_shape(32, 32))
    assert c["unet_forward"] == c["encoder_forward"] == n * steps * inner
    assert c["decoder_forward"] == n * (steps * inner + 1)  # and the final decode
    assert c["unet_backward"] == c["decoder_backward"] == c["encoder_backward"] == 0
    if not nonlinear:  # the residual of each data step and the final one
        assert c["operator_calls"] == n * (steps * inner + 1)
    assert len(r.trace.residual_per_dc_step) == steps * inner and len(r.trace.final_residual) == n
    assert [s.step for s in seen] == [1, 2, 3, 4] and all(s.stage == "pixel" for s in seen)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_a_batch_is_independent_runs_with_the_same_draws(monkeypatch, nonlinear):
    prior, op, y, *_ = _toy()
    if nonlinear:
        op = NonlinearBlur(sigma=1.0, kernel_size=3)
        y = op(torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(5)))
    else:
        y = torch.stack([y, 0.5 * y])
    draws = []

    def record(x, generator):
        draws.append(torch.randn(x.shape, generator=generator).to(x.dtype))
        return draws[-1]

    monkeypatch.setattr(diffpir_module, "randn_like", record)
    kw = dict(steps=8, zeta=0.5, eta=0.5, prox_steps=3)
    batch = _run(prior, op, y, **kw)
    recorded = list(draws)
    for i in range(2):
        replay = iter(d[i : i + 1] for d in recorded)
        monkeypatch.setattr(diffpir_module, "randn_like", lambda x, generator, it=replay: next(it))
        alone = _run(prior, op, y[i : i + 1], **kw)
        torch.testing.assert_close(alone.x, batch.x[i : i + 1], atol=1e-5, rtol=0)
        assert alone.trace.final_residual[0] == pytest.approx(batch.trace.final_residual[i], abs=1e-5)
    # and the draws matter: the two images' runs differ
    assert not torch.allclose(batch.x[0], batch.x[1])


def test_nonlinear_operator_fits_the_data_far_better_than_no_data_step():
    prior, *_ = _toy()
    op = NonlinearBlur(sigma=1.0, kernel_size=3)
    g = torch.Generator().manual_seed(7)
    clean = ((prior.means[0].float().reshape(1, 1, 4, 4) + 1) / 2).clamp(0, 1)
    sigma = 0.002  # low, so that the noise floor leaves room to tell a fit from none
    y = op(clean) + sigma * torch.randn(1, 1, 4, 4, generator=g)
    guided = _run(prior, op, y, n=8, sigma=sigma, steps=30)  # paper: one gradient step per step
    # lam so large that rho_t keeps every step at the denoiser's estimate: no data step
    free = _run(prior, op, y, n=8, sigma=sigma, steps=30, lam=1e12)
    # measured over 5 noise seeds: 0.17-0.22 of the unconditional residual
    assert np.mean(guided.trace.final_residual) < 0.3 * np.mean(free.trace.final_residual)
    assert guided.trace.counts["decoder_backward"] == guided.trace.counts["unet_backward"] == 0


# --- settings ---------------------------------------------------------------------------


def test_lam_and_zeta_resolve_to_the_authors_values_by_task():
    cfg = DiffPIRConfig.preset("paper")
    mask = torch.ones(8, 8)
    assert (cfg.resolved(GaussianBlur(2.0, 5)).lam, cfg.resolved(GaussianBlur(2.0, 5)).zeta) == (7.0, 0.3)
    assert cfg.resolved(BicubicDownsample(2)).zeta == 0.25
    assert (cfg.resolved(Inpainting(mask)).lam, cfg.resolved(Inpainting(mask)).zeta) == (1.0, 1.0)
    wrapped = Cropped(Inpainting(mask), (0, 0, 8, 8), (8, 8))
    assert cfg.resolved(wrapped).zeta == 1.0
    assert cfg.resolved(NonlinearBlur()).zeta == 0.3  # no task of theirs: deblurring's values
    assert DiffPIRConfig.preset("paper", zeta=0.9).resolved(Inpainting(mask)).zeta == 0.9
    assert cfg.to_dict()["steps"] == 100 and cfg.to_dict()["grid"] == "quad"


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="paper, fast"):
        DiffPIRConfig.preset("slow")
