"""NonlinearBlur against numpy/scipy, load_operator, and GaussianNoise."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from torch import nn

from resample_cli.operators import (
    GaussianBlur,
    GaussianNoise,
    ModuleOperator,
    NonlinearBlur,
    OperatorLoadError,
    load_operator,
)


def test_nonlinear_blur_matches_numpy_formula() -> None:
    """y = tanh(gain * b) / tanh(gain), b the Gaussian blur (scipy, 'mirror' boundary)."""
    sigma, size, gain = 2.0, 13, 1.7
    r = np.arange(size) - size // 2
    kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    x = np.random.default_rng(0).random((2, 3, 20, 24))
    blurred = np.stack([[ndi.convolve(c, kernel, mode="mirror") for c in image] for image in x])
    expected = np.tanh(gain * blurred) / np.tanh(gain)
    got = NonlinearBlur(sigma=sigma, kernel_size=size, gain=gain)(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-12


def test_nonlinear_blur_range_params_and_validation() -> None:
    op = NonlinearBlur()
    ends = op(torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)]))
    assert torch.allclose(ends[0], torch.zeros(1, 8, 8)) and torch.allclose(ends[1], torch.ones(1, 8, 8))
    assert not op.linear
    assert op.params() == {"name": "NonlinearBlur", "sigma": 3.0, "kernel_size": 61, "gain": 2.0}
    with pytest.raises(ValueError, match="gain"):
        NonlinearBlur(gain=0.0)


def test_load_operator_wraps_a_torch_module() -> None:
    op = load_operator("torch.nn:Identity")
    assert isinstance(op, ModuleOperator) and not op.linear
    assert op.params()["module"] == "torch.nn.modules.linear.Identity"
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(op(x), x)


def test_load_operator_passes_kwargs_and_freezes() -> None:
    conv = load_operator("torch.nn:Conv2d", in_channels=3, out_channels=3, kernel_size=3)
    assert not conv.training
    assert not any(p.requires_grad for p in conv.parameters())
    blur = load_operator("resample_cli.operators:GaussianBlur", sigma=2.0, kernel_size=9)
    assert isinstance(blur, GaussianBlur) and blur.params()["sigma"] == 2.0


@pytest.mark.parametrize(
    "path, kwargs, message",
    [
        ("torch.nn.Identity", {}, "must be written as 'package.module:Class'"),
        ("torch.nn:", {}, "must be written as"),
        ("no_such_package_xyz.models:Net", {}, "cannot import module 'no_such_package_xyz.models'"),
        ("torch.nn:NoSuchLayer", {}, "module 'torch.nn' has no attribute 'NoSuchLayer'"),
        ("collections:OrderedDict", {}, "built a OrderedDict, not a torch.nn.Module"),
        ("torch.nn:Conv2d", {"bogus": 1}, "cannot construct operator 'torch.nn:Conv2d'"),
    ],
)
def test_load_operator_errors_name_the_path(path: str, kwargs: dict, message: str) -> None:
    with pytest.raises(OperatorLoadError, match=message) as info:
        load_operator(path, **kwargs)
    text = str(info.value)
    assert path in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_module_operator_is_differentiable() -> None:
    op = ModuleOperator(nn.Conv2d(1, 1, 3).double())
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))


def test_noise_same_seed_same_noise() -> None:
    noise = GaussianNoise(0.05)
    y = torch.rand(2, 3, 16, 16)
    a = noise.noise(y, torch.Generator().manual_seed(7))
    b = noise(y, torch.Generator().manual_seed(7))
    c = noise.noise(y, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == y.dtype and a.shape == y.shape


def test_noise_statistics() -> None:
    sigma = 0.05
    y = torch.full((1, 3, 256, 256), 0.5, dtype=torch.float64)
    drawn = GaussianNoise(sigma).noise(y, torch.Generator().manual_seed(0)) - y
    # 196,608 draws: the sample std's standard error is 0.16 %, its mean's 1.1e-4.
    assert abs(drawn.std().item() / sigma - 1) < 0.01
    assert abs(drawn.mean().item()) < 6e-4


def test_noise_params_and_validation() -> None:
    assert GaussianNoise(0.01).params() == {"name": "GaussianNoise", "sigma": 0.01}
    assert torch.equal(GaussianNoise(0.0).noise(torch.ones(3)), torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_noise_is_drawn_on_the_generator_device() -> None:
    noise = GaussianNoise(0.1)
    y = torch.zeros(1, 1, 8, 8)
    on_gpu = noise.noise(y, torch.Generator(device="cuda").manual_seed(3))
    again = noise.noise(y.cuda(), torch.Generator(device="cuda").manual_seed(3))
    assert on_gpu.device == y.device and torch.equal(on_gpu, again.cpu())
