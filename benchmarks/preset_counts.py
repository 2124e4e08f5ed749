"""Network passes and wall time of the `paper` and `fast` presets, side by side in one
run, on a tiny random prior (no download): the counts are exact and depend only on the
schedule and on when each solve stops; the wall-time ratio is what this machine gives.

    python benchmarks/preset_counts.py [--size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_prior import make_tiny_prior  # noqa: E402

from resample_cli.operators import GaussianBlur  # noqa: E402
from resample_cli.priors import load_prior  # noqa: E402
from resample_cli.solvers.resample import ReSampleConfig, resample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (multiple of 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sigma = 0.01
    with tempfile.TemporaryDirectory() as folder:
        prior = load_prior(str(make_tiny_prior(Path(folder), autoencoder="kl")))
        g = torch.Generator().manual_seed(0)
        op = GaussianBlur(1.5, kernel_size=9)
        shape = (1, 3, args.size, args.size)
        y = op(torch.rand(shape, generator=g)) + sigma * torch.randn(shape, generator=g)
        rows = {}
        for name in ("paper", "fast"):
            start = time.perf_counter()
            result = resample(
                y,
                op,
                prior,
                ReSampleConfig.preset(name),
                sigma_y=sigma,
                generator=torch.Generator().manual_seed(1),
            )
            rows[name] = (
                result.trace.counts,
                time.perf_counter() - start,
                result.trace.final_residual[0] / sigma,
            )

    def passes(c) -> int:
        return c["unet_forward"] + c["unet_backward"] + c["decoder_forward"] + c["decoder_backward"]

    print(
        "| preset | UNet fwd/bwd | decoder fwd/bwd | encoder | operator calls | UNet+decoder | wall s | residual/sigma |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (c, seconds, ratio) in rows.items():
        print(
            f"| {name} | {c['unet_forward']}/{c['unet_backward']} | {c['decoder_forward']}/{c['decoder_backward']} "
            f"| {c['encoder_forward']} | {c['operator_calls']} | {passes(c)} | {seconds:.1f} | {ratio:.2f} |"
        )
    (p, tp, _), (f, tf, _) = rows["paper"], rows["fast"]
    print(f"\nfast / paper: network passes {passes(f) / passes(p):.4f}, wall time {tf / tp:.4f}")


if __name__ == "__main__":
    main()
