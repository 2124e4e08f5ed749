"""ReSample against closed forms: Proposition 2, an exact Gaussian-mixture posterior,
and the cost its schedule implies."""

import math

import pytest
import torch

from resample_cli.operators.matrix import MatrixOperator
from resample_cli.priors.gaussian import GaussianMixturePrior
from resample_cli.solvers.ddim import stochastic_resample
from resample_cli.solvers.resample import ReSampleConfig, dc_schedule, resample


def test_stochastic_resample_matches_proposition_2():
    gen = torch.Generator().manual_seed(0)
    z0y = torch.randn(1, 4, generator=gen)
    z_prime = torch.randn(1, 4, generator=gen)
    abar, sigma2 = 0.6, 0.3
    n = 200_000
    draws = stochastic_resample(z0y.expand(n, 4), z_prime.expand(n, 4), abar, sigma2 / (1 - abar), gen)
    # Proposition 2, written out independently of the implementation.
    var = sigma2 * (1 - abar) / (sigma2 + 1 - abar)
    mean = (sigma2 * math.sqrt(abar) * z0y + (1 - abar) * z_prime) / (sigma2 + 1 - abar)
    se_mean = math.sqrt(var / n)
    assert torch.allclose(draws.mean(0), mean[0], atol=5 * se_mean)
    # The sample variance of n normal draws has standard error var * sqrt(2 / n).
    assert torch.allclose(draws.var(0), torch.full((4,), var), atol=5 * var * math.sqrt(2 / n))


def _gaussian_problem(seed: int = 1):
    d, m, sigma = 16, 8, 0.02
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    covs = 0.04 * (a @ a.transpose(1, 2) / d) + 0.01 * torch.eye(d, dtype=torch.float64)
    means = 0.3 * torch.randn(2, d, generator=g, dtype=torch.float64)
    prior = GaussianMixturePrior(torch.tensor([0.4, 0.6]), means, covs, (1, 4, 4))
    matrix = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    z0 = means[1] + torch.linalg.cholesky(covs[1]) @ torch.randn(d, generator=g, dtype=torch.float64)
    y = matrix @ ((z0 + 1) / 2) + sigma * torch.randn(m, generator=g, dtype=torch.float64)
    # The image is x = (z + 1) / 2, so y = (M / 2) z + M 1/2 + n in the latent.
    post = prior.sample_posterior(
        matrix / 2, matrix @ torch.full((d,), 0.5, dtype=torch.float64), y, sigma, 4000, g
    )
    exact_mean = (post.mean(0) + 1) / 2
    prior_mean = ((prior.weights[:, None] * means).sum(0) + 1) / 2
    return prior, MatrixOperator(matrix, (1, 4, 4)), y.float(), sigma, exact_mean, prior_mean


def test_fast_preset_fits_to_the_noise_level_and_approaches_the_exact_posterior_mean():
    prior, op, y, sigma, exact_mean, prior_mean = _gaussian_problem()
    n = 64
    result = resample(
        y.expand(n, -1).clone(),
        op,
        prior,
        ReSampleConfig.preset("fast", steps=100),
        sigma_y=sigma,
        image_size=(4, 4),
        generator=torch.Generator().manual_seed(0),
    )
    ratio = torch.tensor(result.trace.final_residual) / sigma  # rms / sigma_y = ||r|| / (sigma sqrt(m))
    # Discrepancy principle: near the noise level, not far below it (no noise overfitting).
    assert 0.7 <= ratio.mean() <= 1.2
    assert ratio.min() >= 0.5
    # ReSample is not an exact sampler; measured here the mean of 64 estimates lies at
    # 0.42 of the prior-to-posterior mean distance (Monte Carlo error alone ~0.1).
    err = (result.x.flatten(1).double().mean(0) - exact_mean).norm()
    assert err <= 0.6 * (prior_mean - exact_mean).norm()


def test_threshold_stopping_overfits_the_noise_where_discrepancy_does_not():
    prior, op, y, sigma, *_ = _gaussian_problem()
    common = dict(steps=20, latent_iters=300, plateau=0)
    ratios = {}
    for stop in ("threshold", "discrepancy"):
        cfg = ReSampleConfig.preset("fast", stop=stop, **common)
        r = resample(y[None], op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=torch.Generator())
        ratios[stop] = r.trace.final_residual[0] / sigma
    assert ratios["threshold"] < 0.3 < 0.7 < ratios["discrepancy"]


def test_paper_schedule_matches_the_authors_rule():
    stages = dc_schedule(ReSampleConfig.preset("paper"))
    # Authors' code: index = 499 - i counts down; data consistency when index % 10 == 0
    # and 0 < index <= 500 - 500 // 3 (the last two thirds); pixel space while index >= 500 // 3.
    pixel = [i for i, s in enumerate(stages) if s == "pixel"]
    latent = [i for i, s in enumerate(stages) if s == "latent"]
    assert [499 - i for i in pixel] == list(range(330, 165, -10))
    assert [499 - i for i in latent] == list(range(160, 0, -10))


def test_paper_preset_counts_equal_what_its_schedule_implies():
    prior, op, y, sigma, *_ = _gaussian_problem()
    # 25 divides the 1000 training steps, so the authors' grid has exactly 25 steps.
    n, steps, look, p_iters, l_iters = 2, 25, 2, 5, 7
    # No early stopping, so every optimisation runs its full length.
    cfg = ReSampleConfig.preset(
        "paper",
        steps=steps,
        dc_every=3,
        lookahead=look,
        pixel_iters=p_iters,
        latent_iters=l_iters,
        stop_mse=0.0,
        plateau=0,
    )
    stages = dc_schedule(cfg)
    n_pixel, n_latent = stages.count("pixel"), stages.count("latent")
    assert n_pixel > 0 and n_latent > 0
    r = resample(y.expand(n, -1).clone(), op, prior, cfg, sigma_y=sigma, image_size=(4, 4))
    c = r.trace.counts
    assert c["unet_forward"] == n * (steps + (n_pixel + n_latent) * look)
    assert c["unet_backward"] == n * steps  # the DPS gradient at every step
    # DPS decode per step; a decode of z0hat and one of the encoded solution per pixel
    # stage; each latent solve and the final one decode once per iteration; one decode of
    # the result.
    assert c["decoder_forward"] == n * (steps + 2 * n_pixel + (n_latent + 1) * l_iters + 1)
    assert c["decoder_backward"] == n * (steps + (n_latent + 1) * l_iters)
    assert c["encoder_forward"] == n * n_pixel
    assert c["operator_calls"] == n * (steps + n_pixel * (p_iters + 1) + (n_latent + 1) * l_iters + 1)
    assert len(r.trace.residual_per_dc_step) == n_pixel + n_latent


def test_same_seed_same_output_and_batches_stop_per_image():
    prior, op, y, sigma, *_ = _gaussian_problem()
    batch = torch.stack([y, y + 0.3])
    cfg = ReSampleConfig.preset("fast", steps=20)
    runs = [
        resample(
            batch,
            op,
            prior,
            cfg,
            sigma_y=sigma,
            image_size=(4, 4),
            generator=torch.Generator().manual_seed(5),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].x, runs[1].x)
    iters = torch.tensor(runs[0].trace.dc_iterations)
    assert (iters[:, 0] != iters[:, 1]).any()  # the two images stopped at different times
    other = resample(
        batch, op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=torch.Generator().manual_seed(6)
    )
    assert not torch.equal(runs[0].x, other.x)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="paper, fast"):
        ReSampleConfig.preset("slow")


def test_only_observed_entries_count_towards_the_discrepancy_target():
    # Inpainting of the Gaussian-mixture image: half the pixels missing. The residual RMS
    # is over the 8 observed pixels, so the fit stops at sigma there, not at sigma * sqrt(2).
    from resample_cli.operators import Inpainting

    prior, _, _, sigma, *_ = _gaussian_problem()
    mask = torch.zeros(4, 4)
    mask[::2] = 1
    op = Inpainting(mask)
    g = torch.Generator().manual_seed(3)
    clean = ((prior.means[1].float().reshape(1, 1, 4, 4)) + 1) / 2
    y = op(clean + sigma * torch.randn(1, 1, 4, 4, generator=g))
    assert op.measurement_count(y) == 8
    r = resample(
        y.expand(16, -1, -1, -1).clone(),
        op,
        prior,
        ReSampleConfig.preset("fast", steps=40),
        sigma_y=sigma,
        generator=torch.Generator().manual_seed(0),
    )
    ratio = torch.tensor(r.trace.final_residual) / sigma
    assert 0.7 <= ratio.mean() <= 1.2


def test_per_image_masks_get_per_image_targets_and_an_unmasked_y_is_masked():
    """Two images with their own masks (16 and 4 observed pixels) stop at sigma over their
    own observed pixels; a y that holds values at missing pixels gives the same run as the
    masked y (the library masks it; nothing there is fit)."""
    from resample_cli.operators import Inpainting

    prior, _, _, sigma, *_ = _gaussian_problem()
    masks = torch.ones(2, 1, 4, 4)
    masks[1, :, 1:] = 0  # the second image observes its first row only
    op = Inpainting(masks)
    g = torch.Generator().manual_seed(3)
    clean = ((prior.means[1].float().reshape(1, 1, 4, 4)) + 1) / 2
    y = op(clean.expand(2, -1, -1, -1) + sigma * torch.randn(2, 1, 4, 4, generator=g))
    cfg = ReSampleConfig.preset("fast", steps=30)

    def run(measurement):
        return resample(
            measurement, op, prior, cfg, sigma_y=sigma, generator=torch.Generator().manual_seed(0)
        )

    masked = run(y)
    # The residual over each image's observed pixels, computed here from the output.
    per_image = ((op(masked.x) - y).pow(2).flatten(1).sum(1) / torch.tensor([16.0, 4.0])).sqrt()
    torch.testing.assert_close(torch.tensor(masked.trace.final_residual), per_image)
    assert (per_image / sigma).max() < 1.5
    cluttered = run(y + (1 - masks) * 0.7)
    torch.testing.assert_close(cluttered.x, masked.x)


def test_a_pixel_stage_reports_the_residual_of_the_latent_it_hands_on():
    """After a pixel solve, the recorded residual is that of D(E(x)), what the latent
    handed on reproduces, not that of the pixel solution x. With a decoder from a 4-dim
    latent to 16 pixels, no latent fits y better than the least-squares fit within the
    decoder's range, while x (16 free pixels, 8 measurements) fits it almost exactly."""
    _, op, y, sigma, *_ = _gaussian_problem()
    g = torch.Generator().manual_seed(2)
    decoder = torch.randn(16, 4, generator=g, dtype=torch.float64) / 2
    prior = GaussianMixturePrior(
        torch.ones(1),
        torch.zeros(1, 4),
        0.1 * torch.eye(4)[None],
        (1, 2, 2),
        decoder=decoder,
        image_shape=(1, 4, 4),
    )
    # Best fit in the range: x = (D z + 1) / 2, so y ~ (M D / 2) z + M 1/2.
    m = op.matrix.to(torch.float64)
    offset = m @ torch.full((16,), 0.5, dtype=torch.float64)
    z_best = torch.linalg.lstsq(m @ decoder / 2, y.double() - offset).solution
    best_rms = float((m @ (decoder @ z_best + 1) / 2 - y.double()).pow(2).mean().sqrt())
    cfg = ReSampleConfig.preset("paper", steps=25, dc_every=5, lookahead=1, pixel_iters=300, latent_iters=5)
    recorded = []
    resample(
        y[None],
        op,
        prior,
        cfg,
        sigma_y=sigma,
        image_size=(4, 4),
        generator=torch.Generator().manual_seed(0),
        callback=lambda info: recorded.append(info.residual[0]) if info.stage == "pixel" else None,
    )
    assert recorded and best_rms > 5 * sigma
    assert min(recorded) >= best_rms * (1 - 1e-4)


def test_lean_preset_stays_within_its_network_budget():
    """`lean`: at most 30 decoder backward passes and 50 UNet forwards per image, no UNet
    backward, whatever the stopping rules do (here nothing stops a latent solve early:
    a zero-noise target on a problem with noise, and no plateau rule)."""
    prior, op, y, sigma, *_ = _gaussian_problem()
    n = 3
    cfg = ReSampleConfig.preset("lean", tau=0.0, plateau=0)
    r = resample(y.expand(n, -1).clone(), op, prior, cfg, sigma_y=sigma, image_size=(4, 4))
    c = r.trace.counts
    assert c["unet_forward"] == 50 * n and c["unet_backward"] == 0
    # Two latent data-consistency steps (the last two) and the final latent solve, each to its cap.
    assert dc_schedule(cfg).count("latent") == 2
    assert c["decoder_backward"] == 3 * 10 * n
