"""The Gauss-Newton latent solve against least squares computed independently."""

import numpy as np
import pytest
import torch
from tiny_prior import make_tiny_prior

from resample_cli.operators.blur import GaussianBlur
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.priors import load_prior
from resample_cli.priors.gaussian import GaussianMixturePrior
from resample_cli.solvers.consistency import fit_latent_gauss_newton, per_sample_mse
from resample_cli.solvers.resample import ReSampleConfig, resample
from resample_cli.solvers.trace import CountingPrior, Trace


def _linear_problem(n: int = 2):
    """y = M (D z + 1) / 2 + noise: a linear decoder D (16 -> 16) and an 8 x 16 M."""
    g = torch.Generator().manual_seed(3)
    d = 16
    decoder = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    prior = GaussianMixturePrior(
        torch.ones(1), torch.zeros(1, d), torch.eye(d)[None], (1, 4, 4), decoder=decoder
    )
    matrix = torch.randn(8, d, generator=g, dtype=torch.float64) / 4
    op = MatrixOperator(matrix.float(), (1, 4, 4))
    y = torch.randn(n, 8, generator=g)
    z_init = torch.randn(n, 1, 4, 4, generator=g)
    return prior, op, decoder, matrix, y, z_init


def test_gauss_newton_on_a_linear_decoder_reaches_the_minimum_norm_least_squares_step():
    prior, op, decoder, matrix, y, z_init = _linear_problem()
    trace = Trace()
    fit = fit_latent_gauss_newton(
        CountingPrior(prior, trace), op, y, z_init, iters=40, target_mse=torch.zeros(2)
    )
    # A(D(z)) = K z + c with K = M D / 2, c = M 1 / 2: the step from z_init is K^+ (y - K z_init - c).
    k = (matrix @ decoder / 2).numpy()
    c = matrix.sum(1).numpy() / 2
    for i in range(2):
        z0 = z_init[i].flatten().double().numpy()
        step = np.linalg.lstsq(k, y[i].double().numpy() - k @ z0 - c, rcond=None)[0]
        np.testing.assert_allclose(fit.value[i].flatten().numpy(), z0 + step, atol=2e-3)
    assert fit.rms.max() < 1e-3
    assert fit.iterations.tolist() == [40, 40]
    assert trace.counts["decoder_backward"] == 2 * 40


def test_gauss_newton_stops_each_image_on_its_target_within_its_cap():
    prior, op, _, _, y, z_init = _linear_problem()
    start = per_sample_mse(op((prior.decode(z_init.double()).float() + 1) / 2), y)
    target = start * torch.tensor([0.5, 0.01])  # the first image stops sooner
    fit = fit_latent_gauss_newton(CountingPrior(prior, Trace()), op, y, z_init, iters=40, target_mse=target)
    # The discrepancy principle: each lands on its target (the last step is shortened to it).
    assert torch.allclose(fit.rms**2, target, rtol=2e-3)
    assert 1 <= fit.iterations[0] < fit.iterations[1] < 40


def test_gauss_newton_decodes_in_float32_under_bfloat16_autocast(tmp_path):
    """Forward differences in bfloat16 would be noise: the solve is the same with and
    without autocast."""
    prior = load_prior(str(make_tiny_prior(tmp_path / "prior", autoencoder="kl")))
    assert prior.continuous_decoder
    op = GaussianBlur(1.0, kernel_size=5)
    g = torch.Generator().manual_seed(0)
    z_init = torch.randn(1, *prior.latent_shape(32, 32), generator=g)
    y = op(torch.rand(1, 3, 32, 32, generator=g))
    fits = [
        fit_latent_gauss_newton(
            CountingPrior(prior, Trace(), autocast), op, y, z_init, iters=6, target_mse=torch.zeros(1)
        )
        for autocast in (None, torch.bfloat16)
    ]
    assert torch.equal(fits[0].value, fits[1].value)
    assert fits[0].rms < per_sample_mse(op(CountingPrior(prior, Trace()).decode(z_init)), y).sqrt()


def test_a_quantising_decoder_gets_the_adam_solve(tmp_path):
    prior = load_prior(str(make_tiny_prior(tmp_path / "prior", autoencoder="vq")))
    assert not prior.continuous_decoder
    op = GaussianBlur(1.0, kernel_size=5)
    y = op(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    runs = [
        resample(
            y,
            op,
            prior,
            ReSampleConfig.preset("lean", steps=6, latent_solver=solver),
            sigma_y=0.01,
            generator=torch.Generator().manual_seed(1),
        ).x
        for solver in ("adam", "gauss_newton")
    ]
    assert torch.equal(*runs)


def test_each_image_of_a_batch_gets_what_it_would_get_alone(tmp_path):
    prior = load_prior(str(make_tiny_prior(tmp_path / "prior", autoencoder="kl")))
    op = GaussianBlur(1.0, kernel_size=5)
    g = torch.Generator().manual_seed(0)
    z_init = torch.randn(2, *prior.latent_shape(32, 32), generator=g)
    y = op(torch.rand(2, 3, 32, 32, generator=g))
    start = per_sample_mse(op(CountingPrior(prior, Trace()).decode(z_init)), y)
    target = start * torch.tensor([0.9, 0.6])  # the first stops within a few iterations

    def solve(i: slice):
        return fit_latent_gauss_newton(
            CountingPrior(prior, Trace()), op, y[i], z_init[i], iters=12, target_mse=target[i]
        )

    both = solve(slice(0, 2))
    alone = [solve(slice(i, i + 1)) for i in range(2)]
    assert both.iterations[0] < both.iterations[1]
    assert both.iterations.tolist() == [a.iterations.item() for a in alone]
    # Equal up to float32 rounding, which the forward differences amplify: batched and
    # single decoder passes differ by about 1e-6, the steps here by about 1e-3 of their size.
    for i, a in enumerate(alone):
        assert (both.value[i] - a.value[0]).norm() <= 3e-3 * (a.value[0] - z_init[i]).norm()
        assert both.rms[i] == pytest.approx(a.rms.item(), rel=1e-3)
