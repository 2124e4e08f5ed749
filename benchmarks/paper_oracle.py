"""Is ``ReSampleConfig.preset("paper")`` the authors' code? A side-by-side on a closed form.

Runs our ``paper`` preset and ``tests/authors_port.py`` (an independent port of the authors'
``resample_sampling``, soominkwon/resample at 3e332b2, in their [-1, 1] units, quirks
included) on the exact-posterior toy of ``benchmarks/exact_posterior.py``: the same
3-component Gaussian-mixture prior on a 1x4x4 latent, random linear decoder and 3x3
(separable [1/4, 1/2, 1/4]) blur, built from the same seed, at sigma = 0.02. The noise
draw of y is made right after the blur matrix (exact_posterior.py draws it later, after
the mask task's solvers have used the generator), so y is not the y of its table.

Rows:
  exact            independent exact posterior draws (the Monte Carlo floor);
  ours: paper      resample_cli's ``paper`` preset (should match ``authors`` up to float
                   rounding; tests/test_paper_oracle.py checks it);
  authors          the port, every quirk as published;
  authors, every field switched   the port with every quirk switched to the alternative
                   its ReSampleConfig field offers: what ``paper`` did before it was made
                   faithful;
  authors, F=V     the authors' code with the one ReSampleConfig field F set to V (the
                   measured effect of that field; ``authors_port.py`` describes each);
                   ``units:*`` rows switch one of the three effects of ``units=unit`` alone,
                   in [-1, 1] terms;
  authors, batch   the published code run on the whole batch at once (one norm and one loss
                   over all samples, all stop together), not one image at a time: the one
                   difference every preset keeps;
  earlier paper, X (--leave-one-out) every field switched except X, which is the authors'.

Every solver row uses the same seeded draws (start latent and resampling noise), so rows
differ only by their algorithm. mean err: ||mean of the samples - exact posterior mean||;
SWD: sliced Wasserstein-1 distance to as many exact draws over --directions directions
(exact_posterior.py's metrics), both in [0, 1] image units, each +- a bootstrap standard
error (--bootstrap resamples of the samples and the exact draws); cov90 as in
exact_posterior.py; resid/σ: RMS residual of the final, unclamped image over sigma; s: wall time;
UNet f/b, decoder f/b: network passes per image; iters: mean AdamW iterations per image
per data-consistency solve (pixel and latent; not the final solve).

    python benchmarks/paper_oracle.py --quick     # 100 steps, 32 samples (about 4 min)
    python benchmarks/paper_oracle.py             # 500 steps (the paper's), 64 samples (about 17 min)
    python benchmarks/paper_oracle.py --leave-one-out --only "earlier paper, "   # the 7 leave-one-out rows

(times on one thread of a shared 2-core CPU; --leave-one-out adds 7 rows.)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from authors_port import CONFIG_FIELDS, QUIRKS, PortConfig, authors_resample  # noqa: E402
from exact_posterior import (  # noqa: E402
    EXACT_REFERENCE_DRAWS,
    SHAPE,
    SIDE,
    D,
    coverage,
    make_prior,
    measurement_matrices,
    sliced_w1,
    to_image,
)

from resample_cli.operators.matrix import MatrixOperator  # noqa: E402
from resample_cli.solvers.resample import ReSampleConfig, resample  # noqa: E402

TASK = "blur (3x3 Toeplitz)"
# The three effects of working on [0, 1] instead of [-1, 1], each alone, in the port's
# [-1, 1] terms: with units=unit the DPS step is 0.25 a_t on the [-1, 1] norm, the pixel lr 2e-2 on
# [-1, 1] pixels (apart from where weight decay pulls), the threshold 4e-6 there.
UNIT_PARTS = {
    "units: DPS step 0.25·ᾱ": {"dps_scale": 0.25},
    "units: pixel lr 2e-2": {"pixel_lr": 2e-2},
    "units: stop MSE 4e-6": {"stop_mse": 4e-6},
}


def port_rows(steps: int, leave_one_out: bool) -> list[tuple[str, PortConfig]]:
    base = PortConfig(steps=steps)
    rows = [
        ("authors", base),
        ("authors, every field switched (the earlier paper)", base.ours()),
    ]
    rows += [(f"authors, {_field_label(name)}", replace(base, **QUIRKS[name])) for name in QUIRKS]
    rows += [(f"authors, {name}", replace(base, **change)) for name, change in UNIT_PARTS.items()]
    rows.append(("authors, batch of all samples", replace(base, batch_norms=True)))
    if leave_one_out:
        for name, change in QUIRKS.items():
            back = {k: getattr(base, k) for k in change}
            rows.append((f"earlier paper, {name}→authors", replace(base.ours(), **back)))
    return rows


def _field_label(quirk: str) -> str:
    """The ReSampleConfig setting a port switch stands for, e.g. ``start_z0=tweedie``."""
    return ", ".join(f"{k}={v}" for k, v in CONFIG_FIELDS[quirk].items())


def bootstrap(samples, reference, exact_mean, directions, count, g) -> tuple[float, float, float, float]:
    """(mean err, its SE, SWD, its SE); SEs from ``count`` bootstrap resamples."""
    n = samples.shape[0]
    err = float((samples.mean(0) - exact_mean).norm())
    swd = sliced_w1(samples, reference, directions)
    errs, swds = [], []
    for _ in range(count):
        i = torch.randint(n, (n,), generator=g)
        j = torch.randint(reference.shape[0], (reference.shape[0],), generator=g)
        errs.append(float((samples[i].mean(0) - exact_mean).norm()))
        swds.append(sliced_w1(samples[i], reference[j], directions))
    return err, torch.tensor(errs).std().item(), swd, torch.tensor(swds).std().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100 steps and 32 samples (unless given)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 500; --quick 100)")
    parser.add_argument("--samples", type=int, default=None, help="samples per row (default 64; --quick 32)")
    parser.add_argument("--noise", type=float, default=0.02, help="noise std of y, [0, 1] units")
    parser.add_argument("--leave-one-out", action="store_true", help="add the every-field-but-one rows")
    parser.add_argument("--only", default=None, help="run only rows whose label contains this")
    parser.add_argument("--directions", type=int, default=256)
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the SEs")
    parser.add_argument("--seed", type=int, default=0, help="the problem's seed (exact_posterior.py's)")
    parser.add_argument("--draw-seed", type=int, default=1, help="seed of every solver's draws")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    steps = args.steps or (100 if args.quick else 500)
    n = args.samples or (32 if args.quick else 64)
    sigma = args.noise
    torch.set_num_threads(args.threads)

    # The problem, drawn in exact_posterior.py's order up to the measurement matrices.
    g = torch.Generator().manual_seed(args.seed)
    prior = make_prior(3, "random", g)
    directions = torch.randn(args.directions, D, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    k = int(torch.multinomial(prior.weights, 1, generator=g))
    z_true = prior.means[k] + torch.linalg.cholesky(prior.covs[k]) @ torch.randn(
        D, generator=g, dtype=torch.float64
    )
    a = measurement_matrices(g)[TASK]
    op = MatrixOperator(a.float(), SHAPE)
    measure = a @ prior.decoder / 2
    offset = a @ torch.full((D,), 0.5, dtype=torch.float64)
    y = measure @ z_true + offset + sigma * torch.randn(a.shape[0], generator=g, dtype=torch.float64)
    w, mu, _ = prior.posterior(measure, offset, y, sigma)
    exact_mean = to_image(prior, (w[:, None] * mu).sum(0, keepdim=True))[0]
    reference = to_image(prior, prior.sample_posterior(measure, offset, y, sigma, n, g))
    many = to_image(prior, prior.sample_posterior(measure, offset, y, sigma, EXACT_REFERENCE_DRAWS, g))
    ys = y.float().expand(n, -1).clone()
    kw = dict(image_size=(SIDE, SIDE))

    print(
        f"paper vs the authors' loop: {TASK}, σ = {sigma:g}, {n} samples, {steps} DDIM steps"
        + (" (reduced from the paper's 500)" if steps != 500 else "")
        + f", seed {args.seed}, draw seed {args.draw_seed}, {args.threads} CPU thread(s).\n"
    )
    print("| row | mean err | SWD | cov90 | resid/σ | s | UNet f/b | decoder f/b | iters |")
    print("|---|---|---|---|---|---|---|---|---|")
    bg = torch.Generator().manual_seed(12345)

    def report(label, samples, seconds, counts=None, iters=None):
        resid = float((samples @ a.T - y).pow(2).mean(1).sqrt().mean()) / sigma
        err, err_se, swd, swd_se = bootstrap(samples, reference, exact_mean, directions, args.bootstrap, bg)
        cov = coverage(samples, many)
        passes = "– | –"
        if counts is not None:
            passes = (
                f"{counts['unet_forward'] / n:.0f}/{counts['unet_backward'] / n:.0f} | "
                f"{counts['decoder_forward'] / n:.0f}/{counts['decoder_backward'] / n:.0f}"
            )
        it = "–" if iters is None else f"{sum(map(sum, iters)) / (n * len(iters)):.0f}"
        print(
            f"| {label} | {err:.4f} ± {err_se:.4f} | {swd:.4f} ± {swd_se:.4f} | {cov:.3f} | "
            f"{resid:.2f} | {seconds:.1f} | {passes} | {it} |",
            flush=True,
        )

    def wanted(label: str) -> bool:
        return args.only is None or args.only in label

    if wanted("exact"):
        floor = to_image(prior, prior.sample_posterior(measure, offset, y, sigma, n, g))
        report("exact", floor, 0.0)
    if wanted("ours: paper"):
        start = time.perf_counter()
        res = resample(
            ys,
            op,
            prior,
            ReSampleConfig.preset("paper", steps=steps),
            sigma_y=sigma,
            generator=torch.Generator().manual_seed(args.draw_seed),
            **kw,
        )
        seconds = time.perf_counter() - start
        report("ours: paper", to_image(prior, res.z), seconds, res.trace.counts, res.trace.dc_iterations)
    for label, cfg in port_rows(steps, args.leave_one_out):
        if not wanted(label):
            continue
        start = time.perf_counter()
        out = authors_resample(ys, op, prior, cfg, draw=torch.Generator().manual_seed(args.draw_seed), **kw)
        seconds = time.perf_counter() - start
        report(label, to_image(prior, out.z), seconds, out.counts, out.iterations)
    print(
        "\nmean err and SWD in [0, 1] image units, ± a bootstrap standard error of the row alone; "
        "rows share their draws, so differences between rows are less noisy than the SEs suggest. "
        "resid/σ: mean over samples of ||y - A x|| / (σ sqrt(m)) of the unclamped final image. "
        "Passes per image; iters: mean AdamW iterations per image per data-consistency solve."
    )


if __name__ == "__main__":
    main()
