"""Tuning ReSample presets on held-out CT phantoms: candidates side by side.

Each candidate is a preset with fields overridden, written PRESET+FIELD=VALUE+... (a
leading FIELD=VALUE means `fast`): e.g. ``lean+gamma=4``. They run on ``--phantoms`` ellipse
phantoms drawn with seed 7 (5 of them are the ones on which `shipped_priors.py` tunes the
TV weight): not the benchmark's test images (seed 2026, Shepp-Logan). Same measurements
as there: 25 angles, noise std 1 % of each sinogram's maximum, prior ``ct-ellipses``, one
sample through ``pipeline.restore`` (image i: noise and sampler seed i, so candidates pair
image by image). Printed: mean PSNR, its paired difference to the first candidate with
its standard error, SSIM, residual / (sigma_y sqrt(m)), UNet and decoder passes per image
(from the trace), the most decoder backward passes of any image, and seconds per image.

    python benchmarks/tune_fast.py [--only CANDIDATE,...] [--phantoms 5] [--per-image]
                                   [--model ct-ellipses] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from shipped_priors import candidate, measure

from resample_cli.bench import COUNTS
from resample_cli.metrics import psnr, ssim
from resample_cli.operators import ParallelBeamCT
from resample_cli.pipeline import restore
from resample_cli.priors import load_prior
from resample_cli.training.data import ellipse_phantoms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ct-ellipses")
    parser.add_argument(
        "--only",
        default="fast",
        help="comma-separated candidates: PRESET+FIELD=VALUE+... (e.g. lean+gamma=4), or FIELD=VALUE+... on fast",
    )
    parser.add_argument("--phantoms", type=int, default=5, help="held-out phantoms (seed 7); 5 in the tables")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--per-image", action="store_true", help="also print each image's PSNR")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",")
    try:
        configs = {name: candidate(name) for name in names}
    except ValueError as error:
        parser.error(str(error))
    tuning = ellipse_phantoms(args.phantoms, 128, torch.Generator().manual_seed(7))
    operator = ParallelBeamCT(25, 128)
    prior = load_prior(args.model)
    cases = [
        (tuning[i : i + 1], *measure(operator, tuning[i : i + 1], None, seed=i)) for i in range(len(tuning))
    ]
    print(f"tuning on {len(cases)} held-out phantoms (seed 7), prior {args.model}\n")
    print(
        f"| candidate | PSNR (dB) | Δ vs {names[0]} (paired, ± SE) | SSIM | resid/σ "
        "| UNet+decoder passes | decoder bwd | s/image |"
    )
    print("|---|---|---|---|---|---|---|---|")
    baseline: list[float] = []
    for name in names:
        config = configs[name]
        scores, similarity, ratios, passes, backward, seconds = [], [], [], [], [], []
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
            backward.append(result.trace.counts["decoder_backward"])
        baseline = baseline or scores
        delta = [s - b for s, b in zip(scores, baseline, strict=True)]
        paired = f"{statistics.mean(delta):+.2f} ± {statistics.stdev(delta) / len(delta) ** 0.5:.2f}"
        print(
            f"| {name} | {statistics.mean(scores):.2f} ± {statistics.stdev(scores):.2f} | {paired} "
            f"| {statistics.mean(similarity):.3f} | {statistics.mean(ratios):.2f} "
            f"| {statistics.mean(passes):.0f} | {max(backward)} | {statistics.mean(seconds):.1f} |",
            flush=True,
        )
        if args.per_image:
            print(f"  {name} per image: {', '.join(f'{score:.2f}' for score in scores)}", flush=True)


if __name__ == "__main__":
    main()
