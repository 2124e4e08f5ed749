"""Training a latent diffusion prior in two stages, with checkpoints and resumption.

(a) The autoencoder learns to reconstruct training images in [-1, 1] (L1 loss plus a small
KL term, or the VQ codebook/commitment loss). (b) With the autoencoder frozen, the latent
scale is set to 1 / std of training latents (the KL posterior mean, or the VQ encoder's
output before quantisation: what ``LatentPrior.encode`` returns), and a ``UNet2DModel`` learns
to predict the noise added to scaled latents at uniformly drawn timesteps of the DDPM
schedule (MSE). An exponential moving average of its weights is what gets saved.

Every ``checkpoint_every`` steps (and at the end of each stage) a checkpoint is written
(see ``checkpoints``) with a sample grid in ``OUT/samples/``; ``resume=True`` picks up the
newest checkpoint with the model weights, optimiser, EMA, step counts and random number
generators as they were, so an interrupted run continues as if it had not stopped. At the end
the prior is saved in the diffusers layout (``vae/`` or ``vqvae/``, ``unet/``, ``scheduler/``)
with a ``model_card.md``.

Under torchrun the run is data-parallel (``_Ranks``): every rank draws the same global batch
from the same generators and trains on its slice of it, DistributedDataParallel averages the
gradients, so the weights follow those of one process with the global batch (up to float
rounding); rank 0 alone writes checkpoints, samples and the prior.

The library never prints: progress goes to ``callback`` (see ``TrainProgress``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel, VQModel

from ..devices import DeviceUnavailableError, resolve_device
from ..distributed import Launch, join, launched
from ..fileio.atomic import write_text_atomic
from ..fileio.images import write_image
from ..metrics import psnr
from ..priors.diffusers_prior import downsample_factor, latent_channels, unscaled_latents
from . import card
from .checkpoints import (
    CHECKPOINTS,
    Checkpoint,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_partial,
    save_checkpoint,
)
from .config import ARCHITECTURE_FIELDS, TrainConfig, TrainingError, TrainProgress, learning_rate
from .data import FolderSource, ImageSource, SyntheticSource
from .models import (
    autoencoder_from_config,
    from_base,
    new_autoencoder,
    new_scheduler,
    new_unet,
    plain_config,
    save_diffusers_layout,
)
from .results import TrainResult

Callback = Callable[[TrainProgress], None]
STAGES = ("autoencoder", "unet")
SCALE_IMAGES = 256  # training images encoded to measure the latent standard deviation
HOLDOUT_IMAGES = 64  # held-out images for the autoencoder's final reconstruction PSNR
FINAL_WINDOW = 100  # final losses are means over this many last steps of a stage
# Offsets of the seed for the generators beside the training stream, so that measuring the
# latent scale, building the latent pool or drawing sample grids never shifts it.
_SCALE_SEED, _POOL_SEED, _SAMPLE_SEED, _HOLDOUT_SEED = 101, 102, 103, 104


def make_source(config: TrainConfig, channels: int | None = None) -> ImageSource:
    """The data source ``config`` names, with ``channels`` (or the config's, or the data's default)."""
    channels = channels or config.channels
    if config.synthetic is not None:
        default = 1 if config.synthetic == "ellipses" else 3
        return SyntheticSource(config.synthetic, config.resolution, channels or default)
    return FolderSource(config.data, config.resolution, channels)


def train_prior(
    config: TrainConfig,
    *,
    resume: bool = False,
    callback: Callback | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train (or fine-tune) a prior as ``config`` says and save it under ``config.output``.

    ``resume``: continue from the newest checkpoint in ``OUT/checkpoints/`` (start afresh if
    there is none). The networks, data and seed must be those of the checkpoint; the step
    counts may be raised (the learning-rate schedule then stretches to the new length).
    Without ``resume`` a folder that already holds checkpoints is refused. ``command``, when
    given, is recorded in the model card. A ``KeyboardInterrupt`` (Ctrl-C) propagates; the
    newest checkpoint stays usable.
    """
    config.validate()
    out = config.output
    if out.exists() and not out.is_dir():
        raise TrainingError(f"output {out} exists and is not a folder")
    ranks = _Ranks(launched(), config)
    try:
        device = ranks.device(resolve_device(config.device))
    except DeviceUnavailableError as err:
        raise TrainingError(str(err)) from None
    root = out / CHECKPOINTS
    if ranks.main:
        remove_partial(root)
    ranks.barrier()
    found = latest_checkpoint(root)
    if found is not None and not resume:
        raise TrainingError(
            f"{out} already holds a training run ({found.name}); resume it (--resume) or choose another output folder"
        )
    run = _Run(
        config, load_checkpoint(found) if found is not None else None, callback, command, ranks, device
    )
    out.mkdir(parents=True, exist_ok=True)  # only once the data and networks are in hand
    try:
        return run.train()
    finally:
        ranks.leave()


class _Ranks:
    """This process's part of a data-parallel run: under torchrun (``launch``) rank
    ``rank`` of ``size`` trains on the ``rank``-th slice of each global batch; alone, on
    all of it. Every rank draws the whole batch from the same generators, so their states,
    and the checkpoints rank 0 writes of them, are those of one process."""

    def __init__(self, launch: Launch | None, config: TrainConfig):
        self.launch = launch
        self.rank, self.size = (launch.rank, launch.world_size) if launch else (0, 1)
        for name, batch in (("batch_size", config.batch_size), ("unet_batch_size", config.unet_batch)):
            if batch % self.size:
                raise TrainingError(f"{name} {batch} does not split evenly over {self.size} ranks")

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this rank trains on (joining the process group under torchrun)."""
        return device if self.launch is None else join(self.launch, device)

    def mine(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch."""
        part = batch.shape[0] // self.size
        return batch[self.rank * part : (self.rank + 1) * part]

    def parallel(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` as DistributedDataParallel under torchrun (parameters a stage leaves
        unused, such as a frozen encoder, allowed), else itself."""
        if self.launch is None:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a per-rank scalar over the ranks."""
        if self.launch is not None:
            import torch.distributed as dist

            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.size
        return float(value)

    def barrier(self) -> None:
        if self.launch is not None:
            import torch.distributed as dist

            dist.barrier()

    def leave(self) -> None:
        if self.launch is not None:
            from ..distributed import leave

            leave()


class _AutoencoderLoss(torch.nn.Module):
    """Stage (a)'s loss of a batch as one module's forward, which DistributedDataParallel
    wraps: the L1 reconstruction plus the VQ commitment or the weighted KL term.
    ``noise(shape)`` gives the KL posterior's sampling noise for a latent of ``shape``."""

    def __init__(self, ae: torch.nn.Module, kl_weight: float, decoder_only: bool):
        super().__init__()
        self.ae, self.kl_weight, self.decoder_only = ae, kl_weight, decoder_only

    def forward(self, x: torch.Tensor, noise: Callable[[torch.Size], torch.Tensor]) -> torch.Tensor:
        with torch.set_grad_enabled(not self.decoder_only):  # a frozen encoder: no graph through it
            encoded = self.ae.encode(x)
        if isinstance(self.ae, VQModel):
            decoded = self.ae.decode(encoded.latents)
            loss = (decoded.sample - x).abs().mean()
            if not self.decoder_only:  # the codebook belongs to the latent space: frozen with the encoder
                loss = loss + decoded.commit_loss.mean()
            return loss
        posterior = encoded.latent_dist
        z = posterior.mean + posterior.std * noise(posterior.mean.shape)
        loss = (self.ae.decode(z).sample - x).abs().mean()
        if not self.decoder_only:
            kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
            loss = loss + self.kl_weight * kl
        return loss


class _Run:
    def __init__(
        self,
        config: TrainConfig,
        ckpt: Checkpoint | None,
        callback: Callback | None,
        command,
        ranks: _Ranks,
        device: torch.device,
    ):
        self.ranks = ranks
        quiet = callback is None or not ranks.main  # rank 0 tells the run's progress
        self.callback = (lambda progress: None) if quiet else callback
        self.command = command
        self.device = device
        base = None
        if ckpt is not None:
            _check_compatible(ckpt, config)
            channels = ckpt.config["channels"]
        elif config.base is not None:
            base = from_base(config.base)
            channels = base[0].config.in_channels
            if config.channels is not None and config.channels != channels:
                raise TrainingError(
                    f"the base prior has {channels}-channel images; channels {config.channels} cannot be trained"
                )
            multiple = downsample_factor(base[0]) * downsample_factor(base[1])
            if config.resolution % multiple:
                raise TrainingError(
                    f"resolution {config.resolution} must be a multiple of {multiple} for this base"
                )
        else:
            channels = config.channels
        self.source = make_source(config, channels)
        self.config = config = dataclasses.replace(config, channels=self.source.channels)
        self.state = ckpt.state if ckpt else TrainState()

        with torch.random.fork_rng(devices=[]):  # weight init from the seed, the caller's RNG untouched
            torch.manual_seed(config.seed)
            if ckpt is not None:
                self.ae = autoencoder_from_config(ckpt.autoencoder_class, ckpt.autoencoder_config)
                self.unet = UNet2DModel.from_config(ckpt.unet_config)
                self.scheduler = DDIMScheduler.from_config(ckpt.scheduler_config)
            elif base is not None:
                self.ae, self.unet, self.scheduler, self.state.latent_scale = base
            else:
                self.ae = new_autoencoder(config, config.channels)
                self.unet = new_unet(config)
                self.scheduler = new_scheduler()
        if ckpt is not None:
            self.ae.load_state_dict(ckpt.autoencoder)
            self.unet.load_state_dict(ckpt.unet)
        self.ae.to(self.device)
        self.unet.to(self.device)
        self.ae_loss = ranks.parallel(
            _AutoencoderLoss(self.ae, config.kl_weight, config.ae_train == "decoder"), self.device
        )
        self.unet_parallel = ranks.parallel(self.unet, self.device)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        if ckpt is not None:
            self.ema.load_state_dict(ckpt.unet_ema)
        self.scheduler_config = plain_config(self.scheduler)
        self.abar = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction = self.scheduler.config.prediction_type

        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_stage: str | None = None
        if ckpt is not None:
            self.data_gen.set_state(ckpt.rng["data"])
            self.noise_gen.set_state(ckpt.rng["noise"].to(self.noise_gen.get_state().device))
            if self._stage_in_progress() == ckpt.optimizer_stage and ckpt.optimizer:
                self._make_optimizer(ckpt.optimizer_stage).load_state_dict(ckpt.optimizer)
        self.pool: torch.Tensor | None = None
        self.session_start = time.perf_counter()
        self.elapsed_before = self.state.elapsed_s
        self.session_steps = {stage: 0 for stage in STAGES}
        self.session_stage_s = {stage: 0.0 for stage in STAGES}
        self.last_checkpoint = self.state.step if ckpt else None
        if ckpt is not None:
            self._report("resumed", f"resumed from {ckpt.path.name} (step {self.state.step})")

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        config = self.config
        while self.state.ae_step < config.ae_steps:
            loss = self._timed("autoencoder", self._ae_step)
            self.state.ae_step += 1
            self._after_step("autoencoder", loss)
        if config.unet_steps > self.state.unet_step and self.state.latent_scale is None:
            self._measure_latent_scale()
        while self.state.unet_step < config.unet_steps:
            loss = self._timed("unet", self._unet_step)
            self.state.unet_step += 1
            self._after_step("unet", loss)
        if self.last_checkpoint != self.state.step:
            self._checkpoint()
        return self._finish()

    def _stage_in_progress(self) -> str:
        return "autoencoder" if self.state.ae_step < self.config.ae_steps else "unet"

    def _timed(self, stage: str, step: Callable[[], float]) -> float:
        start = time.perf_counter()
        loss = step()
        seconds = time.perf_counter() - start
        self.state.stage_s[stage] = self.state.stage_s.get(stage, 0.0) + seconds
        self.session_stage_s[stage] += seconds
        self.session_steps[stage] += 1
        return loss

    def _after_step(self, stage: str, loss: float) -> None:
        step = self.state.step
        self.state.history.append([step, stage, loss])
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer else None
        self.callback(
            TrainProgress(step, self.config.total_steps, stage, loss=loss, eta_s=self._eta(), lr=lr)
        )
        boundary = stage == "autoencoder" and self.state.ae_step == self.config.ae_steps
        if step % self.config.checkpoint_every == 0 or boundary:
            self._checkpoint()

    def _eta(self) -> float | None:
        """Seconds left: the remaining steps of each stage at that stage's pace in this session
        (a stage not yet run is guessed at the current one's pace; checkpoints not counted)."""
        rates = {s: self.session_stage_s[s] / self.session_steps[s] for s in STAGES if self.session_steps[s]}
        if not rates:
            return None
        guess = next(iter(rates.values()))
        left = {
            "autoencoder": self.config.ae_steps - self.state.ae_step,
            "unet": self.config.unet_steps - self.state.unet_step,
        }
        return sum(left[s] * rates.get(s, guess) for s in STAGES)

    # -- stage (a) -----------------------------------------------------------------------------

    def _images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.source.sample(n, generator).to(self.device) * 2 - 1

    def _ae_step(self) -> float:
        config = self.config
        optimizer = self._optimizer("autoencoder")
        self._set_lr("autoencoder", self.state.ae_step, config.ae_steps)
        self.ae.train()
        n = config.batch_size
        x = self.ranks.mine(self._images(n, self.data_gen))
        loss = self.ae_loss(x, lambda shape: self._noise((n, *shape[1:])))
        return self._apply(optimizer, loss)

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """This rank's slice of standard normal noise for a global batch of ``shape``."""
        return self.ranks.mine(torch.randn(shape, generator=self.noise_gen, device=self.device))

    # -- stage (b) -----------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled latents as ``LatentPrior.encode`` makes them (KL mean; VQ before quantising)."""
        self.ae.eval()
        return unscaled_latents(self.ae, x)

    def _encode_many(self, n: int, generator: torch.Generator) -> torch.Tensor:
        chunk = max(self.config.unet_batch, 32)
        parts = [self._encode(self._images(min(chunk, n - i), generator)) for i in range(0, n, chunk)]
        return torch.cat(parts)

    def _measure_latent_scale(self) -> None:
        if self.pool is None and self.config.latent_pool:
            self._build_pool()
        if self.pool is not None:
            latents = self.pool
        else:
            latents = self._encode_many(
                SCALE_IMAGES, torch.Generator().manual_seed(self.config.seed + _SCALE_SEED)
            )
        std = float(latents.float().std())
        if not (std > 0 and math.isfinite(std)):
            raise TrainingError(f"the autoencoder's latents have standard deviation {std}; cannot scale them")
        self.state.latent_scale = 1.0 / std
        self._report("latent-scale", f"latent scale 1/std = {self.state.latent_scale:.5g}")

    def _build_pool(self) -> None:
        """Encode ``latent_pool`` images once (from their own seeded stream, so a resumed run
        rebuilds the same pool); UNet batches are then drawn from it."""
        self._report("latent-pool", f"encoding {self.config.latent_pool} images for the latent pool")
        gen = torch.Generator().manual_seed(self.config.seed + _POOL_SEED)
        self.pool = self._encode_many(self.config.latent_pool, gen)

    def _latents(self, n: int) -> torch.Tensor:
        """This rank's slice of a global batch of ``n`` scaled latents."""
        if self.config.latent_pool:
            if self.pool is None:
                self._build_pool()
            pick = torch.randint(len(self.pool), (n,), generator=self.data_gen).to(self.device)
            z = self.pool[self.ranks.mine(pick)]
        else:
            z = self._encode(self.ranks.mine(self._images(n, self.data_gen)))
        return z * self.state.latent_scale

    def _unet_step(self) -> float:
        config = self.config
        optimizer = self._optimizer("unet")
        self._set_lr("unet", self.state.unet_step, config.unet_steps)
        self.unet.train()
        n = config.unet_batch
        z0 = self._latents(n)
        noise = self._noise((n, *z0.shape[1:]))
        t = self.ranks.mine(
            torch.randint(0, len(self.abar), (n,), generator=self.noise_gen, device=self.device)
        )
        abar = self.abar[t].view(-1, 1, 1, 1)
        zt = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
        if self.prediction == "epsilon":
            target = noise
        elif self.prediction == "v_prediction":
            target = abar.sqrt() * noise - (1 - abar).sqrt() * z0
        else:  # "sample"
            target = z0
        loss = F.mse_loss(self.unet_parallel(zt, t).sample, target)
        value = self._apply(optimizer, loss)
        decay = min(config.ema, (1 + self.state.unet_step) / (10 + self.state.unet_step))
        with torch.no_grad():
            for averaged, current in zip(self.ema.parameters(), self.unet.parameters(), strict=True):
                averaged.lerp_(current, 1 - decay)
        return value

    # -- shared --------------------------------------------------------------------------------

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        self.optimizer = torch.optim.AdamW(
            self._trained_parameters(stage), lr=self.config.stage_lr(stage), weight_decay=0.0
        )
        self.optimizer_stage = stage
        return self.optimizer

    def _trained_parameters(self, stage: str) -> list[torch.nn.Parameter]:
        if stage == "unet":
            return list(self.unet.parameters())
        if self.config.ae_train == "decoder":
            parts = [self.ae.decoder, self.ae.post_quant_conv]  # post_quant_conv may be None (KL)
            return [p for part in parts if part is not None for p in part.parameters()]
        return list(self.ae.parameters())

    def _optimizer(self, stage: str) -> torch.optim.Optimizer:
        if self.optimizer_stage != stage:
            return self._make_optimizer(stage)
        return self.optimizer

    def _set_lr(self, stage: str, step: int, total: int) -> None:
        config = self.config
        lr = learning_rate(step, total, config.stage_lr(stage), config.warmup_steps, config.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _apply(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
        value = self.ranks.mean(loss.detach())  # every rank sees the same value, and stops together
        if not math.isfinite(value):
            raise TrainingError(
                f"the loss became {value} at step {self.state.step + 1}; lower the learning rate "
                "(resume from the last checkpoint with a smaller lr)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], self.config.grad_clip)
        optimizer.step()
        return value

    def _report(self, event: str, message: str) -> None:
        stage = self._stage_in_progress()
        self.callback(
            TrainProgress(self.state.step, self.config.total_steps, stage, event=event, message=message)
        )

    # -- checkpoints, samples, the end -----------------------------------------------------------

    def _checkpoint(self) -> None:
        state = self.state
        state.elapsed_s = self.elapsed_before + time.perf_counter() - self.session_start
        self.last_checkpoint = state.step
        if not self.ranks.main:  # the ranks' states are one: rank 0 writes it
            return
        grid = self._sample_grid(self.config.output / "samples" / f"step-{state.step:08d}.png")
        path = save_checkpoint(
            self.config.output / CHECKPOINTS,
            state=state,
            config=self.config.to_json(),
            autoencoder=self.ae,
            unet=self.unet,
            unet_ema=self.ema,
            scheduler_config=self.scheduler_config,
            optimizer_stage=self.optimizer_stage or self._stage_in_progress(),
            optimizer=self.optimizer,
            rng={"data": self.data_gen.get_state(), "noise": self.noise_gen.get_state()},
            keep=self.config.keep_checkpoints,
        )
        self._write_losses()
        self._report("checkpoint", f"checkpoint {path} (samples: {grid})")

    def _sample_grid(self, path: Path) -> Path:
        """DDIM samples of the EMA UNet once it has trained (or comes trained from a base);
        before that, autoencoder reconstructions (top row originals, bottom row reconstructions)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        g = self.config.sample_grid
        gen = torch.Generator().manual_seed(self.config.seed + _SAMPLE_SEED)
        if self.state.unet_step == 0 and self.config.base is None:
            x = self._images(g, gen)
            with torch.no_grad():
                recon = self.ae.decode(self._encode(x)).sample
            images = (torch.cat([x, recon]) + 1) / 2
            rows = 2
        else:
            images = self.samples(g * g, gen)
            rows = g
        write_image(path, tile(images.clamp(0, 1).cpu(), rows))
        return path

    @torch.no_grad()
    def samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images in [0, 1] from the EMA UNet: DDIM with ``sample_steps`` steps, eta 0."""
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(self.config.sample_steps)
        size = self.config.resolution // downsample_factor(self.ae)
        z = torch.randn((n, latent_channels(self.ae), size, size), generator=generator).to(self.device)
        for t in scheduler.timesteps:
            eps = self.ema(z, t.to(self.device)).sample
            z = scheduler.step(eps, t, z).prev_sample
        self.ae.eval()
        return ((self.ae.decode(z / self.state.latent_scale).sample + 1) / 2).clamp(0, 1)

    def _write_losses(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "stage", "loss"])
        writer.writerows(self.state.history)
        write_text_atomic(self.config.output / "losses.csv", buffer.getvalue())

    def final_losses(self) -> dict[str, float]:
        out = {}
        for stage in STAGES:
            values = [row[2] for row in self.state.history if row[1] == stage][-FINAL_WINDOW:]
            if values:
                out[stage] = sum(values) / len(values)
        return out

    def _holdout_psnr(self) -> float:
        x = self._images(HOLDOUT_IMAGES, torch.Generator().manual_seed(self.config.seed + _HOLDOUT_SEED))
        with torch.no_grad():
            recon = self.ae.decode(self._encode(x)).sample.clamp(-1, 1)
        return psnr((recon + 1) / 2, (x + 1) / 2, per_image=True)

    def _finish(self) -> TrainResult:
        config, state, out = self.config, self.state, self.config.output
        if state.latent_scale is None:  # no UNet stage: the saved model still needs a scale
            self._measure_latent_scale()
        grid = out / "samples" / "final.png"
        ae_psnr = self._holdout_psnr()
        if self.ranks.main:
            self._sample_grid(grid)
            save_diffusers_layout(
                out, self.ae, self.ema, DDIMScheduler.from_config(self.scheduler_config), state.latent_scale
            )
        self.ranks.barrier()  # the other ranks' results name the files rank 0 wrote
        wall = self.elapsed_before + time.perf_counter() - self.session_start
        weights = sum(p.stat().st_size for p in out.glob("*/diffusion_pytorch_model.safetensors"))
        result = TrainResult(
            output=out,
            steps=state.step,
            ae_steps=state.ae_step,
            unet_steps=state.unet_step,
            latent_scale=float(state.latent_scale),
            final_losses=self.final_losses(),
            ae_psnr=ae_psnr,
            wall_time_s=wall,
            sample_grid=grid,
            model_card=out / "model_card.md",
            weights_bytes=weights,
        )
        text = card.model_card(
            config,
            result,
            source=self.source.describe(),
            stage_s=state.stage_s,
            command=self.command,
            autoencoder=self.ae,
            unet=self.ema,
            scheduler_config=self.scheduler_config,
            device=self.device,
        )
        if self.ranks.main:
            write_text_atomic(result.model_card, text)
        self._report("saved", f"saved the prior in {out} ({weights / 1e6:.2f} MB of weights)")
        return result


def tile(images: torch.Tensor, rows: int, gap: int = 2) -> torch.Tensor:
    """Images (N, C, H, W) in a grid of ``rows`` rows on a white background: (C, H', W')."""
    n, c, h, w = images.shape
    cols = math.ceil(n / rows)
    grid = torch.ones(c, rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = images[i]
    return grid


def _check_compatible(ckpt: Checkpoint, config: TrainConfig) -> None:
    saved = ckpt.config
    given = config.to_json()
    for name in (*ARCHITECTURE_FIELDS, "seed"):
        # a setting newer than the checkpoint's version of the tool had its default there
        mine, theirs = given[name], saved.get(name, TrainConfig.__dataclass_fields__[name].default)
        if name == "channels" and mine is None:
            continue
        if name == "data" and mine is not None and theirs is not None:
            mine, theirs = str(Path(mine).resolve()), str(Path(theirs).resolve())
        if mine != theirs:
            raise TrainingError(
                f"the checkpoint {ckpt.path} was made with {name} = {saved.get(name)!r}, not {given[name]!r}; "
                "resume with the same settings or train into another folder"
            )
    state = ckpt.state
    if state.ae_step > config.ae_steps:
        raise TrainingError(
            f"the checkpoint has {state.ae_step} autoencoder steps, more than ae_steps = {config.ae_steps}"
        )
    if state.unet_step > 0 and state.ae_step != config.ae_steps:
        raise TrainingError(
            f"the checkpoint's UNet stage has begun after {state.ae_step} autoencoder steps; "
            f"ae_steps must stay {state.ae_step}"
        )
    if state.unet_step > config.unet_steps:
        raise TrainingError(
            f"the checkpoint has {state.unet_step} UNet steps, more than unet_steps = {config.unet_steps}"
        )
