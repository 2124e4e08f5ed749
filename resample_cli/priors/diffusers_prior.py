"""A prior made of diffusers networks: a ``UNet2DModel`` noise predictor plus a ``VQModel``
or ``AutoencoderKL`` autoencoder (a latent prior), or the UNet alone (a pixel-space prior),
with a DDIM view of the training schedule. ``priors.text`` adds a text-conditioned UNet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel, VQModel

from .base import LatentPrior, PriorInfo
from .errors import PriorError

Autoencoder = VQModel | AutoencoderKL
# The autoencoder classes a model folder may name in its config's ``_class_name``.
AUTOENCODER_CLASSES: dict[str, type[Autoencoder]] = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}


def latent_channels(autoencoder: Autoencoder) -> int:
    """Channels of the latents the UNet works on: a ``VQModel``'s codebook vectors may be
    narrower or wider than its encoder's output (``vq_embed_dim``)."""
    config = autoencoder.config
    if isinstance(autoencoder, VQModel):
        return config.vq_embed_dim or config.latent_channels
    return config.latent_channels


def downsample_factor(network: Autoencoder | UNet2DModel) -> int:
    """How much an autoencoder's encoder (or a UNet's down path) shrinks an image: each
    block but the last halves it."""
    return 2 ** (len(network.config.block_out_channels) - 1)


def unscaled_latents(autoencoder: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """The deterministic latents of images ``x`` in [-1, 1], before any latent scale: a
    ``VQModel``'s before quantisation (as diffusers' LDM pipeline), an ``AutoencoderKL``'s
    posterior mean."""
    if isinstance(autoencoder, VQModel):
        return autoencoder.encode(x).latents
    return autoencoder.encode(x).latent_dist.mean


def default_latent_scale(autoencoder_config: Mapping[str, Any]) -> float:
    """The latent scale a model's own autoencoder config file implies.

    Only a ``scaling_factor`` written in the file counts. Older repositories such as
    CompVis/ldm-celebahq-256 were saved before diffusers had that key, and their latents are
    used unscaled (scale 1.0); the class default diffusers fills in (0.18215, Stable
    Diffusion's value) would shrink their latents about five-fold. So pass the config as
    read from ``config.json``, not a constructed model's ``config``.
    """
    return float(autoencoder_config.get("scaling_factor", 1.0))


class DiffusersPrior(LatentPrior):
    """``LatentPrior`` over diffusers networks.

    The networks are put in eval mode with frozen parameters: solvers differentiate through
    them with respect to their inputs only. ``eps`` is the noise prediction even for a UNet
    trained to predict v or the clean latent (the scheduler's ``prediction_type``): that
    output is converted to the noise it implies at the given timestep.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        autoencoder: Autoencoder | None,
        scheduler: DDIMScheduler,
        *,
        latent_scale: float,
        info: PriorInfo,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        # Without an autoencoder the UNet denoises images: its input is the "latent".
        channels = unet.config.in_channels if autoencoder is None else latent_channels(autoencoder)
        if unet.config.in_channels != channels or unet.config.out_channels != channels:
            what = "the image has" if autoencoder is None else "the autoencoder's latent has"
            raise PriorError(
                f"model {info.name!r}: the UNet maps {unet.config.in_channels} to {unet.config.out_channels} "
                f"channels but {what} {channels}"
            )
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorError(
                f"model {info.name!r}: unsupported scheduler prediction_type {scheduler.config.prediction_type!r}"
            )
        self.info = info
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = _frozen(unet, self.device, dtype)
        self.autoencoder = None if autoencoder is None else _frozen(autoencoder, self.device, dtype)
        self.continuous_decoder = not isinstance(autoencoder, VQModel)
        self.space = "pixel" if autoencoder is None else "latent"
        self.image_channels = channels if autoencoder is None else autoencoder.config.in_channels
        self.latent_channels = channels
        self.downsample_factor = 1 if autoencoder is None else downsample_factor(autoencoder)
        self.latent_scale = 1.0 if autoencoder is None else float(latent_scale)
        # Each UNet level but the last halves the latent, so it must divide evenly.
        self._unet_factor = downsample_factor(unet)
        self._abar = scheduler.alphas_cumprod.to(self.device, torch.float64)

    @property
    def size_multiple(self) -> int:
        return self.downsample_factor * self._unet_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return x.to(self.device)
        z = unscaled_latents(self.autoencoder, x.to(self.device, self.dtype))
        return (z * self.latent_scale).to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return z.to(self.device)
        # A VQModel quantises here; its quantiser passes gradients straight through.
        x = self.autoencoder.decode(z.to(self.device, self.dtype) / self.latent_scale).sample
        return x.to(z.dtype)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the networks' activations in their backward passes instead of keeping
        them (diffusers' own switch, where the class has it): the gradients are the same,
        the memory of a UNet or decoder backward a fraction, each backward one more forward."""
        for network in (self.unet, self.autoencoder):
            if network is not None and network._supports_gradient_checkpointing:
                network.enable_gradient_checkpointing()

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).to(self.device)
        z = z.to(self.device)
        out = self.unet_output(z.to(self.dtype), t).to(z.dtype)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return out
        # z_t = sqrt(abar) z0 + sqrt(1 - abar) eps, and v = sqrt(abar) eps - sqrt(1 - abar) z0.
        abar = self._abar[t].to(z.dtype).reshape(-1, 1, 1, 1)
        if kind == "v_prediction":
            return abar.sqrt() * out + (1 - abar).sqrt() * z
        return (z - abar.sqrt() * out) / (1 - abar).sqrt()  # "sample": the network predicts z0

    def unet_output(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's raw prediction (of the scheduler's ``prediction_type``) at timesteps ``t``."""
        return self.unet(z, t).sample


def _frozen(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Any:
    module.eval().requires_grad_(False)
    # torch's own ``to``: diffusers' override warns about float32-kept modules even when a
    # model, like these three classes, keeps none.
    return torch.nn.Module.to(module, device=device, dtype=dtype)
