"""What ReSample's `paper` and `fast` presets cost on the real CelebA-HQ LDM architecture: network
passes per image and CPU seconds (the GPU table is benchmarks/gpu_cost.py, which builds on this).

The networks are those of CompVis/ldm-celebahq-256 (the project's default prior) built from
the Hub model's own configuration files with random weights, so every pass has the shapes
and the arithmetic of the real model (no download). The configs are written with random
safetensors weights into a temporary folder in the Hub layout (unet/, vqvae/, scheduler/)
and loaded through ``load_prior(folder)``, the path a downloaded model takes. The task is
the paper's Gaussian deblurring (kernel 61, std 3) of a random image, with sigma_y = 0.005
(the paper's 0.01 on the [-1, 1] scale). Two parts, both on the CPU:

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

The GPU table (seconds per image and peak memory at batch 1 and at the largest batch, in
float32 and bfloat16) is ``python benchmarks/gpu_cost.py``; this script has no GPU part.

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

    python benchmarks/cost.py --quick          # smoke check: both parts, tiny networks, CPU, ~15 s
    python benchmarks/cost.py [--part all|passes|cpu] [--presets paper,fast] [--count-size 32]
                              [--cpu-size 256] [--cpu-steps 5] [--threads 1] [--csv rows.csv]
    python benchmarks/gpu_cost.py              # the GPU table: one command, < 5 min on an H200

How long (one thread of the project's 2-core CPU machine while it ran other jobs; one pass
at 256x256: UNet forward 4.7 s, backward 4.4 s, decoder forward 12.7 s, backward 11.6 s):
the pass counts take about an hour (`paper` makes ~19,000 UNet + decoder passes, at 32x32);
the CPU part about 3.7 h, nearly all of it `paper`'s final latent solve (500 decoder
forward + backward passes at 256x256: whatever the step count, `paper` ends with it);
--cpu-size 64 makes that part ~16 times cheaper. Under --quick the networks are narrowed
to 32 channels a block (the same layout), so that both parts run in seconds; its numbers
are no measurement.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel, VQModel
from safetensors.torch import save_file

from resample_cli.operators import GaussianBlur
from resample_cli.priors import DiffusersPrior, load_prior
from resample_cli.priors.layout import CONFIG, SAFETENSORS, SCHEDULER_CONFIG
from resample_cli.solvers.resample import ReSampleConfig, StepInfo, dc_schedule, resample
from resample_cli.solvers.trace import CountingPrior, Trace

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


def narrow(config: dict[str, Any], channels: int, **changes: Any) -> dict[str, Any]:
    """``config`` with every block ``channels`` wide: the same layout (blocks, attention,
    resolutions), small enough for the ``--quick`` smoke check."""
    return {**config, "block_out_channels": [channels] * len(config["block_out_channels"]), **changes}


TINY_UNET_CONFIG = narrow(UNET_CONFIG, 32, norm_num_groups=8)  # 4 channels a group at 1x1
TINY_VQVAE_CONFIG = narrow(VQVAE_CONFIG, 32, norm_num_groups=8, num_vq_embeddings=64)

PRESETS = ("paper", "fast")  # the pair the 1/10 targets compare
QUICK = {"steps": 4, "latent_iters": 2, "pixel_iters": 2}  # the presets' settings under --quick
SIGMA_Y = 0.005  # the paper protocol's noise, in [0, 1] image units
PASSES = ("unet_forward", "unet_backward", "decoder_forward", "decoder_backward")
COLUMNS = (  # the CSV's, of both scripts
    "part",
    "preset",
    "device",
    "dtype",
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
    "full_seconds_per_image",
    "estimate",
    "peak_gib",
    "note",
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


def write_hub_folder(folder: Path, seed: int = 0, tiny: bool = False) -> Path:
    """The three config files verbatim, plus random safetensors weights of the networks they
    describe, in the layout ``load_prior`` reads (and the Hub repository has). ``tiny``:
    the narrow networks of ``--quick`` instead."""
    torch.manual_seed(seed)
    unet_config, vqvae_config = (TINY_UNET_CONFIG, TINY_VQVAE_CONFIG) if tiny else (UNET_CONFIG, VQVAE_CONFIG)
    for sub, cls, config in (("unet", UNet2DModel, unet_config), ("vqvae", VQModel, vqvae_config)):
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


def build_prior(device: torch.device, tiny: bool) -> DiffusersPrior:
    """The random-weight prior loaded through ``load_prior`` onto ``device``; prints its
    parameter counts and the seconds that took (writing the folder included)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prior = load_prior(str(write_hub_folder(Path(tmp), tiny=tiny)), device=device)
    synchronize(device)
    setup = time.perf_counter() - start
    params = parameter_counts(prior)
    print(
        f"CompVis/ldm-celebahq-256 architecture{' narrowed to 32 channels (--quick)' if tiny else ''}, "
        f"random weights (written and loaded on {device} in {setup:.0f} s): "
        f"UNet {params['unet'] / 1e6:.2f} M parameters, VQ autoencoder {params['autoencoder'] / 1e6:.2f} M "
        f"(encoder {params['encoder'] / 1e6:.2f} M, decoder with quantiser {params['decoder'] / 1e6:.2f} M); "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
        + (" [--quick: reduced settings, not a measurement]" if tiny else "")
    )
    return prior


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


def passes(counts: Mapping[str, float]) -> int:
    return sum(counts.get(k, 0) for k in PASSES)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measurement(size: int, batch: int, device: torch.device) -> tuple[torch.Tensor, GaussianBlur]:
    g = torch.Generator().manual_seed(0)
    op = GaussianBlur(3.0, kernel_size=61).to(device)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    y = op(x) + SIGMA_Y * torch.randn(x.shape, generator=g).to(device)
    return y, op


class OverBudget(Exception):
    """A timed run went past its deadline and was stopped."""


@dataclass
class Run:
    counts: Counter  # network passes per image
    seconds: float  # wall seconds of the whole batch
    trace: Trace


def run_preset(
    prior: DiffusersPrior,
    config: ReSampleConfig,
    size: int,
    batch: int = 1,
    *,
    autocast: torch.dtype | None = None,
    deadline: float | None = None,
) -> Run:
    """One ``resample()`` run on a batch, with the CPU generator the pipeline uses; past
    ``deadline`` (a ``time.perf_counter()`` value) it stops after the current DDIM step by
    raising ``OverBudget``."""
    y, op = measurement(size, batch, prior.device)

    def check(info: StepInfo) -> None:
        if time.perf_counter() > deadline:
            raise OverBudget(f"stopped at step {info.step} of {info.total}: the time budget ran out")

    synchronize(prior.device)
    start = time.perf_counter()
    result = resample(
        y,
        op,
        prior,
        config,
        sigma_y=SIGMA_Y,
        generator=torch.Generator().manual_seed(1),
        callback=None if deadline is None else check,
        autocast=autocast,
    )
    synchronize(prior.device)
    seconds = time.perf_counter() - start
    counts = Counter({k: v // batch for k, v in result.trace.counts.items()})
    return Run(counts, seconds, result.trace)


def row(
    part: str,
    preset: str,
    device: str,
    size: int,
    batch: int,
    config: ReSampleConfig,
    *,
    counts: Mapping[str, int],
    full: ReSampleConfig | None = None,
    dtype: str = "float32",
    **fields,
) -> dict:
    """One table row; ``max_passes`` is of ``full`` (default ``config``)."""
    out = {
        "part": part,
        "preset": preset,
        "device": device,
        "dtype": dtype,
        "size": size,
        "batch": batch,
        "steps": config.steps,
        **{k: counts.get(k, 0) for k in (*PASSES, "encoder_forward", "operator_calls")},
        "passes": passes(counts),
        "max_passes": passes(schedule_max(full or config)),
    }
    return {**out, **fields}


def pass_seconds(
    prior: DiffusersPrior, size: int, batch: int = 1, autocast: torch.dtype | None = None
) -> dict[str, float]:
    """Wall seconds of one forward and one backward pass of each network on a batch, called as
    the solvers call them (``CountingPrior``, with ``autocast``), after one untimed warm-up."""
    net = CountingPrior(prior, Trace(), autocast)
    device = prior.device
    latent = (batch, *prior.latent_shape(size, size))
    image = (batch, prior.image_channels, size, size)
    times: dict[str, float] = {}
    for name, fn, shape in (
        ("unet", lambda z: net.eps(z, 500), latent),
        ("decoder", net.decode, latent),
        ("encoder", net.encode, image),
    ):
        with torch.no_grad():
            fn(torch.randn(shape, device=device))  # warm-up: first calls allocate
        v = torch.randn(shape, device=device, requires_grad=True)
        synchronize(device)
        start = time.perf_counter()
        out = fn(v)
        synchronize(device)
        times[f"{name}_forward"] = time.perf_counter() - start
        start = time.perf_counter()
        out.sum().backward()
        synchronize(device)
        times[f"{name}_backward"] = time.perf_counter() - start
        del out, v
    return times


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    print("| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = []
        for _, key in columns:
            value = r.get(key)
            cells.append(
                "–" if value in (None, "") else f"{value:.2f}" if isinstance(value, float) else str(value)
            )
        print("| " + " | ".join(cells) + " |")


def ratio_line(rows: list[dict], key: str, label: str, verdict: bool = True) -> str:
    by = {r["preset"]: r for r in rows}
    if not all(p in by for p in PRESETS) or not by["paper"].get(key) or by["fast"].get(key) is None:
        return ""
    value = by["fast"][key] / by["paper"][key]
    target = f" ({'meets' if value <= 0.1 else 'misses'} the 1/10 target)" if verdict else ""
    return f"fast / paper {label}: {value:.4f}{target}"


# --- the command line, shared with gpu_cost.py ------------------------------------------


def names(text: str) -> list[str]:
    """The items of a comma-separated option."""
    return [n.strip() for n in text.split(",") if n.strip()]


def add_common_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options both scripts take: --presets, --threads, --csv, --quick."""
    parser.add_argument(
        "--presets",
        default=",".join(PRESETS),
        help="ReSample presets, by name, comma-separated (default paper,fast)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--csv", type=Path, default=None, help="also write every row to this CSV file")
    parser.add_argument("--quick", action="store_true", help=quick_help)


def preset_configs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, ReSampleConfig]:
    """The --presets by name (at the QUICK settings under --quick), after setting torch's CPU
    threads to --threads."""
    torch.set_num_threads(args.threads)
    try:
        configs = {name: ReSampleConfig.preset(name) for name in names(args.presets)}
    except ValueError as err:
        parser.error(str(err))
    if not configs:
        parser.error("--presets needs a name")
    if args.quick:
        configs = {n: replace(c, **QUICK) for n, c in configs.items()}
    return configs


def settings_text(quick: bool) -> str:
    return "quick settings (4 steps, solves capped at 2 iterations)" if quick else "full settings"


def write_csv(path: Path | None, rows: list[dict]) -> None:
    if path:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nrows written to {path}")


# --- this script's two parts ------------------------------------------------------------


def passes_part(
    prior: DiffusersPrior, configs: dict[str, ReSampleConfig], size: int, quick: bool
) -> list[dict]:
    """Exact pass counts at the presets' settings on a small image."""
    rows = []
    for name, config in configs.items():
        run = run_preset(prior, config, size)
        rows.append(row("passes", name, "cpu", size, 1, config, counts=run.counts, seconds=run.seconds))
        if any(run.counts[k] > v for k, v in schedule_max(config).items()):
            print(f"warning: {name} made more passes than its schedule allows; schedule_max is out of date")
    print(f"\n## Network passes per image ({size}x{size} input, batch 1)\n")
    print_table(
        rows,
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
        f"\nCounts from the solver's trace, {settings_text(quick)} of each preset, on a {size}x{size} "
        "image (the passes are those of the real networks, at a smaller size). A count depends on the "
        "image only through early stopping; 'schedule max' is the count with every solve run to its "
        "iteration cap, which no image can exceed."
    )
    print(ratio_line(rows, "passes", "UNet+decoder passes (measured)", not quick))
    print(ratio_line(rows, "max_passes", "UNet+decoder passes (schedule max)", not quick))
    return rows


def cpu_part(
    prior: DiffusersPrior, configs: dict[str, ReSampleConfig], size: int, steps: int, quick: bool
) -> list[dict]:
    """CPU wall time side by side at the same reduced step count, and the seconds of one pass."""
    rows = []
    for name, config in configs.items():
        config = replace(config, steps=steps)
        run = run_preset(prior, config, size)
        rows.append(row("cpu", name, "cpu", size, 1, config, counts=run.counts, seconds=run.seconds))
    print(f"\n## CPU seconds per image ({size}x{size} input, {steps} DDIM steps each, batch 1)\n")
    print_table(rows, COUNT_COLUMNS + [("UNet+decoder", "passes"), ("wall s", "seconds")])
    print(
        f"\nThe presets in this run, one after the other, {torch.get_num_threads()} thread(s); each with "
        f"its {settings_text(quick)} except the step count ({steps}), so the ratio is that of these reduced "
        "runs, not of full settings."
    )
    print(ratio_line(rows, "seconds", "wall time (measured, reduced steps)", not quick))
    per_pass = pass_seconds(prior, size)
    print(
        f"\nOne pass at {size}x{size}, batch 1, seconds: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in per_pass.items())
    )
    estimates = {  # always of the presets' full settings, also under --quick
        n: sum(schedule_max(ReSampleConfig.preset(n))[k] * per_pass[k] for k in (*PASSES, "encoder_forward"))
        for n in configs
    }
    print(
        "Estimate, not a measurement (schedule-max passes at full settings x the seconds above; no "
        "operator, optimiser or sampling overhead): "
        + ", ".join(f"{n} {s:.0f} s ({s / 3600:.1f} h)" for n, s in estimates.items())
        + f" per {size}x{size} image on this CPU"
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=("all", "passes", "cpu"),
        default="all",
        help="run one part only (default all); the GPU table is benchmarks/gpu_cost.py",
    )
    add_common_arguments(
        parser,
        "smoke check: narrow networks of the same layout, 32x32, 4 steps, solves capped at 2 "
        "iterations, 2 steps in the CPU part; seconds",
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
    args = parser.parse_args()
    configs = preset_configs(parser, args)
    count_size, cpu_size, cpu_steps = args.count_size, args.cpu_size, args.cpu_steps
    # The VQ autoencoder halves the image twice and the UNet the latent three times.
    multiple = 2 ** (len(VQVAE_CONFIG["block_out_channels"]) - 1) * 2 ** (
        len(UNET_CONFIG["block_out_channels"]) - 1
    )
    for flag, size in (("--count-size", count_size), ("--cpu-size", cpu_size)):
        if size <= 0 or size % multiple:
            parser.error(f"{flag} must be a positive multiple of {multiple}, got {size}")
    if args.quick:
        count_size = cpu_size = 32
        cpu_steps = 2
    prior = build_prior(torch.device("cpu"), tiny=args.quick)
    rows: list[dict] = []
    if args.part in ("all", "passes"):
        rows += passes_part(prior, configs, count_size, args.quick)
    if args.part in ("all", "cpu"):
        rows += cpu_part(prior, configs, cpu_size, cpu_steps, args.quick)
    write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
