"""Padding and grey-measurement wrappers against dense linear algebra."""

import torch

from resample_cli.operators.compose import ChannelMean, Cropped, pad_to_multiple
from resample_cli.operators.matrix import MatrixOperator


def _dense(op, shape):
    """The operator's matrix, column by column."""
    n = torch.tensor(shape).prod().item()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return op(basis).reshape(n, -1).T


def _wrapped():
    g = torch.Generator().manual_seed(0)
    inner = MatrixOperator(torch.randn(5, 1 * 3 * 4, generator=g, dtype=torch.float64), (1, 3, 4))
    return Cropped(ChannelMean(inner), box=(1, 2, 3, 4), size=(5, 7)), (3, 5, 7)


def test_adjoint_is_the_transpose():
    op, shape = _wrapped()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, generator=g, dtype=torch.float64)
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_solve_matches_the_dense_regularised_least_squares():
    op, shape = _wrapped()
    a = _dense(op, shape)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(1, 5, generator=g, dtype=torch.float64)
    lam = 0.3
    n = a.shape[1]
    expected = torch.linalg.solve(
        a.T @ a + lam * torch.eye(n, dtype=torch.float64), a.T @ y[0] + lam * x0.flatten()
    )
    assert torch.allclose(op.solve(y, x0, lam).flatten(), expected, atol=1e-10)


def test_pad_to_multiple_keeps_the_image_in_its_box():
    x = torch.rand(1, 3, 10, 13)
    padded, (top, left, h, w) = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[..., top : top + h, left : left + w], x)
