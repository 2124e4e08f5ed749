"""Seconds per application of the 61x61 Gaussian blur (std 3) on a 3x256x256 image: the
operator's FFT convolution against scipy.ndimage's direct convolution with the same
kernel and the same (mirror) boundary, measured side by side in one process.

    python benchmarks/blur_speed.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy import ndimage

from resample_cli.operators import GaussianBlur


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm-up: FFT plans, allocations
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    op = GaussianBlur(3.0, 61)
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    kernel = op.kernel.to(torch.float64).numpy()
    image = x[0].numpy()
    rows = {
        "operator forward (FFT)": seconds_per_call(lambda: op(x), args.repeats),
        "operator adjoint (FFT)": seconds_per_call(lambda: op.adjoint(x), args.repeats),
        "scipy.ndimage.convolve": seconds_per_call(
            lambda: [ndimage.convolve(c, kernel, mode="mirror") for c in image], args.repeats
        ),
    }
    print(f"| method | s / call ({args.threads} thread(s), {args.repeats} repeats) |\n|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.4f} |")


if __name__ == "__main__":
    main()
