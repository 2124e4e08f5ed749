"""The discrepancy-principle Tikhonov solve from one Krylov basis, against dense algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from resample_cli.operators import ParallelBeamCT
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.solvers.consistency import fit_pixels_discrepancy
from resample_cli.solvers.krylov import discrepancy_tikhonov, tikhonov_by_discrepancy


def dense_tikhonov(a: np.ndarray, y: np.ndarray, x0: np.ndarray, lam: float) -> np.ndarray:
    return x0 + np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y - a @ x0))


def rms(a, y, x) -> float:
    return float(np.sqrt(np.mean((y - a @ x) ** 2)))


@pytest.fixture
def problem():
    """An under-determined, ill-conditioned problem (singular values 1 .. 1e-3), two images."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    v, _ = np.linalg.qr(rng.standard_normal((48, 30)))
    a = u @ np.diag(np.logspace(0, -3, 30)) @ v.T
    x_true = rng.uniform(0, 1, (2, 48))
    y = x_true @ a.T + 0.01 * rng.standard_normal((2, 30))
    x0 = np.full((2, 48), 0.5)
    return a, y, x0


def test_matches_the_dense_discrepancy_solution(problem):
    a, y, x0 = problem
    op = MatrixOperator(torch.from_numpy(a), (1, 6, 8)).double()
    targets = [0.012, 0.02]
    for i, target in enumerate(targets):
        got, got_rms = discrepancy_tikhonov(
            op, torch.from_numpy(y[i : i + 1]), torch.from_numpy(x0[i : i + 1]).reshape(1, 1, 6, 8), target
        )
        # The reference: the lam whose dense Tikhonov residual equals the target (it grows with lam).
        log_lam = brentq(
            lambda t, i=i, target=target: rms(a, y[i], dense_tikhonov(a, y[i], x0[i], np.exp(t))) - target,
            -9,
            9,
        )
        expected = dense_tikhonov(a, y[i], x0[i], np.exp(log_lam))
        np.testing.assert_allclose(got.numpy().ravel(), expected, rtol=1e-5, atol=1e-6)
        assert float(got_rms) == pytest.approx(target, rel=1e-5)


def test_a_target_below_reach_gets_the_smallest_weight(problem):
    a, y, x0 = problem
    op = MatrixOperator(torch.from_numpy(a), (1, 6, 8)).double()
    got, _ = discrepancy_tikhonov(
        op, torch.from_numpy(y[:1]), torch.from_numpy(x0[:1]).reshape(1, 1, 6, 8), 1e-9, lam_range=(1e-2, 1e2)
    )
    np.testing.assert_allclose(got.numpy().ravel(), dense_tikhonov(a, y[0], x0[0], 1e-2), atol=1e-5)


def test_generic_operators_take_the_krylov_path_and_agree_with_bisection(problem):
    # The same problem through an operator without a fast solve: one Krylov basis gives
    # the answer the per-lam dense solves give, image by image in one batch.
    a, y, x0 = problem

    class Generic(MatrixOperator):
        fast_solve = False

    targets = 0.015
    x_init = torch.from_numpy(x0).reshape(2, 1, 6, 8)
    fast = fit_pixels_discrepancy(
        MatrixOperator(torch.from_numpy(a), (1, 6, 8)), torch.from_numpy(y), x_init, targets
    )
    krylov = fit_pixels_discrepancy(
        Generic(torch.from_numpy(a), (1, 6, 8)), torch.from_numpy(y), x_init, targets
    )
    np.testing.assert_allclose(krylov.value.numpy(), fast.value.numpy(), rtol=1e-3, atol=1e-4)
    # The fast path stops within 1e-4 of the target, the Krylov path bisects 30 times (no
    # operator calls): its residual sits on the target, the coarser one just below it.
    assert bool((krylov.rms <= targets * (1 + 1e-6)).all()) and bool((krylov.rms >= fast.rms).all())


@pytest.mark.parametrize("target", [0.011, 0.015, 0.05])
def test_the_fast_solve_search_finds_the_discrepancy_weight(problem, target):
    """The search over lam of operators with a fast solve, against the dense root (brentq):
    a residual at most the target, within 1e-4 of it or a weight within the bracket width."""
    a, y, x0 = problem
    fit = fit_pixels_discrepancy(
        MatrixOperator(torch.from_numpy(a), (1, 6, 8)).double(),
        torch.from_numpy(y),
        torch.from_numpy(x0).reshape(2, 1, 6, 8),
        target,
    )
    for i in range(2):
        root = brentq(
            lambda t, i=i: rms(a, y[i], dense_tikhonov(a, y[i], x0[i], np.exp(t))) - target, -12, 12
        )
        got = rms(a, y[i], fit.value[i].numpy().ravel())
        assert got <= target * (1 + 1e-9) and float(fit.rms[i]) == pytest.approx(got, rel=1e-9)
        assert got >= target * (1 - 1e-4) or abs(np.log(float(fit.lam[i])) - root) <= np.log(1e8) / 4096


def test_a_sparse_view_ct_solve_meets_its_target_on_every_image():
    """Regression: a Lanczos expansion of the residual lost orthogonality on this CT problem
    and returned the smallest weight with twice the target residual for the second image.
    The reference is independent: residuals computed from the returned images, and tightly
    converged conjugate-gradient Tikhonov solves at the returned weight and just above it."""
    op = ParallelBeamCT(30, 32)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    y = op(x) + 0.005 * torch.randn(op(x).shape, generator=g)
    x0 = x + 0.1 * torch.randn(x.shape, generator=g)
    fit = tikhonov_by_discrepancy(op, y, x0, 0.005)

    def residual(image: torch.Tensor) -> np.ndarray:
        return (op(image) - y).pow(2).flatten(1).mean(1).sqrt().numpy()

    np.testing.assert_allclose(residual(fit.x), 0.005, rtol=1e-3)
    np.testing.assert_allclose(fit.rms.numpy(), residual(fit.x), rtol=1e-3)
    reference = op.solve(y, x0, fit.lam, tol=1e-10, max_iter=2000)
    assert float((fit.x - reference).abs().max()) < 1e-2
    assert (residual(op.solve(y, x0, 1.1 * fit.lam, tol=1e-10, max_iter=2000)) > 0.005).all()
