"""``ReSampleConfig.preset("paper")`` against an independent port of the authors' loop.

``tests/authors_port.py`` re-implements ``resample_sampling`` (soominkwon/resample at
3e332b2) in the authors' [-1, 1] units, sharing no code with ``resample_cli/solvers/``. On
an exact-posterior toy (a 3-component Gaussian mixture on a 1x4x4 latent, a random
well-conditioned linear decoder, separable [1/4, 1/2, 1/4] blur, sigma = 0.02):

- with the same random draws, ``paper`` and the port give the same latents;
- with independent draws, their error to the exact posterior mean and their sliced
  Wasserstein distance to exact posterior draws agree within two standard errors;
- each ``ReSampleConfig`` field that switches a quirk off matches the port's switch.

100 DDIM steps (the authors' grid for 100 steps: 991, 981, ..., 1) keep the test short;
``benchmarks/paper_oracle.py`` runs the paper's 500.
"""

import math
from dataclasses import replace

import pytest
import torch
from authors_port import CONFIG_FIELDS, QUIRKS, PortConfig, authors_resample

from resample_cli.operators.matrix import MatrixOperator
from resample_cli.priors.gaussian import GaussianMixturePrior
from resample_cli.solvers.resample import ReSampleConfig, resample

SIDE, D, SIGMA, STEPS = 4, 16, 0.02, 100


def _toy(seed: int = 0):
    """Prior, blur operator, one noisy measurement, the exact posterior mean and exact draws."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, D, D, generator=g, dtype=torch.float64)
    covs = 0.03 * (a @ a.transpose(1, 2) / D) + 0.005 * torch.eye(D, dtype=torch.float64)
    means = 0.4 * torch.randn(3, D, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(3, generator=g, dtype=torch.float64)
    q1 = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64)).Q
    q2 = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64)).Q
    decoder = q1 @ torch.diag(torch.linspace(0.7, 1.3, D, dtype=torch.float64)) @ q2.T
    prior = GaussianMixturePrior(weights, means, covs, (1, SIDE, SIDE), decoder=decoder)
    off = torch.full((SIDE - 1,), 0.25, dtype=torch.float64)
    t = 0.5 * torch.eye(SIDE, dtype=torch.float64) + torch.diag(off, 1) + torch.diag(off, -1)
    blur = torch.kron(t, t)
    k = int(torch.multinomial(prior.weights, 1, generator=g))
    z_true = means[k] + torch.linalg.cholesky(covs[k]) @ torch.randn(D, generator=g, dtype=torch.float64)
    # The image is x = (decoder z + 1) / 2, so y = (blur decoder / 2) z + blur 1/2 + noise.
    measure = blur @ decoder / 2
    offset = blur @ torch.full((D,), 0.5, dtype=torch.float64)
    y = measure @ z_true + offset + SIGMA * torch.randn(D, generator=g, dtype=torch.float64)
    w, mu, _ = prior.posterior(measure, offset, y, SIGMA)
    exact_mean = _image(decoder, (w[:, None] * mu).sum(0, keepdim=True))[0]
    exact_draws = _image(decoder, prior.sample_posterior(measure, offset, y, SIGMA, 256, g))
    return prior, MatrixOperator(blur.float(), (1, SIDE, SIDE)), y.float(), exact_mean, exact_draws


def _image(decoder: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (z.flatten(1).to(torch.float64) @ decoder.T + 1) / 2


def _ours(prior, op, y, n, seed, **fields):
    config = ReSampleConfig.preset("paper", steps=STEPS, **fields)
    ys = y.expand(n, -1).clone()
    return resample(
        ys,
        op,
        prior,
        config,
        sigma_y=SIGMA,
        image_size=(SIDE, SIDE),
        generator=torch.Generator().manual_seed(seed),
    )


def _port(prior, op, y, n, seed, config=None):
    config = config or PortConfig(steps=STEPS)
    ys = y.expand(n, -1).clone()
    return authors_resample(
        ys, op, prior, config, image_size=(SIDE, SIDE), draw=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="module")
def toy():
    return _toy()


def test_same_draws_give_the_authors_latents(toy):
    prior, op, y, *_ = toy
    ours, port = _ours(prior, op, y, 6, seed=3), _port(prior, op, y, 6, seed=3)
    # The two codes round differently (float32 AdamW written out by hand in the port), so
    # agreement is to float32 precision amplified over 100 steps, not bitwise.
    torch.testing.assert_close(ours.z, port.z, atol=1e-4, rtol=0)
    # The same number of AdamW steps in every solve, image by image.
    assert ours.trace.dc_iterations == port.iterations


@pytest.mark.parametrize("quirk", list(CONFIG_FIELDS))
def test_each_field_switches_what_the_ports_quirk_switches(toy, quirk):
    prior, op, y, *_ = toy
    # Shorter solves and a 50-iteration plateau window, so that the stopping rules act.
    short = {"pixel_iters": 400, "latent_iters": 150}
    ours = _ours(prior, op, y, 2, seed=4, plateau=50, **short, **CONFIG_FIELDS[quirk])
    port_config = replace(PortConfig(steps=STEPS), window=50, **short, **QUIRKS[quirk])
    port = _port(prior, op, y, 2, seed=4, config=port_config)
    torch.testing.assert_close(ours.z, port.z, atol=1e-4, rtol=0)
    # A loss that rounds differently in the two codes may stop a solve one step apart.
    for a, b in zip(ours.trace.dc_iterations, port.iterations, strict=True):
        assert max(abs(i - j) for i, j in zip(a, b, strict=True)) <= 1


def test_independent_draws_agree_with_the_authors_in_distribution(toy):
    prior, op, y, exact_mean, exact_draws = toy
    n = 48
    ours = _image(prior.decoder, _ours(prior, op, y, n, seed=10).z)
    port = _image(prior.decoder, _port(prior, op, y, n, seed=11).z)
    directions = torch.randn(128, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(8)
    err_ours, err_ours_se, swd_ours, swd_ours_se = _scores(ours, exact_mean, exact_draws, directions, g)
    err_port, err_port_se, swd_port, swd_port_se = _scores(port, exact_mean, exact_draws, directions, g)
    assert abs(err_ours - err_port) < 2 * math.hypot(err_ours_se, err_port_se)
    assert abs(swd_ours - swd_port) < 2 * math.hypot(swd_ours_se, swd_port_se)


def _scores(samples, exact_mean, exact_draws, directions, g, resamples: int = 100):
    """Mean error to the exact posterior mean and sliced W1 to exact draws, each with a
    bootstrap standard error."""

    def both(s, ref):
        err = float((s.mean(0) - exact_mean).norm())
        pa, pb = (s @ directions.T).sort(0).values, (ref @ directions.T).sort(0).values
        qs = torch.linspace(0, 1, 64, dtype=torch.float64)
        swd = float((pa.quantile(qs, dim=0) - pb.quantile(qs, dim=0)).abs().mean())
        return err, swd

    err, swd = both(samples, exact_draws)
    boots = []
    for _ in range(resamples):
        i = torch.randint(len(samples), (len(samples),), generator=g)
        j = torch.randint(len(exact_draws), (len(exact_draws),), generator=g)
        boots.append(both(samples[i], exact_draws[j]))
    se = torch.tensor(boots, dtype=torch.float64).std(0)
    return err, float(se[0]), swd, float(se[1])
