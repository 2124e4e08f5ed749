"""Classical baselines against closed forms and independent dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from resample_cli.operators import GaussianBlur
from resample_cli.operators.base import Operator
from resample_cli.solvers.classical import (
    bicubic_upsample,
    regularised_least_squares,
    total_variation,
    tv_least_squares,
)


class Identity(Operator):
    linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_tikhonov_deconvolution_matches_dense_solve():
    side, lam = 10, 1e-2
    blur = GaussianBlur(1.2, 5).double()
    # The blur as a dense matrix, column by column through scipy (mirror = torch's reflect).
    basis = np.eye(side * side).reshape(-1, side, side)
    kernel = np.outer(*(2 * [np.exp(-((np.arange(5) - 2) ** 2) / (2 * 1.2**2))]))
    kernel /= kernel.sum()
    a = np.stack([ndimage.convolve(b, kernel, mode="mirror").ravel() for b in basis], axis=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (side, side))
    y = a @ x.ravel() + 0.01 * rng.standard_normal(side * side)
    expected = np.linalg.solve(a.T @ a + lam * np.eye(side * side), a.T @ y + lam * 0.5)
    got = regularised_least_squares(torch.from_numpy(y.reshape(1, 1, side, side)), blur, lam)
    np.testing.assert_allclose(got.numpy().ravel(), np.clip(expected, 0, 1), atol=1e-6)


def test_bicubic_upsampling_reproduces_a_linear_ramp_inside():
    # Keys' cubic (a = -0.5) reproduces polynomials up to degree 2 wherever the kernel
    # does not reach the border: a ramp sampled at pixel centres stays a ramp.
    n, scale = 16, 4
    coords = (np.arange(n) + 0.5) / n
    ramp = 0.2 + 0.5 * coords[None, :] + 0.1 * coords[:, None]
    fine = (np.arange(n * scale) + 0.5) / (n * scale)
    expected = 0.2 + 0.5 * fine[None, :] + 0.1 * fine[:, None]
    got = bicubic_upsample(torch.from_numpy(ramp).float()[None, None].repeat(1, 3, 1, 1), scale)
    assert got.shape == (1, 3, n * scale, n * scale)
    inner = slice(2 * scale, -2 * scale)
    np.testing.assert_allclose(got[0, 1].numpy()[inner, inner], expected[inner, inner], atol=1e-5)


def test_total_variation_of_a_step():
    eps, height, width = 1e-4, 6, 8
    x = torch.zeros(1, 1, height, width, dtype=torch.float64)
    x[..., width // 2 :] = 0.7
    expected = height * np.sqrt(0.7**2 + eps**2) + (height * width - height) * eps
    assert float(total_variation(x, eps)) == pytest.approx(expected, rel=1e-9)


def test_tv_denoising_of_a_step_matches_the_closed_form():
    # Rows are identical 1-D steps, so the problem separates into rows: minimising
    # ||x - y||^2 + w TV(x) moves each side of a step of n pixels by w / (2 n) towards
    # the other, as long as the step survives.
    weight, half = 0.8, 4
    y = torch.full((1, 1, 6, 2 * half), 0.2)
    y[..., half:] = 0.8
    x = tv_least_squares(y, Identity(), weight, y, steps=3000, lr=2e-3)
    left, right = x[..., :half], x[..., half:]
    assert float((left - (0.2 + weight / (2 * half))).abs().max()) < 5e-3
    assert float((right - (0.8 - weight / (2 * half))).abs().max()) < 5e-3
