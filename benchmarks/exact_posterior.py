"""Do the solvers sample the posterior they claim? A benchmark against a closed form.

The prior is a Gaussian mixture on a 16-dimensional latent (1 x 4 x 4) with its exact
noise prediction, and the decoder a fixed linear map D (a random well-conditioned matrix,
or the identity), so that the image x = (D z + 1) / 2 is linear in z and y = A x + n
has a Gaussian-mixture posterior (docs/design.md, "The exact-posterior benchmark, in
formulas"). For masking, blur-like and CT-like A on the 4 x 4 image, and each noise
level, every solver draws --samples restorations of one measurement in one batch, which
are compared in image space with exact posterior draws:

  SWD       sliced Wasserstein-1 distance, mean over --directions random unit directions
            of the W1 distance between the 1-D projections of the two sample sets;
  mean err  || mean of the solver's samples - exact posterior mean ||;
  cov90     for each pixel the central 90 % interval of the solver's samples; the fraction
            of (4000) exact draws inside it, averaged over pixels (0.9 is ideal);
  resid/σ   RMS residual ||y - A x|| / sqrt(m) of the solver's output over the noise std.

The "exact" row compares a second, independent set of exact draws of the same size: the
floor that Monte Carlo error alone gives. The solvers see z, not the [0, 1]-clamped image.

    python benchmarks/exact_posterior.py                      # full settings
    python benchmarks/exact_posterior.py --samples 200 --paper-steps 100 --dps-steps 200
"""

from __future__ import annotations

import argparse
import time

import torch
from shipped_priors import candidate

from resample_cli.operators import ParallelBeamCT
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.priors.gaussian import GaussianMixturePrior
from resample_cli.solvers import solver_config, solver_named

SIDE = 4
D = SIDE * SIDE
SHAPE = (1, SIDE, SIDE)
SOLVERS = ("resample:fast", "resample:paper", "latent-dps:paper", "psld:paper", "diffpir:paper")
EXACT_REFERENCE_DRAWS = 4000


def make_prior(components: int, decoder: str, g: torch.Generator) -> GaussianMixturePrior:
    a = torch.randn(components, D, D, generator=g, dtype=torch.float64)
    covs = 0.03 * (a @ a.transpose(1, 2) / D) + 0.005 * torch.eye(D, dtype=torch.float64)
    means = 0.4 * torch.randn(components, D, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    dec = None
    if decoder == "random":  # orthogonal x diag(0.7 .. 1.3) x orthogonal: condition number < 2
        q1 = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64)).Q
        q2 = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64)).Q
        dec = q1 @ torch.diag(torch.linspace(0.7, 1.3, D, dtype=torch.float64)) @ q2.T
    return GaussianMixturePrior(weights, means, covs, SHAPE, decoder=dec)


def measurement_matrices(g: torch.Generator) -> dict[str, torch.Tensor]:
    """The forward models on the flattened 4 x 4 image, as dense matrices."""
    mask = torch.eye(D, dtype=torch.float64)[torch.randperm(D, generator=g)[: D // 2].sort().values]
    # Separable [1/4, 1/2, 1/4] smoothing with zero boundary: a banded Toeplitz matrix per axis.
    off = torch.full((SIDE - 1,), 0.25, dtype=torch.float64)
    t = 0.5 * torch.eye(SIDE, dtype=torch.float64) + torch.diag(off, 1) + torch.diag(off, -1)
    blur = torch.kron(t, t)
    # Three-angle parallel-beam CT, per unit ray length (the mean along each ray).
    ct = ParallelBeamCT(3, SIDE)
    basis = torch.eye(D).reshape(D, *SHAPE)
    ct_matrix = ct(basis).reshape(D, -1).T.to(torch.float64) / SIDE
    return {
        "mask (8 of 16 px)": mask,
        "blur (3x3 Toeplitz)": blur,
        f"CT ({ct_matrix.shape[0]} rays)": ct_matrix,
    }


def to_image(prior: GaussianMixturePrior, z: torch.Tensor) -> torch.Tensor:
    return (z.flatten(1).to(torch.float64) @ prior.decoder.T + 1) / 2


def sliced_w1(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over directions of W1 between the projections (equal sample counts)."""
    pa = (a @ directions.T).sort(0).values
    pb = (b @ directions.T).sort(0).values
    return float((pa - pb).abs().mean())


def coverage(samples: torch.Tensor, reference: torch.Tensor, level: float = 0.9) -> float:
    lo = torch.quantile(samples, (1 - level) / 2, dim=0)
    hi = torch.quantile(samples, (1 + level) / 2, dim=0)
    return float(((reference >= lo) & (reference <= hi)).double().mean())


def is_candidate(name: str, preset: str) -> bool:
    """Whether ``NAME:PRESET`` names a ReSample candidate (PRESET+FIELD=VALUE+...)."""
    return name == "resample" and "+" in preset


def run_solver(label, y, op, prior, sigma, args, g) -> tuple[torch.Tensor, str, float, float]:
    """(latent samples, settings, seconds, mean final residual) of ``NAME:PRESET``."""
    name, _, preset = label.partition(":")
    preset = preset or "fast"
    solve, config_class = solver_named(name)
    overrides = {}
    if name == "resample" and preset == "paper" and args.paper_steps:
        overrides["steps"] = args.paper_steps
    if name in ("latent-dps", "psld"):
        if args.dps_steps:
            overrides["steps"] = args.dps_steps
        if args.zeta is not None:
            overrides["zeta"] = args.zeta
    cfg = candidate(preset) if is_candidate(name, preset) else config_class.preset(preset, **overrides)
    ran = cfg.resolved(op).to_dict()
    settings = f"{ran['steps']} steps" + "".join(
        f", {key} {ran[key]:g}" for key in ("zeta", "gamma", "lam") if ran.get(key) is not None
    )
    start = time.perf_counter()
    result = solve(y, op, prior, cfg, sigma_y=sigma, image_size=(SIDE, SIDE), generator=g)
    seconds = time.perf_counter() - start
    return result.z, settings, seconds, sum(result.trace.final_residual) / len(result.trace.final_residual)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=500, help="draws per solver and task (default 500)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.1], help="noise stds of y")
    parser.add_argument("--components", type=int, default=3, help="mixture components")
    parser.add_argument("--decoder", choices=["random", "identity"], default="random")
    parser.add_argument(
        "--solvers",
        default=",".join(SOLVERS),
        help=f"comma-separated NAME:PRESET (default {','.join(SOLVERS)}); ReSample also takes "
        "candidates as in tune_fast.py, e.g. resample:lean+pixel_fraction=0.75",
    )
    parser.add_argument("--paper-steps", type=int, default=None, help="ReSample paper steps (default 500)")
    parser.add_argument("--dps-steps", type=int, default=None, help="Latent-DPS/PSLD steps (default: preset)")
    parser.add_argument("--zeta", type=float, default=None, help="Latent-DPS/PSLD step (default: preset)")
    parser.add_argument("--directions", type=int, default=256, help="slicing directions for the SWD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    for label in solvers:  # NAME:PRESET of any registered solver and preset
        name, _, preset = label.partition(":")
        try:
            candidate(preset) if is_candidate(name, preset) else solver_config(name, preset or "fast")
        except ValueError as err:
            parser.error(f"{label}: {err}")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)  # the problems and the exact draws
    # The solvers' draws come from their own generator, so the problems (prior, y, exact
    # draws) do not depend on which solvers run or how many draws each makes.
    solver_g = torch.Generator().manual_seed(args.seed + 1)
    prior = make_prior(args.components, args.decoder, g)
    directions = torch.randn(args.directions, D, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    k = int(torch.multinomial(prior.weights, 1, generator=g))
    z_true = prior.means[k] + torch.linalg.cholesky(prior.covs[k]) @ torch.randn(
        D, generator=g, dtype=torch.float64
    )
    n = args.samples

    print(
        f"Exact-posterior benchmark: d = {D} latent (1x4x4), {args.components}-component mixture, "
        f"{args.decoder} linear decoder, {n} samples per solver, seed {args.seed}, "
        f"{args.threads} CPU thread(s).\n"
    )
    print("| task | σ | solver | settings | SWD | mean err | cov90 | resid/σ | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, a in measurement_matrices(g).items():
        op = MatrixOperator(a.float(), SHAPE)
        measure = a @ prior.decoder / 2  # y = A (D z + 1) / 2 + n = measure z + offset + n
        offset = a @ torch.full((D,), 0.5, dtype=torch.float64)
        for sigma in args.noise:
            y = measure @ z_true + offset + sigma * torch.randn(a.shape[0], generator=g, dtype=torch.float64)
            w, mu, _ = prior.posterior(measure, offset, y, sigma)
            exact_mean = to_image(prior, (w[:, None] * mu).sum(0, keepdim=True))[0]
            reference = to_image(prior, prior.sample_posterior(measure, offset, y, sigma, n, g))
            many = to_image(
                prior, prior.sample_posterior(measure, offset, y, sigma, EXACT_REFERENCE_DRAWS, g)
            )

            start = time.perf_counter()
            floor = to_image(prior, prior.sample_posterior(measure, offset, y, sigma, n, g))
            floor_resid = float((floor @ a.T - y).pow(2).mean(1).sqrt().mean()) / sigma
            rows = [("exact", floor, "independent exact draws", time.perf_counter() - start, floor_resid)]
            ys = y.float().expand(n, -1).clone()
            for name in solvers:
                z, label, seconds, resid = run_solver(name, ys, op, prior, sigma, args, solver_g)
                rows.append((name, to_image(prior, z), label, seconds, resid / sigma))
            for name, samples, label, seconds, resid in rows:
                swd = sliced_w1(samples, reference, directions)
                err = float((samples.mean(0) - exact_mean).norm())
                cov = coverage(samples, many)
                print(
                    f"| {task} | {sigma:g} | {name} | {label} | {swd:.4f} | {err:.4f} | {cov:.3f} | "
                    f"{resid:.2f} | {seconds:.2f} |",
                    flush=True,
                )
    print(
        "\nSWD and mean err in image units (pixels in [0, 1]); resid/σ of the solvers is that of "
        "their [0, 1]-clamped output, as the solvers report it (the exact row: unclamped); "
        "s is wall time for all samples."
    )


if __name__ == "__main__":
    main()
