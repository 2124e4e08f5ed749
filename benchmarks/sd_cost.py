"""What a Stable Diffusion prior costs on the CPU: peak memory and seconds of one step that
differentiates through the UNet and the VAE decoder, and the network passes of each
solver's `fast` preset, with and without classifier-free guidance.

The networks are the real Stable Diffusion v1.5 and 2.1-base architectures with random
weights (no download), built from the published values of their configs written below:
UNet2DConditionModel with blocks (320, 640, 1280, 1280), two layers a block, cross-attention
in the first three levels; v1.5: 768-wide text embeddings, 8 heads a level; 2.1-base:
1024-wide embeddings, heads (5, 10, 20, 20), linear attention projections. The VAE
(AutoencoderKL f8, blocks (128, 256, 512, 512), 4 latent channels, scaling factor 0.18215)
is the same in both. Text encoders: CLIP ViT-L/14's (12 layers, 768 wide) and OpenCLIP
ViT-H's as SD 2 uses it (23 layers, 1024 wide). Schedule: scaled-linear betas 0.00085 to
0.012 over 1000 steps, epsilon prediction. The tokenizer is a small stand-in written here
(the embedding runs once per run and costs nothing next to the networks).

Parts:
  step     one Latent-DPS step (latent-dps:fast with --steps 1: a UNet forward and backward and a
           decoder forward and backward through one graph, then the final decode): the
           costliest step of any `fast` preset (ReSample's latent iterations hold the decoder's
           graph alone). Each measurement runs in a fresh process: seconds, the resident set
           after the model is built, and the process's peak resident set (ru_maxrss).
  passes   every solver's `fast` preset at full settings on one 64x64 image (the smallest the
           layout takes: 8 x 8 for the VAE and the UNet), guidance 1 and 7.5, on networks of
           the same layout narrowed to 32 channels a block: pass counts depend on the schedule
           and on when solves stop, not on width.

    OMP_NUM_THREADS=1 python benchmarks/sd_cost.py step --sizes 256,512       # the memory table
    OMP_NUM_THREADS=1 python benchmarks/sd_cost.py passes                     # the pass table
    python benchmarks/sd_cost.py measure --arch sd-1.5 --size 256 [--checkpointing]  # one row, JSON
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from resample_cli.operators import GaussianBlur
from resample_cli.priors import PriorInfo
from resample_cli.priors.text import Prompt, TextConditionedPrior
from resample_cli.solvers import solver_config, solver_named

UNET_COMMON: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
ARCHS: dict[str, dict[str, Any]] = {
    "sd-1.5": {
        "unet": {**UNET_COMMON, "cross_attention_dim": 768, "attention_head_dim": 8},
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
    },
    "sd-2.1-base": {
        "unet": {
            **UNET_COMMON,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    },
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
TEXT_COMMON = {"vocab_size": 49408, "max_position_embeddings": 77}
SIGMA_Y = 0.005
SOLVERS = ("resample", "latent-dps", "diffpir")  # psld has the same passes as latent-dps plus the encoder's


def narrow(config: dict[str, Any], width: int) -> dict[str, Any]:
    """The same layout, every block ``width`` channels: for pass counts only."""
    out = {**config, "block_out_channels": [width] * len(config["block_out_channels"]), "norm_num_groups": 8}
    if "attention_head_dim" in out:
        out["attention_head_dim"] = 4
    return out


def write_tokenizer(folder: Path) -> Any:
    """A small CLIP BPE tokenizer (byte-level letters and a few merges) with the real 77-token length."""
    from transformers import CLIPTokenizer

    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    letters, extra = [], 0
    for byte in range(256):  # GPT-2's printable stand-in for each byte
        letters.append(chr(byte) if byte in keep else chr(256 + extra))
        extra += byte not in keep
    vocab = letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_prior(arch: str, width: int | None = None) -> TextConditionedPrior:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    spec = ARCHS[arch]
    unet_config, vae_config = spec["unet"], VAE
    text_config = {**TEXT_COMMON, **spec["text"]}
    if width is not None:
        unet_config, vae_config = narrow(unet_config, width), narrow(VAE, width)
        text_config = {
            **text_config,
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        unet_config["cross_attention_dim"] = width
    unet = UNet2DConditionModel(**unet_config)
    vae = AutoencoderKL(**vae_config)
    text = CLIPTextModel(CLIPTextConfig(**text_config))
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_tokenizer(Path(folder))
    info = PriorInfo(name=f"{arch} (random weights)")
    return TextConditionedPrior(
        unet, vae, DDIMScheduler(**SCHEDULER), text, tokenizer, latent_scale=VAE["scaling_factor"], info=info
    )


def problem(size: int) -> tuple[torch.Tensor, GaussianBlur]:
    """The paper's Gaussian deblurring (kernel 61, std 3) of a random image, sigma_y 0.005."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=generator)
    operator = GaussianBlur(kernel_size=61, sigma=3.0)
    with torch.no_grad():
        y = operator(x) + SIGMA_Y * torch.randn(operator(x).shape, generator=generator)
    return y, operator


def run(name: str, prior, size: int, steps: int | None = None) -> tuple[float, dict]:
    solve, _ = solver_named(name)
    config = solver_config(name, "fast", **({"steps": steps} if steps else {}))
    y, operator = problem(size)
    start = time.perf_counter()
    result = solve(y, operator, prior, config, sigma_y=SIGMA_Y, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start, dict(result.trace.counts)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(arch: str, size: int, checkpointing: bool) -> dict:
    prior = build_prior(arch)
    if checkpointing:
        prior.enable_gradient_checkpointing()
    model_mib = rss_mib()
    networks = {"UNet": prior.unet, "VAE": prior.autoencoder, "text encoder": prior.text_encoder}
    parameters = {
        name: round(sum(p.numel() for p in net.parameters()) / 1e6, 2) for name, net in networks.items()
    }
    seconds, counts = run("latent-dps", prior, size, steps=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "arch": arch,
        "size": size,
        "checkpointing": checkpointing,
        "seconds": round(seconds, 1),
        "model_mib": round(model_mib),
        "peak_mib": round(peak),
        "counts": counts,
        "parameters_m": parameters,
    }


def step_table(archs: list[str], sizes: list[int], checkpointing: list[bool]) -> None:
    print(
        "| model | image | gradient checkpointing | s (1 thread) | RSS with the model (MiB) | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    params: dict[str, dict] = {}
    for arch in archs:
        for size in sizes:
            for on in checkpointing:
                args = [sys.executable, __file__, "measure", "--arch", arch, "--size", str(size)]
                done = subprocess.run(
                    args + (["--checkpointing"] if on else []), capture_output=True, text=True
                )
                if done.returncode != 0:
                    print(f"| {arch} | {size} | {on} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                params.setdefault(arch, row["parameters_m"])
                print(
                    f"| {arch} | {size}x{size} | {'on' if on else 'off'} | {row['seconds']} | "
                    f"{row['model_mib']} | {row['peak_mib']} |",
                    flush=True,
                )
    for arch, counts in params.items():
        print(f"{arch} parameters (millions): {counts}")


def pass_table(archs: list[str]) -> None:
    print(
        "| model | solver:fast | guidance | UNet fwd | UNet bwd | decoder fwd | decoder bwd | encoder fwd |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arch in archs:
        prior = build_prior(arch, width=32)
        for name in SOLVERS:
            for guidance in (1.0, 7.5):
                prior.set_prompt(Prompt("a photo", guidance_scale=guidance))
                _, c = run(name, prior, 64)
                print(
                    f"| {arch} | {name} | {guidance:g} | {c['unet_forward']} | {c['unet_backward']} | "
                    f"{c['decoder_forward']} | {c['decoder_backward']} | {c['encoder_forward']} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=("step", "passes", "measure"))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--checkpointing-modes", default="off,on", help="step: off, on or both")
    parser.add_argument("--arch", choices=tuple(ARCHS), default="sd-1.5")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args()
    if args.part == "measure":
        print(json.dumps(measure(args.arch, args.size, args.checkpointing)))
    elif args.part == "step":
        modes = [mode == "on" for mode in args.checkpointing_modes.split(",")]
        step_table(args.archs.split(","), [int(s) for s in args.sizes.split(",")], modes)
    else:
        pass_table(args.archs.split(","))


if __name__ == "__main__":
    main()
