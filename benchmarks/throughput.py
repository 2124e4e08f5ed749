"""Images per second and peak memory against --batch-size for ReSample's `fast` preset:
what restoring several images per solver call gains.

Two priors, one table:

  tiny       the bundled dead-leaves prior (64x64 RGB, KL autoencoder), on the CPU (and on
             CUDA too when present).
  celebahq   the real CompVis/ldm-celebahq-256 architecture with random weights (built by
             benchmarks/cost.py's ``build_prior``: no download), 256x256, on CUDA only
             (on a CPU one image takes minutes); narrowed to 32 channels under --quick.

The work is the CLI's: ``pipeline.restore_batch`` over N random images of the paper's
Gaussian deblurring (std 3, sigma_y = 0.005), one generator per image
(``pipeline.sample_generators``), in solver calls of B images, for B = 1, 2, 4, ...;
images/s = N / wall seconds (after one warm-up call). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` of each run; on the CPU the process's maximum resident
set size after the run (it only grows, so it is the largest batch's so far).

    python benchmarks/throughput.py                  # CPU: tiny prior; CUDA: both priors
    python benchmarks/throughput.py --quick          # smoke check, seconds
    python benchmarks/throughput.py --budget 1200 --batch-sizes 1,2,4,8,16 --steps 50 --images 16

--budget bounds the whole run: once it is spent no further batch size starts (the one in
hand finishes), and the table says which were left out.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from resample_cli.operators import GaussianBlur
from resample_cli.pipeline import Problem, restore_batch, sample_generators
from resample_cli.priors import load_prior
from resample_cli.priors.base import LatentPrior
from resample_cli.solvers.resample import ReSampleConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost import SIGMA_Y, build_prior, synchronize  # noqa: E402


@dataclass
class Row:
    prior: str
    device: str
    size: int
    batch: int
    images: int
    seconds: float
    peak_mb: float | None
    peak_kind: str


def problems(prior: LatentPrior, size: int, count: int) -> tuple[list[Problem], GaussianBlur]:
    """``count`` blurred, noisy random images and the blur, each image with its generator."""
    g = torch.Generator().manual_seed(0)
    blur = GaussianBlur(3.0, kernel_size=min(61, size - 1 if size % 2 == 0 else size))
    found = []
    for i in range(count):
        x = torch.rand(1, prior.image_channels, size, size, generator=g)
        y = blur(x) + SIGMA_Y * torch.randn(x.shape, generator=g)
        found.append(Problem(y, sample_generators(0, f"{i}.png", 1)))
    return found, blur


def measure(label: str, prior: LatentPrior, size: int, batch: int, count: int, config: ReSampleConfig) -> Row:
    """One timed restoration of ``count`` images in calls of ``batch``."""
    device = prior.device
    work, blur = problems(prior, size, count)
    run = dict(image_shape=(prior.image_channels, size, size), sigma_y=SIGMA_Y, batch_size=batch)
    restore_batch(work[:batch], blur, prior, config, **run)  # warm-up: kernels, caches, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    restore_batch(work, blur, prior, config, **run)
    synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    else:  # ru_maxrss is in kilobytes on Linux
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"
    return Row(label, str(device), size, batch, count, seconds, peak, kind)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated B values, ascending")
    parser.add_argument("--images", type=int, default=8, help="images per run (at least B)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the fast preset (its own: 50)")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 3 steps, 2 images, B = 1, 2; not a measurement"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 2] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    steps = 3 if args.quick else args.steps
    images = 2 if args.quick else args.images
    config = ReSampleConfig.preset("fast", steps=steps)
    deadline = time.monotonic() + args.budget

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    priors = [("tiny (dead-leaves 64x64)", lambda d: load_prior("dead-leaves", device=d), 64, devices)]
    if torch.cuda.is_available():
        size = 32 if args.quick else 256
        celebahq = f"celebahq architecture {size}x{size}" + (" narrowed" if args.quick else "")
        priors.append((celebahq, lambda d: build_prior(d, tiny=args.quick), size, devices[1:]))
    rows, skipped = [], []
    for label, load, size, on in priors:
        for device in on:
            prior = load(device)
            for batch in batches:
                if time.monotonic() > deadline:
                    skipped.append(f"{label} on {device} B={batch}")
                    continue
                rows.append(measure(label, prior, size, batch, max(batch, images), config))
            del prior
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_table(rows, steps, args)
    if skipped:
        print(f"left out (--budget {args.budget:g} s spent): {'; '.join(skipped)}")
    if not torch.cuda.is_available():
        print("celebahq architecture: n/a (no CUDA here; on a CPU one image takes minutes)")


def print_table(rows: list[Row], steps: int, args: argparse.Namespace) -> None:
    print(
        f"\nReSample `fast` with {steps} steps, Gaussian deblurring, torch {torch.__version__}, "
        f"{args.threads} CPU thread(s)" + (" [--quick: not a measurement]" if args.quick else "")
    )
    print("| prior | device | B | images | seconds | images/s | speed-up vs B=1 | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    first: dict[tuple[str, str], float] = {}
    for row in rows:
        rate = row.images / row.seconds
        base = first.setdefault((row.prior, row.device), rate)
        peak = "n/a" if row.peak_mb is None else f"{row.peak_mb:.0f} ({row.peak_kind})"
        print(
            f"| {row.prior} | {row.device} | {row.batch} | {row.images} | {row.seconds:.1f} | {rate:.3f} "
            f"| {rate / base:.2f} | {peak} |"
        )


if __name__ == "__main__":
    main()
