"""Cost accounting for solvers: network passes, operator calls, timings, residuals."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..operators.base import Operator
from ..priors.base import LatentPrior

COUNTERS = (
    "unet_forward",
    "unet_backward",
    "decoder_forward",
    "decoder_backward",
    "encoder_forward",
    "encoder_backward",
    "operator_calls",
)


@dataclass
class Trace:
    """What a solver run cost and how the data fit evolved.

    Counts are per image: a network pass over a batch of k images counts k, so a
    batch of N costs N times what one image costs, and early-stopped images stop
    counting. ``residual_per_dc_step`` holds, for each data-consistency step, the
    RMS residual ||y - A(x)|| / sqrt(m) of each image's data-consistent estimate
    (None for images that were not part of that step). ``final_pixel_lam`` holds the
    weight of each image's final pixel solve (None where the decoded image already fit);
    it stays empty when no final pixel solve ran.
    """

    counts: Counter = field(default_factory=lambda: Counter({k: 0 for k in COUNTERS}))
    timing: dict[str, float] = field(default_factory=dict)
    residual_per_dc_step: list[list[float | None]] = field(default_factory=list)
    dc_iterations: list[list[int]] = field(default_factory=list)
    final_residual: list[float] = field(default_factory=list)
    final_pixel_lam: list[float | None] = field(default_factory=list)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timing[name]`` (synchronising CUDA)."""
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class CountingPrior:
    """Calls a prior's networks, counting each pass in ``trace`` and applying autocast.

    Backward passes are counted by the caller through ``count_backward`` because only
    it knows which networks a gradient went through. A prior's ``unet_passes`` per image
    (2 under classifier-free guidance) multiply the UNet's counts; a pixel-space prior has
    no autoencoder, so its identity ``encode`` and ``decode`` count nothing.
    """

    def __init__(self, prior: LatentPrior, trace: Trace, autocast: torch.dtype | None = None):
        self.prior = prior
        self.trace = trace
        self.autocast = autocast

    def _cast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.prior.device.type, dtype=self.autocast)

    def eps(self, z: torch.Tensor, t: int) -> torch.Tensor:
        self.trace.counts["unet_forward"] += z.shape[0] * self.prior.unet_passes
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        with self._cast():
            return self.prior.eps(z, tt).float()

    def decode(self, z: torch.Tensor, *, full_precision: bool = False) -> torch.Tensor:
        """Latent -> image in [0, 1] (the operators' domain); ``full_precision`` runs it
        without autocast."""
        self._count_autoencoder("decoder_forward", z.shape[0])
        with contextlib.nullcontext() if full_precision else self._cast():
            return (self.prior.decode(z).float() + 1) / 2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] -> latent."""
        self._count_autoencoder("encoder_forward", x.shape[0])
        with self._cast():
            return self.prior.encode(x * 2 - 1).float()

    def count_backward(
        self, n: int, *, unet: bool = False, decoder: bool = False, encoder: bool = False
    ) -> None:
        if unet:
            self.trace.counts["unet_backward"] += n * self.prior.unet_passes
        if decoder:
            self._count_autoencoder("decoder_backward", n)
        if encoder:
            self._count_autoencoder("encoder_backward", n)

    def _count_autoencoder(self, counter: str, n: int) -> None:
        if self.prior.space == "latent":
            self.trace.counts[counter] += n


@contextlib.contextmanager
def counting_operator_calls(operator: Operator, trace: Trace) -> Iterator[Operator]:
    """Count every forward application of ``operator`` (one per image), including
    those made inside its own ``solve``, while the block runs."""

    def hook(module, args, output):
        trace.counts["operator_calls"] += args[0].shape[0]

    handle = operator.register_forward_hook(hook)
    try:
        yield operator
    finally:
        handle.remove()
