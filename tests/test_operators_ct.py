"""ParallelBeamCT against skimage.transform.radon / iradon and the Shepp-Logan phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from resample_cli.operators import FBP_FILTERS, ParallelBeamCT
from resample_cli.operators import ct as ct_module


def _phantom(n: int) -> np.ndarray:
    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _sinogram(op: ParallelBeamCT, image: np.ndarray, dtype=torch.float64) -> np.ndarray:
    return op(torch.from_numpy(image).to(dtype)[None, None])[0, 0].double().numpy()


@pytest.mark.parametrize("n, angles", [(64, 25), (64, 180), (128, 25), (128, 180), (65, 30)])
def test_radon_matches_skimage(n: int, angles: int) -> None:
    image = _phantom(n)
    op = ParallelBeamCT(angles, n)
    expected = radon(image, theta=np.arange(angles) * 180 / angles, circle=True).T
    # Measured: about 1e-15 in float64 and 2.5e-7 in float32 (the target is 1e-4).
    error64 = _relative(_sinogram(op, image), expected)
    error32 = _relative(_sinogram(op, image, torch.float32), expected)
    assert error64 <= 1e-12, f"float64 relative error to skimage {error64:.1e}"
    assert error32 <= 1e-5, f"float32 relative error to skimage {error32:.1e}"


def test_radon_with_listed_angles_matches_skimage() -> None:
    theta = [0.0, 13.5, 45.0, 90.0, 137.25, 200.0, -30.0]
    image = _phantom(64)
    op = ParallelBeamCT(theta, 64)
    assert op.angles_deg == theta
    assert _relative(_sinogram(op, image), radon(image, theta=np.array(theta)).T) <= 1e-12


def test_radon_without_circle_matches_skimage() -> None:
    """circle=False: rays and detectors span the diagonal width, as skimage pads the image."""
    image = np.random.default_rng(0).random((32, 32))  # non-zero into the corners
    op = ParallelBeamCT(30, 32, circle=False)
    expected = radon(image, theta=np.arange(30) * 6.0, circle=False).T
    assert op.det_count == expected.shape[1] == 46
    assert _relative(_sinogram(op, image), expected) <= 1e-12


def test_more_detectors_equals_radon_of_padded_image() -> None:
    """det_count > n sees the same rays as skimage on the image zero-padded about its centre
    (for an image that is zero well inside its circle, so both ray lengths cover it)."""
    image = np.pad(_phantom(30), 5)
    op = ParallelBeamCT(12, 40, det_count=47)
    padded = np.pad(image, ((3, 4), (3, 4)))  # centre 40 // 2 + 3 = 47 // 2
    expected = radon(padded, theta=np.arange(12) * 15.0).T
    assert _relative(_sinogram(op, image), expected) <= 1e-12


def test_fbp_reconstructs_the_phantom() -> None:
    """FBP from 180 angles: measured 0.136 relative error inside the circle (limit 0.15)."""
    n = 128
    image = _phantom(n)
    op = ParallelBeamCT(180, n)
    sino = op(torch.from_numpy(image)[None, None])
    recon = op.fbp(sino)[0, 0].numpy()
    offsets = np.arange(n) - n // 2
    inside = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= (n // 2) ** 2
    error = _relative(recon[inside], image[inside])
    assert error <= 0.15, f"FBP relative error inside the circle {error:.3f}"
    assert np.all(recon[~inside] == 0)


@pytest.mark.parametrize("filter_name", FBP_FILTERS)
def test_fbp_matches_skimage_iradon(filter_name: str) -> None:
    image = _phantom(64)
    theta = np.arange(40) * 4.5
    sino = radon(image, theta=theta)
    expected = iradon(sino, theta=theta, filter_name=filter_name)
    got = ParallelBeamCT(40, 64).fbp(torch.from_numpy(sino.T.copy())[None, None], filter=filter_name)
    # Measured: about 3e-15 relative for every filter.
    assert _relative(got[0, 0].numpy(), expected) <= 1e-12


def test_fbp_rejects_unknown_filter() -> None:
    op = ParallelBeamCT(4, 16)
    with pytest.raises(ValueError, match="unknown FBP filter 'ram'"):
        op.fbp(torch.zeros(1, 1, 4, 16), filter="ram")


def test_chunking_over_angles_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    op = ParallelBeamCT(9, 20)
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    y = torch.rand(2, 3, 9, 20, dtype=torch.float64)
    whole = op(x), op.adjoint(y), op.fbp(y)
    monkeypatch.setattr(ct_module, "_CHUNK_ELEMENTS", 1)  # one angle per chunk
    monkeypatch.setattr(ct_module, "_CACHED_ENTRIES", 0)  # the adjoint by chunks too
    for a, b in zip(whole, (op(x), op.adjoint(y), op.fbp(y)), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("circle", [True, False])
def test_both_back_projections_are_the_transpose_of_the_projection(monkeypatch, circle: bool) -> None:
    """The cached sparse matrix (small geometries) and the sampler's vector-Jacobian product
    (larger ones, forced here) both pass the dot test against the forward projection."""
    x = torch.rand(2, 3, 21, 21, dtype=torch.float64)
    y = torch.randn_like(ParallelBeamCT(7, 21, circle=circle)(x))
    backs, cached = [], []
    for entries in (ct_module._CACHED_ENTRIES, 0):
        monkeypatch.setattr(ct_module, "_CACHED_ENTRIES", entries)
        op = ParallelBeamCT(7, 21, circle=circle)
        backs.append(op.adjoint(y))
        cached.append(len(op._transposes))
        lhs, rhs = (op(x) * y).sum(), (x * backs[-1]).sum()
        assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    assert cached == [1, 0] and torch.allclose(*backs, atol=1e-12)


def test_adjoint_works_without_grad_and_is_differentiable() -> None:
    op = ParallelBeamCT(5, 10)
    y = torch.rand(1, 1, 5, 10, dtype=torch.float64)
    expected = op.adjoint(y)
    with torch.no_grad():
        back = op.adjoint(y)
    assert torch.equal(back, expected) and not back.requires_grad
    with torch.inference_mode():
        assert torch.equal(op.adjoint(y.clone()), expected)
    y.requires_grad_()
    op.adjoint(y).square().sum().backward()
    assert y.grad is not None
    # A back-projection matrix first built under inference_mode serves autograd later.
    fresh = ParallelBeamCT(5, 10)
    with torch.inference_mode():
        fresh.adjoint(y.detach().clone())
    (grad,) = torch.autograd.grad(fresh.adjoint(y).square().sum(), y)
    assert torch.allclose(grad, y.grad, atol=1e-12)


def test_the_adjoint_differentiates_without_the_samplers_second_derivative(monkeypatch) -> None:
    """CUDA's bilinear samplers have no derivative of their backward (PSLD on CT failed so on
    an H200): with a sampler whose backward is once-differentiable, as there, the gradient
    of ||A^T y||^2 is still 2 A A^T y."""
    original = torch.nn.functional.grid_sample

    class OnceDifferentiable(torch.autograd.Function):
        @staticmethod
        def forward(ctx, image, grid, *options):
            ctx.save_for_backward(image, grid)
            ctx.options = options
            return original(image, grid, *options)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            image, grid = ctx.saved_tensors
            with torch.enable_grad():
                image, grid = (
                    image.detach().requires_grad_(),
                    grid.detach().requires_grad_(grid.requires_grad),
                )
                inputs = (image, grid) if grid.requires_grad else (image,)
                grads = torch.autograd.grad(original(image, grid, *ctx.options), inputs, grad)
            return (*grads, *[None] * (len(ctx.saved_tensors) - len(grads) + len(ctx.options)))

    def sampler(image, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
        return OnceDifferentiable.apply(image, grid, mode, padding_mode, align_corners)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", sampler)
    op = ParallelBeamCT(5, 10)
    y = torch.rand(2, 1, 5, 10, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(op.adjoint(y).square().sum(), y)
    with torch.no_grad():
        assert torch.allclose(grad, 2 * op(op.adjoint(y)), atol=1e-12)


def test_params_and_angles() -> None:
    op = ParallelBeamCT(4, 16)
    assert op.angles_deg == [0.0, 45.0, 90.0, 135.0]
    params = op.params()
    assert params["angles_deg"] == [0.0, 45.0, 90.0, 135.0]
    assert params["image_size"] == 16 and params["det_count"] == 16 and params["circle"] is True
    json.dumps(params)


def test_shape_and_argument_errors() -> None:
    op = ParallelBeamCT(4, 16)
    with pytest.raises(ValueError, match=r"image of shape \(N, C, 16, 16\)"):
        op(torch.zeros(1, 1, 16, 15))
    with pytest.raises(ValueError, match=r"sinogram of shape \(N, C, 4, 16\)"):
        op.adjoint(torch.zeros(1, 1, 5, 16))
    with pytest.raises(ValueError, match="angles"):
        ParallelBeamCT(0, 16)
    with pytest.raises(ValueError, match="angles"):
        ParallelBeamCT([], 16)
