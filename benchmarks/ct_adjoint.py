"""CT back-projection: the cached sparse matrix against the sampler's vector-Jacobian
product, side by side in one process.

For each geometry: the time to build the matrix once, and milliseconds per adjoint call
both ways (median of ``--repeats``). With ``--restore N``, ReSample `lean` and `fast` on N
held-out ellipse phantoms (seed 7, 25 angles, noise 1 % of the sinogram's maximum, prior
``ct-ellipses``, as ``tune_fast.py``) both ways, interleaved image by image: seconds per
image and PSNR (the same to rounding: the two adjoints differ by float rounding only).

    python benchmarks/ct_adjoint.py [--restore 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch
from shipped_priors import measure

from resample_cli.metrics import psnr
from resample_cli.operators import ParallelBeamCT
from resample_cli.operators import ct as ct_module
from resample_cli.pipeline import restore
from resample_cli.priors import load_prior
from resample_cli.solvers.resample import ReSampleConfig
from resample_cli.training.data import ellipse_phantoms

GEOMETRIES = ((128, 25, 1), (128, 25, 8), (256, 32, 1), (256, 32, 8))  # size, angles, batch
WAYS = ("matrix", "sampler")


@contextmanager
def way(name: str):
    """Operators built inside use the cached matrix ("matrix") or never cache it ("sampler")."""
    saved = ct_module._CACHED_ENTRIES
    if name == "sampler":
        ct_module._CACHED_ENTRIES = 0
    try:
        yield
    finally:
        ct_module._CACHED_ENTRIES = saved


def adjoint_ms(op: ParallelBeamCT, y: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        op.adjoint(y)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--restore", type=int, default=0, help="held-out phantoms to restore both ways")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "| size | angles | batch | build matrix (s) | adjoint, matrix (ms) | adjoint, sampler VJP (ms) | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, angles, batch in GEOMETRIES:
        y = torch.rand(batch, 1, angles, size)
        with way("matrix"):
            op = ParallelBeamCT(angles, size)
            start = time.perf_counter()
            op.adjoint(y[:1])
            build = time.perf_counter() - start
            matrix = adjoint_ms(op, y, args.repeats)
        with way("sampler"):
            sampler = adjoint_ms(ParallelBeamCT(angles, size), y, args.repeats)
        print(
            f"| {size} | {angles} | {batch} | {build:.2f} | {matrix:.1f} | {sampler:.1f} | {sampler / matrix:.1f}× |",
            flush=True,
        )
    if not args.restore:
        return
    prior = load_prior("ct-ellipses")
    phantoms = ellipse_phantoms(args.restore, 128, torch.Generator().manual_seed(7))
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for index in range(args.restore):
        x = phantoms[index : index + 1]
        for preset in ("lean", "fast"):
            for name in WAYS:
                with way(name):
                    op = ParallelBeamCT(25, 128)
                    y, sigma = measure(op, x, None, seed=index)
                    start = time.perf_counter()
                    result = restore(
                        y,
                        op,
                        prior,
                        ReSampleConfig.preset(preset),
                        image_shape=(1, 128, 128),
                        sigma_y=sigma,
                        seed=index,
                    )
                    seconds = time.perf_counter() - start
                rows.setdefault((preset, name), []).append((seconds, psnr(result.x[None], x)))
    print(f"\nReSample on {args.restore} held-out phantoms (128x128, 25 angles), interleaved:\n")
    print("| preset | adjoint | s / image | PSNR (dB) |")
    print("|---|---|---|---|")
    for (preset, name), values in rows.items():
        seconds, scores = zip(*values, strict=True)
        print(f"| {preset} | {name} | {statistics.mean(seconds):.1f} | {statistics.mean(scores):.3f} |")


if __name__ == "__main__":
    main()
