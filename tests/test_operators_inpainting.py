"""Inpainting against numpy masking; mask makers; the closed-form solve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resample_cli.operators import Inpainting, box_mask, random_mask


@pytest.mark.parametrize("mask_shape", [(8, 10), (1, 1, 8, 10), (2, 1, 8, 10), (2, 3, 8, 10)])
def test_forward_and_adjoint_match_numpy_masking(mask_shape) -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random(mask_shape) > 0.3).astype(np.float64)
    x = rng.random((2, 3, 8, 10))
    expected = x * mask  # numpy broadcasting of the same shapes
    op = Inpainting(mask)
    assert np.array_equal(op(torch.from_numpy(x)).numpy(), expected)
    assert np.array_equal(op.adjoint(torch.from_numpy(x)).numpy(), expected)


def test_mask_size_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="8x8 but the inpainting mask is 8x10"):
        Inpainting(torch.ones(8, 10))(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        Inpainting(torch.ones(3, 8, 10))


def test_closed_form_solve_pixelwise() -> None:
    """(m y + lam x0) / (m + lam) per pixel, per-image lam, with a per-channel mask."""
    rng = np.random.default_rng(1)
    mask = (rng.random((2, 3, 6, 7)) > 0.5).astype(np.float64)
    y, x0 = rng.random((2, 3, 6, 7)) * mask, rng.random((2, 3, 6, 7))
    lam = np.array([0.1, 2.0])[:, None, None, None]
    expected = (mask * y + lam * x0) / (mask + lam)
    got = Inpainting(mask).solve(torch.from_numpy(y), torch.from_numpy(x0), torch.tensor([0.1, 2.0]))
    assert np.allclose(got.numpy(), expected, atol=1e-15)


def test_unregularised_solve_keeps_x0_where_missing() -> None:
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[[[0.7, 0.0], [0.0, 0.2]]]], dtype=torch.float64)
    x0 = torch.full_like(y, 0.5)
    got = Inpainting(mask).solve(y, x0, 0.0)
    assert torch.equal(got, torch.tensor([[[[0.7, 0.5], [0.5, 0.2]]]], dtype=torch.float64))


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 1.0])
def test_random_mask_missing_count_is_exact(ratio: float) -> None:
    mask = random_mask((1, 3, 17, 23), ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, 17, 23) and mask.dtype == torch.float32
    assert int((mask == 0).sum()) == round(ratio * 17 * 23)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_random_mask_is_reproducible_and_seed_dependent() -> None:
    def make(seed: int) -> torch.Tensor:
        return random_mask((64, 64), 0.7, torch.Generator().manual_seed(seed))

    assert torch.equal(make(5), make(5))
    assert not torch.equal(make(5), make(6))
    with pytest.raises(ValueError, match="ratio"):
        random_mask((8, 8), 1.5)


def test_box_mask_is_centred_by_default() -> None:
    mask = box_mask((256, 256), 128)
    expected = np.ones((256, 256))
    expected[64:192, 64:192] = 0
    assert mask.shape == (1, 1, 256, 256)
    assert np.array_equal(mask[0, 0].numpy(), expected)


def test_box_mask_custom_centre_is_clipped_to_the_image() -> None:
    mask = box_mask((10, 12), 4, center=(1, 11))
    expected = np.ones((10, 12))
    expected[0:3, 9:12] = 0  # rows -1..2 and columns 9..12 clipped
    assert np.array_equal(mask[0, 0].numpy(), expected)
    with pytest.raises(ValueError, match="size"):
        box_mask((10, 12), 0)


def test_params_report_the_observed_fraction() -> None:
    params = Inpainting(box_mask((8, 8), 4)).params()
    assert params["observed_fraction"] == pytest.approx(48 / 64)
    assert params["mask_shape"] == [1, 1, 8, 8]


def test_measurement_count_is_per_image_with_one_mask_per_image() -> None:
    masks = torch.zeros(3, 1, 4, 5)
    masks[0, :, :2] = 1  # 10 observed pixels
    masks[1, :, :, :1] = 1  # 4
    masks[2] = 1  # 20
    op = Inpainting(masks)
    y = op(torch.rand(3, 2, 4, 5))
    # Each pixel counts once per channel.
    assert op.measurement_count(y).tolist() == [20.0, 8.0, 40.0]
    single = Inpainting(masks[1, 0])
    assert single.measurement_count(torch.rand(2, 3, 4, 5)).tolist() == [12.0, 12.0]


def test_observed_zeroes_what_the_mask_hides() -> None:
    mask = torch.tensor(np.random.default_rng(0).random((4, 4)) > 0.5, dtype=torch.float32)
    y = torch.rand(2, 3, 4, 4) + 1  # nonzero everywhere, as a careless caller might pass
    np.testing.assert_array_equal(Inpainting(mask).observed(y).numpy(), y.numpy() * mask.numpy())
