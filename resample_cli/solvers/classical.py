"""Classical reconstructions, the baselines a learned prior has to beat.

Each takes the measurement ``y`` (N, ...) and its operator and returns images
(N, C, H, W) in [0, 1]; none uses a network.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..operators.base import LinearOperator, Operator
from ..operators.ct import ParallelBeamCT


def regularised_least_squares(
    y: torch.Tensor, operator: LinearOperator, lam: float, x0: float = 0.5
) -> torch.Tensor:
    """Tikhonov: argmin_x ||y - A x||^2 + lam ||x - x0||^2, with the constant image
    ``x0`` as the prior guess. For a blur this is Wiener deconvolution with a white
    signal spectrum (solved exactly at the borders); for inpainting it fills the
    missing pixels with ``x0``."""
    shape = operator.adjoint(y).shape
    guess = torch.full(shape, x0, dtype=y.dtype, device=y.device)
    return operator.solve(y, guess, lam, tol=1e-8, max_iter=500).clamp(0, 1)


def bicubic_upsample(y: torch.Tensor, scale: int) -> torch.Tensor:
    """Pillow's bicubic upsampling (Keys, a = -0.5) of each channel by ``scale``."""
    out = np.empty((*y.shape[:2], y.shape[2] * scale, y.shape[3] * scale), dtype=np.float32)
    for index in np.ndindex(*y.shape[:2]):
        channel = Image.fromarray(y[index].detach().cpu().float().numpy(), mode="F")
        out[index] = np.asarray(channel.resize((y.shape[3] * scale, y.shape[2] * scale), Image.BICUBIC))
    return torch.from_numpy(out).to(y.device, y.dtype).clamp(0, 1)


def filtered_back_projection(y: torch.Tensor, operator: ParallelBeamCT, filter: str = "ramp") -> torch.Tensor:
    """Filtered back-projection (``ParallelBeamCT.fbp``), clipped to [0, 1]."""
    return operator.fbp(y, filter).clamp(0, 1)


def total_variation(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Isotropic total variation per image, sum_ij sqrt(dx^2 + dy^2 + eps^2) with forward
    differences (zero across the last row and column), summed over channels."""
    dx = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dy = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return (dx.square() + dy.square() + eps**2).sqrt().flatten(1).sum(1)


def tv_least_squares(
    y: torch.Tensor,
    operator: Operator,
    weight: float,
    x0: torch.Tensor,
    *,
    steps: int = 400,
    lr: float = 1e-2,
) -> torch.Tensor:
    """argmin_{x in [0,1]} ||y - A x||^2 + weight TV(x), by ``steps`` projected Adam
    steps from ``x0``, per image. Adam rather than a proximal method so that any
    operator, linear or not, works."""
    x = x0.detach().clone().clamp(0, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = (operator(x) - y).square().flatten(1).sum(1) + weight * total_variation(x)
        loss.sum().backward()
        optimiser.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()
