"""Image quality against a reference: PSNR and SSIM on [0, 1] images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, *, per_image: bool = False) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref`` (any equal shapes), from the
    mean squared error over all their entries. With ``per_image``, ``x`` and ``ref`` are
    batches (N, ...) and the result is the mean of each image's PSNR, each from its own
    error floored at 1e-12 (120 dB for unit range), so that one exact image cannot make the
    mean infinite; in the batch's precision (float32 for the trainer's held-out images)."""
    if per_image:
        mse = (x - ref).pow(2).flatten(1).mean(1).clamp_min(1e-12)
        return float((10 * math.log10(data_range**2) - 10 * torch.log10(mse)).mean())
    mse = float((x.double() - ref.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004) of (C, H, W) images: 11x11 Gaussian
    window of std 1.5, K1 = 0.01, K2 = 0.03, sample covariances, averaged over the
    valid (unpadded) region and the channels."""
    x = x.double().reshape(-1, 1, *x.shape[-2:])
    ref = ref.double().reshape(-1, 1, *ref.shape[-2:])
    size = min(11, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, window)

    mu_x, mu_r = blur(x), blur(ref)
    # Unbiased (sample) covariances, as scikit-image does by default.
    n = window.numel()
    corr = n / (n - 1)
    var_x = corr * (blur(x * x) - mu_x**2)
    var_r = corr * (blur(ref * ref) - mu_r**2)
    cov = corr * (blur(x * ref) - mu_x * mu_r)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2))
    return float(s.mean())
