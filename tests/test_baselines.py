"""Latent-DPS and PSLD on the Gaussian-mixture problem: shapes, exact counts,
determinism, that their guidance fits the data, and PSLD's refusal of nonlinear operators."""

import pytest
import torch
from test_solver import _gaussian_problem

from resample_cli.operators import NonlinearBlur
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.solvers.latent_dps import LatentDPSConfig, PSLDConfig, latent_dps, psld

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


SOLVERS = {"latent-dps": (latent_dps, LatentDPSConfig), "psld": (psld, PSLDConfig)}


def _problem(orthonormal: bool = False):
    """The Gaussian-mixture problem of test_solver; with ``orthonormal`` its matrix's rows
    are orthonormalised (A A^T = I, where PSLD's gluing term is the projection onto the
    data-consistent set) and y measured afresh from the second component's mean."""
    prior, op, y, sigma, *_ = _gaussian_problem()
    if orthonormal:
        op = MatrixOperator(torch.linalg.qr(op.matrix.T).Q.T.contiguous(), (1, 4, 4))
        clean = (prior.means[1].float().reshape(1, 1, 4, 4) + 1) / 2
        y = op(clean)[0] + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    return prior, op, y, sigma


def _run(name, n=8, seed=0, orthonormal=False, **overrides):
    prior, op, y, sigma = _problem(orthonormal)
    solver, config = SOLVERS[name]
    cfg = config.preset("fast", **overrides)
    gen = torch.Generator().manual_seed(seed)
    return solver(y.expand(n, -1).clone(), op, prior, cfg, sigma_y=sigma, image_size=(4, 4), generator=gen)


@pytest.mark.parametrize("name", SOLVERS)
def test_counts_equal_what_the_schedule_implies(name):
    n, steps = 3, 12
    r = _run(name, n=n, steps=steps)
    assert r.x.shape == (n, 1, 4, 4) and torch.isfinite(r.x).all()
    assert r.z.shape == (n, 1, 4, 4)
    c = r.trace.counts
    assert c["unet_forward"] == c["unet_backward"] == n * steps
    assert c["decoder_forward"] == n * (steps + 1)  # one per step and the final decode
    assert c["decoder_backward"] == n * steps
    glue = name == "psld"
    assert c["encoder_forward"] == c["encoder_backward"] == (n * steps if glue else 0)
    # A(D(z0hat)) per step (PSLD's gluing term reuses it) and the final residual.
    assert c["operator_calls"] == n * (steps + 1)
    assert len(r.trace.final_residual) == n


@pytest.mark.parametrize("name", SOLVERS)
def test_same_seed_same_output(name):
    a, b, other = _run(name, steps=10), _run(name, steps=10), _run(name, seed=1, steps=10)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, other.x)


@pytest.mark.parametrize("name", SOLVERS)
def test_guidance_fits_the_measurement_far_better_than_no_guidance(name):
    # DPS's step is not scale-free: zeta = 0.5 ([-1, 1] units) overshoots on this 16-pixel
    # problem; 0.15 (0.3 on the [0, 1] residual) suits it. Measured with the fast presets
    # (eta 0; PSLD gamma 0.1, noisy prediction): 0.12 (Latent-DPS) and 0.22 (PSLD)
    # of the unconditional residual. On the raw random matrix (||A|| ~ 1.7) PSLD's gluing
    # term overshoots and it only halves the residual.
    kw = dict(n=32, steps=100, zeta=0.15, orthonormal=True)
    off = {"zeta": 0.0, **({"gamma": 0.0} if name == "psld" else {})}
    guided = torch.tensor(_run(name, **kw).trace.final_residual).mean()
    unconditional = torch.tensor(_run(name, **{**kw, **off}).trace.final_residual).mean()
    assert guided < 0.3 * unconditional


def test_psld_refuses_a_nonlinear_operator():
    prior, _, y, sigma, *_ = _gaussian_problem()
    with pytest.raises(ValueError, match="linear operator"):
        psld(y[None], NonlinearBlur(kernel_size=3), prior, PSLDConfig.preset("fast"), sigma_y=sigma)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="paper, fast"):
        PSLDConfig.preset("slow")
