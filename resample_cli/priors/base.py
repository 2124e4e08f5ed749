"""The interface every latent diffusion prior offers to the solvers."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler


@dataclass(frozen=True)
class PriorInfo:
    """Where a prior came from, for reports."""

    name: str
    repo: str | None = None
    revision: str | None = None
    path: str | None = None


class LatentPrior(abc.ABC):
    """A latent diffusion model: an autoencoder plus a noise-prediction network.

    Images given to ``encode`` and returned by ``decode`` are in [-1, 1] with
    ``image_channels`` channels. Latents are already multiplied by ``latent_scale``,
    so the diffusion runs on ``encode(x)`` directly.
    """

    info: PriorInfo
    scheduler: DDIMScheduler  # carries the training noise schedule
    image_channels: int
    latent_channels: int
    downsample_factor: int
    latent_scale: float
    device: torch.device
    dtype: torch.dtype  # of the networks' weights
    # "pixel": a denoiser of images, no autoencoder: ``encode`` and ``decode`` are the identity.
    space: Literal["latent", "pixel"] = "latent"
    # False where ``decode`` quantises (a VQ codebook): its derivative is then only the
    # straight-through estimate, which a forward difference does not see.
    continuous_decoder: bool = True

    @property
    def unet_passes(self) -> int:
        """UNet passes one ``eps`` call makes per image (2 under classifier-free guidance)."""
        return 1

    def conditioning(self) -> dict | None:
        """What ``eps`` is conditioned on, for reports; None for an unconditional prior."""
        return None

    def enable_gradient_checkpointing(self) -> None:  # noqa: B027 (a no-op unless overridden)
        """Recompute network activations in backward passes instead of keeping them; a
        prior without networks to checkpoint has nothing to do."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> scaled latent."""

    @abc.abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image in [-1, 1] (differentiable)."""

    @abc.abstractmethod
    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for latents ``z`` at integer timesteps ``t`` (shape ``(N,)``)."""

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0 .. T-1 (float64, CPU)."""
        return self.scheduler.alphas_cumprod.to(torch.float64)

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (the autoencoder's
        downsampling times any downsampling inside the denoiser)."""
        return self.downsample_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent shape (C, h, w) for an image of ``height`` x ``width`` pixels."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of {f}, the prior's downsampling factor"
            )
        return (self.latent_channels, height // f, width // f)
