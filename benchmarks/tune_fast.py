"""Tuning the `fast` preset on held-out CT phantoms: one setting changed at a time.

Each candidate is the `fast` preset with one field overridden. They run on the 5 ellipse
phantoms (seed 7) on which `shipped_priors.py` also tunes the TV weight: not the
benchmark's test images (seed 2026, Shepp-Logan). Same measurements as there: 25 angles,
noise std 1 % of each sinogram's maximum, prior ``ct-ellipses``, one sample through
``pipeline.restore``. Printed: mean PSNR and SSIM, residual / (sigma_y sqrt(m)), UNet and
decoder passes per image (from the trace) and seconds per image.

    python benchmarks/tune_fast.py [--model ct-ellipses] [--only NAME,...] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from shipped_priors import ct_cases, measure

from resample_cli.bench import COUNTS
from resample_cli.metrics import psnr, ssim
from resample_cli.operators import ParallelBeamCT
from resample_cli.pipeline import restore
from resample_cli.priors import load_prior
from resample_cli.solvers.resample import ReSampleConfig

CANDIDATES: dict[str, dict] = {
    "fast": {},
    "steps=100": {"steps": 100},
    "steps=25": {"steps": 25},
    "dc_every=1": {"dc_every": 1},
    "pixel_fraction=0.5": {"pixel_fraction": 0.5},
    "gamma=10": {"gamma": 10.0},
    "gamma=160": {"gamma": 160.0},
    "latent_iters=200": {"latent_iters": 200},
    "tau=0.9": {"tau": 0.9},
    # Issue 20's budget (at most 30 decoder backward passes): every data-consistency step in
    # pixel space, the final latent solve capped at 30 iterations, or none at all.
    "pixel_fraction=1+latent_iters=30": {"pixel_fraction": 1.0, "latent_iters": 30},
    "pixel_fraction=1+no_final_latent": {"pixel_fraction": 1.0, "final_consistency": False},
    "pixel_fraction=1+latent_iters=30+latent_lr=3e-2": {
        "pixel_fraction": 1.0,
        "latent_iters": 30,
        "latent_lr": 3e-2,
    },
    "pixel_fraction=1+latent_iters=30+dc_every=1": {"pixel_fraction": 1.0, "latent_iters": 30, "dc_every": 1},
    "pixel_fraction=1+latent_iters=30+latent_lr=3e-2+dc_every=1": {
        "pixel_fraction": 1.0,
        "latent_iters": 30,
        "latent_lr": 3e-2,
        "dc_every": 1,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ct-ellipses")
    parser.add_argument("--only", default=None, help="comma-separated candidate names")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown candidates {sorted(unknown)}; choose from {', '.join(CANDIDATES)}")
    _, tuning = ct_cases(0)
    operator = ParallelBeamCT(25, 128)
    prior = load_prior(args.model)
    cases = [
        (tuning[i : i + 1], *measure(operator, tuning[i : i + 1], None, seed=i)) for i in range(len(tuning))
    ]
    print(f"tuning `fast` on {len(cases)} held-out phantoms (seed 7), prior {args.model}\n")
    print("| candidate | PSNR (dB) | SSIM | resid/σ | UNet+decoder passes | s/image |")
    print("|---|---|---|---|---|---|")
    for name in names:
        config = ReSampleConfig.preset("fast", **CANDIDATES[name])
        scores, similarity, ratios, passes, seconds = [], [], [], [], []
        for index, (x, y, sigma) in enumerate(cases):
            start = time.perf_counter()
            result = restore(
                y, operator, prior, config, image_shape=tuple(x.shape[1:]), sigma_y=sigma, seed=index
            )
            seconds.append(time.perf_counter() - start)
            scores.append(psnr(result.x[None], x))
            similarity.append(ssim(result.x[None], x))
            ratios.append(result.residual["ratio"])
            passes.append(sum(result.trace.counts[k] for k in COUNTS))
        print(
            f"| {name} | {statistics.mean(scores):.2f} ± {statistics.stdev(scores):.2f} "
            f"| {statistics.mean(similarity):.3f} | {statistics.mean(ratios):.2f} "
            f"| {statistics.mean(passes):.0f} | {statistics.mean(seconds):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
