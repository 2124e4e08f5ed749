"""Properties every operator must have: exact adjoints, gradients, dtypes, devices, solves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from resample_cli.operators import (
    BicubicDownsample,
    Blur,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    ModuleOperator,
    NonlinearBlur,
    ParallelBeamCT,
    random_mask,
)

SIZE = 12


def _random_kernel(shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(3).random(shape)


def _channel_mask() -> torch.Tensor:
    """A (2, 3, H, W) mask that differs per image and channel."""
    return (torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) > 0.4).double()


# Small instances of every linear operator, on SIZE x SIZE images.
LINEAR = {
    "blur-asymmetric": lambda: Blur(_random_kernel((4, 5))),
    "gaussian": lambda: GaussianBlur(1.5, kernel_size=7),
    "gaussian-kernel-larger-than-image": lambda: GaussianBlur(3.0, kernel_size=61),
    "bicubic-x2": lambda: BicubicDownsample(2),
    "bicubic-x3": lambda: BicubicDownsample(3),
    "inpainting-shared": lambda: Inpainting(random_mask((SIZE, SIZE), 0.5, torch.Generator().manual_seed(0))),
    "inpainting-per-channel": lambda: Inpainting(_channel_mask()),
    "ct": lambda: ParallelBeamCT(7, SIZE),
    "ct-list-angles-more-detectors": lambda: ParallelBeamCT(
        [0.0, 10.0, 47.5, 90.0, 200.0], SIZE, det_count=15
    ),
    "ct-no-circle": lambda: ParallelBeamCT(5, SIZE, circle=False),
}
NONLINEAR = {
    "nonlinear-blur": lambda: NonlinearBlur(sigma=1.0, kernel_size=5, gain=2.0),
    "module": lambda: ModuleOperator(nn.Conv2d(3, 2, 3, padding=1).double()),
}
ALL = {**LINEAR, **NONLINEAR}


def _image(n: int = 2, c: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense(op: LinearOperator) -> np.ndarray:
    """The explicit matrix of ``op`` on one-channel SIZE x SIZE images, built column by column."""
    basis = torch.eye(SIZE * SIZE, dtype=torch.float64).reshape(-1, 1, SIZE, SIZE)
    return op(basis).reshape(SIZE * SIZE, -1).T.numpy()


@pytest.mark.parametrize("name", LINEAR)
def test_adjoint_dot_product(name: str) -> None:
    op = LINEAR[name]()
    x = _image()
    y = torch.randn_like(op(x))
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs), f"{name}: <Ax, y> = {lhs}, <x, A^T y> = {rhs}"


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_forward(name: str) -> None:
    op = ALL[name]()
    assert torch.autograd.gradcheck(op, (_image(n=1).requires_grad_(),))


@pytest.mark.parametrize("name", LINEAR)
def test_gradcheck_adjoint(name: str) -> None:
    op = LINEAR[name]()
    y = torch.randn_like(op(_image(n=1))).requires_grad_()
    assert torch.autograd.gradcheck(op.adjoint, (y,))


@pytest.mark.parametrize("name", ALL)
def test_params_are_json(name: str) -> None:
    params = ALL[name]().params()
    assert params["name"] == type(ALL[name]()).__name__
    assert len(params) > 1, "params() should report the operator's parameters"
    json.dumps(params)


@pytest.mark.parametrize("name", ALL)
def test_float32_in_float32_out(name: str) -> None:
    op = ALL[name]().double()
    x = _image()
    reference = op(x)
    op.float()  # casts parameters and buffers in place
    x32 = x.float()
    y32 = op(x32)
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), reference, rtol=1e-4, atol=1e-5)
    if isinstance(op, LinearOperator):
        assert op.adjoint(y32).dtype == torch.float32
        assert op.solve(y32, x32, 0.1).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name: str) -> None:
    op = ALL[name]()
    x = _image()
    y = op(x)
    back = op.adjoint(y) if isinstance(op, LinearOperator) else None
    op.cuda()  # moves parameters and buffers in place
    assert torch.allclose(op(x.cuda()).cpu(), y, atol=1e-10)
    if back is not None:
        assert torch.allclose(op.adjoint(y.cuda()).cpu(), back, atol=1e-10)


def test_linear_flags() -> None:
    assert all(LINEAR[name]().linear for name in LINEAR)
    assert not any(NONLINEAR[name]().linear for name in NONLINEAR)


@pytest.mark.parametrize("name", LINEAR)
def test_solve_matches_dense_least_squares(name: str) -> None:
    """solve() against numpy.linalg.solve on the explicit normal equations, with one lam per image."""
    op = LINEAR[name]()
    if "per-channel" in name:
        pytest.skip("a per-image mask has no single dense matrix; covered in test_operators_inpainting")
    matrix = _dense(op)
    x_true, x0 = _image(c=1, seed=1), _image(c=1, seed=2)
    y = op(x_true) + 0.01 * torch.randn_like(op(x_true))
    lams = torch.tensor([1e-3, 0.3], dtype=torch.float64)
    x = op.solve(y, x0, lams, tol=1e-12, max_iter=2000)
    for i, lam in enumerate(lams.tolist()):
        normal = matrix.T @ matrix + lam * np.eye(SIZE * SIZE)
        rhs = matrix.T @ y[i].reshape(-1).numpy() + lam * x0[i].reshape(-1).numpy()
        expected = np.linalg.solve(normal, rhs)
        error = np.linalg.norm(x[i].reshape(-1).numpy() - expected) / np.linalg.norm(expected)
        assert error <= 1e-8, f"{name}, lam={lam}: relative error to the dense solution {error:.2e}"


@pytest.mark.parametrize("name", LINEAR)
def test_solve_normal_equation_residual(name: str) -> None:
    """At the default tolerance the normal-equation residual is within it (relative to the rhs)."""
    op = LINEAR[name]()
    x0 = _image(seed=2)
    y = op(_image(seed=1))
    lam = 0.05
    x = op.solve(y, x0, lam)
    rhs = op.adjoint(y) + lam * x0
    residual = op.normal(x) + lam * x - rhs
    # Per image, as conjugate_gradient promises (||r|| <= tol * ||rhs|| for each batch element).
    assert (residual.flatten(1).norm(dim=1) <= 1e-6 * rhs.flatten(1).norm(dim=1)).all()
