"""Blur and GaussianBlur against scipy.ndimage, and the preconditioned solve."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from skimage import data

from resample_cli.operators import Blur, GaussianBlur


def _scipy_blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Reference: scipy's convolution of every channel, 'mirror' boundary (torch's 'reflect')."""
    return np.stack([[ndi.convolve(channel, kernel, mode="mirror") for channel in image] for image in x])


def _gaussian_kernel(sigma: float, size: int) -> np.ndarray:
    """The sampled, normalised Gaussian built independently in numpy."""
    r = np.arange(size) - size // 2
    kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


@pytest.mark.parametrize(
    "image_shape, kernel_shape",
    [((13, 10), (3, 3)), ((13, 10), (4, 5)), ((16, 16), (7, 2)), ((7, 9), (15, 21)), ((40, 33), (61, 61))],
    ids=["3x3", "even-4x5", "7x2", "kernel-larger-than-image", "61x61"],
)
def test_blur_matches_scipy_convolve_mirror(image_shape, kernel_shape) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, *image_shape))
    kernel = rng.random(kernel_shape)
    got = Blur(kernel)(torch.from_numpy(x)).numpy()
    expected = _scipy_blur(x, kernel)
    assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()


def test_blur_equals_torch_reflect_pad_then_convolution() -> None:
    """Same as F.pad(mode='reflect') followed by conv2d with the flipped kernel (pad < size)."""
    x = torch.rand(1, 3, 20, 17, dtype=torch.float64)
    kernel = torch.rand(5, 7, dtype=torch.float64)
    padded = F.pad(x, (3, 3, 2, 2), mode="reflect")
    weight = kernel.flip(0, 1).expand(3, 1, 5, 7)
    expected = F.conv2d(padded, weight, groups=3)
    assert torch.allclose(Blur(kernel)(x), expected, atol=1e-13)


def test_kernel_is_not_renormalised() -> None:
    kernel = np.full((3, 3), 0.5)  # sums to 4.5
    flat = torch.full((1, 1, 8, 8), 0.2, dtype=torch.float64)
    assert torch.allclose(Blur(kernel)(flat), torch.full_like(flat, 0.9))
    assert Blur(kernel).params()["kernel_sum"] == pytest.approx(4.5)


def test_kernel_from_tensor_and_ndarray_agree() -> None:
    kernel = np.random.default_rng(1).random((5, 5))
    x = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    assert torch.equal(Blur(kernel)(x), Blur(torch.from_numpy(kernel))(x))


def test_gaussian_blur_matches_independent_kernel_and_gaussian_filter() -> None:
    image = data.astronaut()[:128, :160].astype(np.float64).transpose(2, 0, 1)[None] / 255
    got = GaussianBlur(3.0)(torch.from_numpy(image)).numpy()
    # Same kernel built with numpy, through scipy's convolution: floating-point agreement.
    assert np.abs(got - _scipy_blur(image, _gaussian_kernel(3.0, 61))).max() <= 1e-12
    # gaussian_filter truncated at the kernel radius (30 = truncate * sigma) is the same kernel.
    exact = np.stack([ndi.gaussian_filter(c, 3.0, mode="mirror", truncate=10.0) for c in image[0]])
    assert np.abs(got[0] - exact).max() <= 1e-12
    # Its default truncation at 4 sigma drops the kernel tails: measured 3.5e-5 max difference here.
    default = np.stack([ndi.gaussian_filter(c, 3.0, mode="mirror") for c in image[0]])
    assert np.abs(got[0] - default).max() <= 1e-4


def test_gaussian_blur_validation_and_params() -> None:
    params = GaussianBlur(2.0, kernel_size=31).params()
    assert params["sigma"] == 2.0 and params["kernel_size"] == 31 and params["kernel_shape"] == [31, 31]
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(2.0, kernel_size=30)
    with pytest.raises(ValueError, match="sigma"):
        GaussianBlur(0.0)


@pytest.mark.parametrize("kernel", [np.ones(5), np.zeros((3, 3)), np.full((3, 3), np.nan)])
def test_bad_kernels_are_rejected(kernel) -> None:
    with pytest.raises(ValueError, match="kernel"):
        Blur(kernel)


def test_one_pixel_wide_images() -> None:
    x = np.random.default_rng(2).random((1, 1, 1, 9))
    kernel = np.random.default_rng(3).random((3, 3))
    got = Blur(kernel)(torch.from_numpy(x)).numpy()
    assert np.allclose(got, _scipy_blur(x, kernel), atol=1e-12)


def _count_normal_calls(op: Blur) -> list[int]:
    calls = [0]
    normal = op.normal

    def counted(v: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return normal(v)

    op.normal = counted
    return calls


@pytest.mark.parametrize("lam", [1e-1, 1e-2, 1e-3, 1e-4])
def test_gaussian_solve_converges_in_few_preconditioned_iterations(lam: float) -> None:
    """The circulant preconditioner makes CG converge in a handful of iterations at any lam.

    Measured on this 3x256x256 image: 7 iterations for every lam from 1e-1 to 1e-4 (plain CG
    takes 17, 44, 116 and 312); the exact-border residual reaches the 1e-6 target.
    """
    op = GaussianBlur(3.0)
    image = torch.from_numpy(data.astronaut()[::2, ::2].astype(np.float64) / 255).permute(2, 0, 1)[None]
    y = op(image) + 0.01 * torch.randn(
        image.shape, generator=torch.Generator().manual_seed(0), dtype=image.dtype
    )
    x0 = torch.zeros_like(image)
    calls = _count_normal_calls(op)
    x = op.solve(y, x0, lam)
    iterations = calls[0] - 1  # one call computes the initial residual
    rhs = op.adjoint(y) + lam * x0
    residual = (op.normal(x) + lam * x - rhs).norm() / rhs.norm()
    assert residual <= 1e-6
    assert iterations <= 10, f"lam={lam}: {iterations} CG iterations"


def test_asymmetric_kernel_solve_uses_plain_cg() -> None:
    """A motion-like kernel breaks mirror symmetry: CG runs unpreconditioned and still converges."""
    kernel = np.zeros((9, 9))
    kernel[4, 2:] = 1.0
    op = Blur(kernel / kernel.sum())
    assert not op._mirror_symmetric(torch.zeros(1, 1, 32, 32))
    assert GaussianBlur(1.0, 9)._mirror_symmetric(torch.zeros(1, 1, 32, 32))
    x_true = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    y = op(x_true)
    x = op.solve(y, torch.zeros_like(x_true), 1e-3, tol=1e-10, max_iter=1000)
    rhs = op.adjoint(y)
    assert (op.normal(x) + 1e-3 * x - rhs).norm() <= 1e-9 * rhs.norm()
