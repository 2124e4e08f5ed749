"""What ReSample's `paper` and `fast` presets cost on the real CelebA-HQ LDM architecture.

The networks are those of CompVis/ldm-celebahq-256 (the project's default prior) built from
the Hub model's own configuration files with random weights, so every pass has the shapes
and the arithmetic of the real model (no download). The configs are written with random
safetensors weights into a temporary folder in the Hub layout (unet/, vqvae/, scheduler/)
and loaded through ``load_prior(folder)``, the path a downloaded model takes. The task is
the paper's Gaussian deblurring (kernel 61, std 3) of a random image, with sigma_y = 0.005
(the paper's 0.01 on the [-1, 1] scale). Three parts:

  passes     both presets at full settings, one image, through ``resample()`` and its
             ``Trace``: network passes per image (exact counts, machine-independent).
             Full `paper` at 256x256 takes days on a CPU, so this runs on a --count-size
             image (default 32x32, an 8x8 latent: the smallest the UNet's three
             downsamplings accept). A count depends only on the schedule and on when each
             solve stops; the image size can change only the latter. So beside the
             measured count the table gives the schedule's maximum (every solve run to its
             iteration cap), a closed form of the settings that holds at any size.
  cpu        both presets side by side in one run on the --cpu-size image (default
             256x256) with the same reduced DDIM step count (--cpu-steps) and otherwise
             their own settings: wall seconds and their ratio. Also the seconds of one
             forward and one backward pass of each network at that size, from which a
             pass-weighted estimate of the full-settings time is printed (labelled as an
             estimate: it leaves out operator, optimiser and sampling overhead).
  gpu        only when CUDA is available: both presets at full settings on a 256x256
             image, batch 1 and the largest batch that fits (found by doubling, each
             probe a 2-step run with 2-iteration solves, which holds the memory peaks: the
             DPS gradient through UNet and decoder, and the latent solve through the
             decoder): seconds per image and torch.cuda.max_memory_allocated.

Targets (measured, not tuned to): `fast` needs at most 1/10 of the UNet + decoder passes
of `paper`, and at most 1/10 of its wall time in the same run.

Configuration sources. The Hub's unet/config.json, vqvae/config.json and
scheduler/scheduler_config.json could not be read here (no Hub access); UNET_CONFIG,
VQVAE_CONFIG and SCHEDULER_CONFIG_JSON below are copied, field for field, from a public copy of
those three files: suinleelab/Group-Attribution-for-Diffusion-Models, src/ddpm_config.py
(commit 4e102a6cc96392c98084d37762fb777442f4090b, ``DDPMConfig.celeba_config``; it keeps
the Hub files' "_diffusers_version" stamps 0.0.4 / 0.1.2). They agree with the model's
original training config, CompVis/stable-diffusion (and CompVis/latent-diffusion)
configs/latent-diffusion/celebahq-ldm-vq-4.yaml: model_channels 224 x channel_mult
(1, 2, 3, 4) = (224, 448, 672, 896); num_res_blocks 2; attention at downsampling factors
8, 4, 2 (latent 8, 16, 32 px), i.e. DownBlock2D + 3 x AttnDownBlock2D; num_head_channels 32
(diffusers renamed it attention_head_dim: scripts/change_naming_configs_and_checkpoints.py
in huggingface/diffusers); 3-channel 64x64 latent; first stage VQ-f4 with embed_dim 3,
n_embed 8192, ch 128 x ch_mult (1, 2, 4), 2 res blocks; linear_start 0.0015, linear_end
0.0195, 1000 timesteps (scaled_linear in diffusers). Not verified against the Hub itself:
the exact bytes of the three files, and whether the Hub's scheduler config carries further
keys (set_alpha_to_one, steps_offset) beyond the ones copied; neither changes the networks'
shapes or the pass counts. What this builds: UNet 274.06 M parameters, VQ autoencoder
55.32 M (encoder 22.3 M, decoder with quantiser 33.0 M), which the script prints.

    python benchmarks/cost.py --quick          # smoke check: every part at tiny settings, ~30 s
    python benchmarks/cost.py [--count-size 32] [--cpu-size 256] [--cpu-steps 5] [--threads 1]
                              [--gpu-max-batch 256] [--no-gpu] [--csv rows.csv]

How long (one thread of the project's 2-core CPU machine while it ran other jobs; one pass
at 256x256: UNet forward 4.7 s, backward 4.4 s, decoder forward 12.7 s, backward 11.6 s):
the pass counts take about an hour (`paper` makes ~19,000 UNet + decoder passes, at 32x32);
the CPU part about 3.7 h, nearly all of it `paper`'s final latent solve (500 decoder
forward + backward passes at 256x256: whatever the step count, `paper` ends with it);
--cpu-size 64 makes that part ~16 times cheaper. On a GPU the full-settings runs take
minutes per image for `paper` (the paper reports 280-780 s on A100/A6000-class GPUs), and
the largest batch multiplies that: --gpu-max-batch bounds it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel, VQModel
from safetensors.torch import save_file

from resample_cli.operators import GaussianBlur
from resample_cli.priors import DiffusersPrior, load_prior
from resample_cli.priors.layout import CONFIG, SAFETENSORS, SCHEDULER_CONFIG
from resample_cli.solvers.resample import ReSampleConfig, dc_schedule, resample

# The Hub's three config files, as copied in the source named in the module docstring.
UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": 32,
    "block_out_channels": [224, 448, 672, 896],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 64,
    "time_embedding_type": "positional",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
VQVAE_CONFIG: dict[str, Any] = {
    "_class_name": "VQModel",
    "_diffusers_version": "0.1.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 3,
    "layers_per_block": 2,
    "num_vq_embeddings": 8192,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
SCHEDULER_CONFIG_JSON: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.0.4",
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0015,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "trained_betas": None,
}

PRESETS = ("paper", "fast")
SIGMA_Y = 0.005  # the paper protocol's noise, in [0, 1] image units
GPU_SIZE = 256
PASSES = ("unet_forward", "unet_backward", "decoder_forward", "decoder_backward")
COLUMNS = (
    "part",
    "preset",
    "device",
    "size",
    "batch",
    "steps",
    *PASSES,
    "encoder_forward",
    "operator_calls",
    "passes",
    "max_passes",
    "seconds",
    "seconds_per_image",
    "peak_gib",
)


# Columns every table of network passes starts with: (header, row key).
COUNT_COLUMNS = [
    ("preset", "preset"),
    ("steps", "steps"),
    ("UNet fwd", "unet_forward"),
    ("UNet bwd", "unet_backward"),
    ("decoder fwd", "decoder_forward"),
    ("decoder bwd", "decoder_backward"),
]


def write_hub_folder(folder: Path, seed: int = 0) -> Path:
    """The three config files verbatim, plus random safetensors weights of the networks they
    describe, in the layout ``load_prior`` reads (and the Hub repository has)."""
    torch.manual_seed(seed)
    for sub, cls, config in (("unet", UNet2DModel, UNET_CONFIG), ("vqvae", VQModel, VQVAE_CONFIG)):
        model = cls.from_config(config)
        (folder / sub).mkdir(parents=True)
        (folder / sub / CONFIG).write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / sub / SAFETENSORS)
        del model  # the UNet alone is 1.1 GB: one copy in memory at a time
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / SCHEDULER_CONFIG).write_text(json.dumps(SCHEDULER_CONFIG_JSON, indent=2))
    return folder


def parameter_counts(prior: DiffusersPrior) -> dict[str, int]:
    ae = prior.autoencoder

    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    return {
        "unet": count(prior.unet),
        "autoencoder": count(ae),
        "encoder": count(ae.encoder, ae.quant_conv),
        "decoder": count(ae.decoder, ae.post_quant_conv, ae.quantize),
    }


def schedule_max(config: ReSampleConfig) -> Counter:
    """Network passes per image when no solve stops before its iteration cap (closed form
    of the settings; ``resample()`` does exactly this when nothing stops early)."""
    stages = dc_schedule(config)
    s, dps = config.steps, config.dps_scale > 0
    pixel = sum(stage == "pixel" for stage in stages)
    latent = sum(stage == "latent" for stage in stages) + int(config.final_consistency)
    lookahead = sum(min(config.lookahead, s - 1 - i) for i, stage in enumerate(stages) if stage)
    return Counter(
        unet_forward=s + lookahead,
        unet_backward=s * dps,
        # DPS decodes z0hat at every step; a pixel solve starts from D(z0hat) and its
        # encoded result is decoded for the residual it reports; a latent solve decodes once
        # per iteration; the result is decoded once at the end.
        decoder_forward=s * dps + 2 * pixel + latent * config.latent_iters + 1,
        decoder_backward=s * dps + latent * config.latent_iters,
        encoder_forward=pixel,
    )


def passes(counts: Counter) -> int:
    return sum(counts[k] for k in PASSES)


def measurement(size: int, batch: int, device: torch.device) -> tuple[torch.Tensor, GaussianBlur]:
    g = torch.Generator().manual_seed(0)
    op = GaussianBlur(3.0, kernel_size=61).to(device)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    y = op(x) + SIGMA_Y * torch.randn(x.shape, generator=g).to(device)
    return y, op


def run_preset(
    prior: DiffusersPrior, config: ReSampleConfig, size: int, batch: int = 1
) -> tuple[Counter, float]:
    """One ``resample()`` run: its per-image pass counts and wall seconds."""
    y, op = measurement(size, batch, prior.device)
    start = time.perf_counter()
    result = resample(y, op, prior, config, sigma_y=SIGMA_Y, generator=torch.Generator().manual_seed(1))
    if prior.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counts = Counter({k: v // batch for k, v in result.trace.counts.items()})
    return counts, seconds


def row(part: str, preset: str, device: str, size: int, batch: int, config: ReSampleConfig, **fields) -> dict:
    counts: Counter = fields.pop("counts")
    out = {
        "part": part,
        "preset": preset,
        "device": device,
        "size": size,
        "batch": batch,
        "steps": config.steps,
        **{k: counts[k] for k in (*PASSES, "encoder_forward", "operator_calls")},
        "passes": passes(counts),
        "max_passes": passes(schedule_max(config)),
    }
    return {**out, **fields}


def pass_seconds(prior: DiffusersPrior, size: int) -> dict[str, float]:
    """Wall seconds of one forward and one backward pass of each network (batch 1), after
    one untimed warm-up pass."""
    c, h, w = prior.latent_shape(size, size)
    t = torch.full((1,), 500, dtype=torch.long)
    times: dict[str, float] = {}
    for name, fn, shape in (
        ("unet", lambda z: prior.eps(z, t), (1, c, h, w)),
        ("decoder", prior.decode, (1, c, h, w)),
        ("encoder", prior.encode, (1, 3, size, size)),
    ):
        with torch.no_grad():
            fn(torch.randn(shape))  # warm-up: first calls allocate
        v = torch.randn(shape, requires_grad=True)
        start = time.perf_counter()
        out = fn(v)
        times[f"{name}_forward"] = time.perf_counter() - start
        start = time.perf_counter()
        out.sum().backward()
        times[f"{name}_backward"] = time.perf_counter() - start
    return times


def gpu_rows(prior: DiffusersPrior, configs: dict[str, ReSampleConfig], max_batch: int) -> list[dict]:
    rows = []
    for name, config in configs.items():
        probe = replace(
            config,
            steps=min(config.steps, 2),
            latent_iters=min(config.latent_iters, 2),
            pixel_iters=min(config.pixel_iters, 2),
        )
        largest, batch = 1, 1
        while batch <= max_batch:
            try:
                run_preset(prior, probe, GPU_SIZE, batch)
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
            largest, batch = batch, batch * 2
        for b in sorted({1, largest}):
            torch.cuda.reset_peak_memory_stats()
            counts, seconds = run_preset(prior, config, GPU_SIZE, b)
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append(
                row(
                    "gpu",
                    name,
                    torch.cuda.get_device_name(),
                    GPU_SIZE,
                    b,
                    config,
                    counts=counts,
                    seconds=seconds,
                    seconds_per_image=seconds / b,
                    peak_gib=peak,
                )
            )
    return rows


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    print("| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = []
        for _, key in columns:
            value = r.get(key)
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        print("| " + " | ".join(cells) + " |")


def ratio_line(rows: list[dict], key: str, label: str, verdict: bool = True) -> str:
    by = {r["preset"]: r for r in rows}
    if not all(p in by for p in PRESETS) or not by["paper"][key]:
        return ""
    value = by["fast"][key] / by["paper"][key]
    target = f" ({'meets' if value <= 0.1 else 'misses'} the 1/10 target)" if verdict else ""
    return f"fast / paper {label}: {value:.4f}{target}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count-size", type=int, default=32, help="image side for the pass counts (default 32)"
    )
    parser.add_argument(
        "--cpu-size", type=int, default=256, help="image side for the CPU timing (default 256)"
    )
    parser.add_argument(
        "--cpu-steps", type=int, default=5, help="DDIM steps of both presets in the CPU timing"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--gpu-max-batch", type=int, default=256, help="largest batch the GPU search tries")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU part even when CUDA is available")
    parser.add_argument("--csv", type=Path, default=None, help="also write every row to this CSV file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 32x32 everywhere, 4 steps, solves capped at 2 iterations, GPU batch <= 2",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = {name: ReSampleConfig.preset(name) for name in PRESETS}
    count_size, cpu_size = args.count_size, args.cpu_size
    cpu_steps, max_batch = args.cpu_steps, args.gpu_max_batch
    # The VQ autoencoder halves the image twice and the UNet the latent three times.
    multiple = 2 ** (len(VQVAE_CONFIG["block_out_channels"]) - 1) * 2 ** (
        len(UNET_CONFIG["block_out_channels"]) - 1
    )
    for flag, size in (("--count-size", count_size), ("--cpu-size", cpu_size)):
        if size <= 0 or size % multiple:
            parser.error(f"{flag} must be a positive multiple of {multiple}, got {size}")
    if args.quick:
        configs = {n: replace(c, steps=4, latent_iters=2, pixel_iters=2) for n, c in configs.items()}
        count_size, cpu_size, cpu_steps, max_batch = 32, 32, 2, 2
    settings = "quick settings (4 steps, solves capped at 2 iterations)" if args.quick else "full settings"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prior = load_prior(str(write_hub_folder(Path(tmp))))
        setup = time.perf_counter() - start
    params = parameter_counts(prior)
    print(
        f"CompVis/ldm-celebahq-256 architecture, random weights (written and loaded in {setup:.0f} s): "
        f"UNet {params['unet'] / 1e6:.2f} M parameters, VQ autoencoder {params['autoencoder'] / 1e6:.2f} M "
        f"(encoder {params['encoder'] / 1e6:.2f} M, decoder with quantiser {params['decoder'] / 1e6:.2f} M); "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
        + (" [--quick: reduced settings, not a measurement]" if args.quick else "")
    )

    # Part 1: exact pass counts at full settings on a small image.
    for name, config in configs.items():
        counts, seconds = run_preset(prior, config, count_size)
        rows.append(row("passes", name, "cpu", count_size, 1, config, counts=counts, seconds=seconds))
        if any(counts[k] > v for k, v in schedule_max(config).items()):
            print(f"warning: {name} made more passes than its schedule allows; schedule_max is out of date")
    part = [r for r in rows if r["part"] == "passes"]
    print(f"\n## Network passes per image ({count_size}x{count_size} input, batch 1)\n")
    print_table(
        part,
        COUNT_COLUMNS
        + [
            ("encoder", "encoder_forward"),
            ("operator calls", "operator_calls"),
            ("UNet+decoder", "passes"),
            ("UNet+decoder, schedule max", "max_passes"),
            ("wall s", "seconds"),
        ],
    )
    print(
        f"\nCounts from the solver's trace, {settings} of each preset, on a {count_size}x{count_size} "
        "image (the passes are those of the real networks, at a smaller size). A count depends on the "
        "image only through early stopping; 'schedule max' is the count with every solve run to its "
        "iteration cap, which no image can exceed."
    )
    print(ratio_line(part, "passes", "UNet+decoder passes (measured)", not args.quick))
    print(ratio_line(part, "max_passes", "UNet+decoder passes (schedule max)", not args.quick))

    # Part 2: CPU wall time side by side at the same reduced step count.
    cpu_configs = {n: replace(c, steps=cpu_steps) for n, c in configs.items()}
    for name, config in cpu_configs.items():
        counts, seconds = run_preset(prior, config, cpu_size)
        rows.append(row("cpu", name, "cpu", cpu_size, 1, config, counts=counts, seconds=seconds))
    part = [r for r in rows if r["part"] == "cpu"]
    print(f"\n## CPU seconds per image ({cpu_size}x{cpu_size} input, {cpu_steps} DDIM steps each, batch 1)\n")
    print_table(part, COUNT_COLUMNS + [("UNet+decoder", "passes"), ("wall s", "seconds")])
    print(
        f"\nBoth presets in this run, one after the other, {torch.get_num_threads()} thread(s); each with "
        f"its {settings} except the step count ({cpu_steps}), so the ratio is that of these reduced "
        "runs, not of full settings."
    )
    print(ratio_line(part, "seconds", "wall time (measured, reduced steps)", not args.quick))
    per_pass = pass_seconds(prior, cpu_size)
    print(
        f"\nOne pass at {cpu_size}x{cpu_size}, batch 1, seconds: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in per_pass.items())
    )
    estimates = {  # always of the presets' full settings, also under --quick
        n: sum(schedule_max(ReSampleConfig.preset(n))[k] * per_pass[k] for k in (*PASSES, "encoder_forward"))
        for n in PRESETS
    }
    print(
        "Estimate, not a measurement (schedule-max passes at full settings x the seconds above; no "
        "operator, optimiser or sampling overhead): "
        + ", ".join(f"{n} {s:.0f} s ({s / 3600:.1f} h)" for n, s in estimates.items())
        + f" per {cpu_size}x{cpu_size} image on this CPU"
    )

    # Part 3: GPU, full settings.
    print("\n## GPU seconds per image and peak memory (256x256 input)\n")
    if args.no_gpu:
        print("GPU part skipped: --no-gpu.")
    elif not torch.cuda.is_available():
        print(f"GPU part skipped: torch {torch.__version__} sees no CUDA device on this machine.")
    else:
        prior = load_gpu_prior(prior)
        gpu = gpu_rows(prior, configs, max_batch)
        rows += gpu
        print_table(
            gpu,
            [
                ("preset", "preset"),
                ("device", "device"),
                ("batch", "batch"),
                ("s / image", "seconds_per_image"),
                ("peak GiB", "peak_gib"),
                ("UNet+decoder per image", "passes"),
            ],
        )
        print(
            f"\n{settings.capitalize()}; the larger batch is the largest power of two whose 2-step probe ran "
            f"without running out of memory (tried up to {max_batch}); peak: torch.cuda.max_memory_allocated."
        )
        for b in sorted({r["batch"] for r in gpu}):
            print(
                ratio_line(
                    [r for r in gpu if r["batch"] == b], "seconds_per_image", f"s / image at batch {b}"
                )
            )
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nrows written to {args.csv}")


def load_gpu_prior(prior: DiffusersPrior) -> DiffusersPrior:
    """The same networks and weights on the GPU."""
    return DiffusersPrior(
        prior.unet,
        prior.autoencoder,
        prior.scheduler,
        latent_scale=prior.latent_scale,
        info=prior.info,
        device="cuda",
        dtype=prior.dtype,
    )


if __name__ == "__main__":
    sys.exit(main())
