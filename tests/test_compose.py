"""Padding and grey-measurement wrappers against dense linear algebra."""

import torch

from resample_cli.operators import GaussianBlur, LinearOperator, NonlinearBlur
from resample_cli.operators.compose import ChannelMean, Crop, Cropped, padded_canvas
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


def test_padded_canvas_keeps_the_image_in_its_box():
    x = torch.rand(1, 3, 10, 13)
    size, box = padded_canvas(10, 13, 8)
    top, left, h, w = box
    assert size == (16, 16)
    padded = Crop(box, size).adjoint(x)  # zero padding around the image
    assert padded.shape[-2:] == size
    assert torch.equal(padded[..., top : top + h, left : left + w], x)
    assert (top, left) == (3, 1)  # centred; the odd column goes last


def test_a_wrapper_is_a_linear_operator_exactly_when_what_it_wraps_is():
    for wrapped in (Cropped(GaussianBlur(1.0, 5), (1, 1, 6, 6), (8, 8)), ChannelMean(GaussianBlur(1.0, 5))):
        assert isinstance(wrapped, LinearOperator) and wrapped.linear and wrapped.fast_solve
    for wrapped in (Cropped(NonlinearBlur(1.0, 5), (1, 1, 6, 6), (8, 8)), ChannelMean(NonlinearBlur(1.0, 5))):
        assert not isinstance(wrapped, LinearOperator) and not wrapped.linear
        assert not hasattr(wrapped, "adjoint") and not hasattr(wrapped, "solve")
        assert wrapped.params() == NonlinearBlur(1.0, 5).params()
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(
        Cropped(NonlinearBlur(1.0, 5), (1, 1, 6, 6), (8, 8))(x), NonlinearBlur(1.0, 5)(x[..., 1:7, 1:7])
    )
    assert torch.equal(ChannelMean(NonlinearBlur(1.0, 5))(x), NonlinearBlur(1.0, 5)(x.mean(1, keepdim=True)))
