"""How well do the shipped priors restore? ReSample against classical reconstructions.

CT (prior ``ct-ellipses``): 20 held-out random ellipse phantoms (seed 2026; training
draws from its own seeded stream) and scikit-image's Shepp-Logan phantom resized to
128 x 128 (the shipped examples/shepp-logan.png); 25 angles over [0, 180); Gaussian noise of std 1 % of each sinogram's
maximum. Baselines: filtered back-projection (ramp filter) and total-variation
regularised least squares (400 projected Adam steps from the FBP image), its weight
picked from a grid by mean PSNR on 5 further phantoms (seed 7), not on the test images.

Natural images (prior ``dead-leaves``): 256 x 256 centre crops of scikit-image's
bundled colour photographs. Gaussian deblurring (kernel 61, std 3) and 4x bicubic
super-resolution, both with noise std 0.005. Baselines: Tikhonov (Wiener) deconvolution
and Pillow bicubic upsampling; the Tikhonov weight is picked from a grid by mean PSNR on
the test photographs themselves, which favours the baseline.

Real CT (``--part dicom``, prior ``ct-ellipses``): the CT slices pydicom bundles
(CT_small, J2K_pixelrep_mismatch, 693_J2KI) in HU through the project's HU window,
area-averaged to 128 x 128; measured and reconstructed as the phantoms are, with the TV
weight picked on the same 5 phantoms.

ReSample runs through ``pipeline.restore`` (one sample, seed = image index, plus
``--seed-offset`` to draw other samples), as the command line does, with the final
pixel solve on: each run gives two rows, ``resample:PRESET`` (the decoded image D(z_0),
what the run outputs with ``final_pixel_consistency`` off) and ``resample:PRESET+pixel``
(the discrepancy-principle Tikhonov solution around it). PSNR and SSIM are over the
whole image, data range 1; the residual ratio ||y - A x|| / (sigma_y sqrt(m)) is given
for every method.

    python benchmarks/shipped_priors.py                     # every part, fast preset
    python benchmarks/shipped_priors.py --part ct --presets fast,paper --paper-images 1
    python benchmarks/shipped_priors.py --part ct --presets "" --oracle-steps 300  # the decoder's reach
    python benchmarks/shipped_priors.py --part ct --samples 4      # the mean of 4 posterior samples
    python benchmarks/shipped_priors.py --part ct --seed-offset 100  # other draws of one sample
    python benchmarks/shipped_priors.py --part dicom               # pydicom's real CT slices
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file
from skimage import data as skdata

from resample_cli.cli.options import parse_shard
from resample_cli.fileio.ct import hu_to_unit, read_dicom_hu
from resample_cli.fileio.images import read_image
from resample_cli.metrics import psnr, ssim
from resample_cli.operators import BicubicDownsample, GaussianBlur, ParallelBeamCT
from resample_cli.operators.base import Operator
from resample_cli.pipeline import restore
from resample_cli.priors import LatentPrior, load_prior
from resample_cli.solvers.classical import (
    bicubic_upsample,
    filtered_back_projection,
    regularised_least_squares,
    tv_least_squares,
)
from resample_cli.solvers.resample import PRESETS, ReSampleConfig
from resample_cli.training.data import ellipse_phantoms

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
DICOM_SLICES = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm")  # pydicom's CT test files
TV_WEIGHTS = (0.3, 1.0, 3.0, 10.0)
TIKHONOV_WEIGHTS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def noisy(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return clean + sigma * torch.randn(clean.shape, generator=g)


def shepp_logan() -> torch.Tensor:
    """The shipped example's reference (examples/make_examples.py)."""
    return torch.from_numpy(read_image(EXAMPLES / "shepp-logan.png").data)[None]


def photos() -> dict[str, torch.Tensor]:
    out = {}
    for name in PHOTOS:
        try:
            image = getattr(skdata, name)()
        except Exception as err:  # some are fetched on first use: skip them offline
            print(f"skipping {name}: {err}")
            continue
        h, w = image.shape[:2]
        crop = image[(h - 256) // 2 : (h + 256) // 2, (w - 256) // 2 : (w + 256) // 2, :3]
        out[name] = torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)[None]
    return out


def ct_cases(n: int) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
    test = ellipse_phantoms(n, 128, torch.Generator().manual_seed(2026))
    tuning = ellipse_phantoms(5, 128, torch.Generator().manual_seed(7))
    cases = [("shepp-logan", shepp_logan())] + [(f"ellipses-{i:02d}", test[i : i + 1]) for i in range(n)]
    return cases, tuning


def dicom_cases(size: int = 128) -> list[tuple[str, torch.Tensor]]:
    """pydicom's bundled CT slices through the HU window, area-averaged to ``size``."""
    cases = []
    for name in DICOM_SLICES:
        hu, _ = read_dicom_hu(get_testdata_file(name))
        x = torch.from_numpy(hu_to_unit(hu))[None, None]
        cases.append((name.removesuffix(".dcm"), F.interpolate(x, size=(size, size), mode="area")))
    return cases


def residual_ratio(operator: Operator, y: torch.Tensor, x: torch.Tensor, sigma: float) -> float:
    """||y - A x|| / (sigma sqrt(m)), as the report's residual ratio."""
    with torch.no_grad():
        norm = float((y - operator(x)).norm())
    return norm / (sigma * float(operator.measurement_count(y)[0]) ** 0.5)


def measure(
    operator: Operator, x: torch.Tensor, noise: float | None, seed: int
) -> tuple[torch.Tensor, float]:
    """y = A x + n; ``noise`` None means 1 % of the clean measurement's maximum."""
    with torch.no_grad():
        clean = operator(x)
    sigma = 0.01 * float(clean.max()) if noise is None else noise
    return noisy(clean, sigma, seed), sigma


def pick_weight(weights, run: Callable[[float], float]) -> float:
    scores = {w: run(w) for w in weights}
    best = max(scores, key=scores.get)
    print(
        "  weight grid (mean PSNR): "
        + ", ".join(f"{w:g}: {s:.2f}" for w, s in scores.items())
        + f" -> {best:g}"
    )
    return best


def decoded_references(prior: LatentPrior, x: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """What the prior's decoder can show of the truth ``x`` (oracles: they see ``x``, not ``y``):
    the autoencoder's reconstruction D(E(x)), and D(z) for the latent z fitted to ``x`` by
    ``steps`` Adam steps (lr 0.01) on the squared error, started from E(x). ReSample's output
    is a decoded latent, so the second estimates (from below) the best it could reach."""
    x = x.to(prior.device)
    with torch.no_grad():
        z = prior.encode(x * 2 - 1)
        encoded = (prior.decode(z) + 1) / 2
    z = z.detach().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=0.01)
    for _ in range(steps):
        loss = ((prior.decode(z) + 1) / 2 - x).pow(2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        fitted = (prior.decode(z) + 1) / 2
    return {
        "oracle: D(E(x))": encoded.clamp(0, 1).cpu(),
        f"oracle: D(z) fitted to x, {steps} steps": fitted.clamp(0, 1).cpu(),
    }


# Named candidates of the tables in docs/BENCHMARKS.md; any other "PRESET+FIELD=VALUE+..."
# (or "FIELD=VALUE+...", on `fast`) is parsed by ``candidate`` (here and in tune_fast.py).
CANDIDATES: dict[str, str] = {
    "pixel_fraction=1+no_final_latent": "pixel_fraction=1+final_consistency=false",
}


def candidate(spec: str) -> ReSampleConfig:
    """The config a candidate names: a preset (default `fast`), then fields overridden."""
    base, *fields = CANDIDATES.get(spec, spec).split("+")
    if "=" in base:
        base, fields = "fast", [base, *fields]
    types = {f.name: type(getattr(PRESETS["paper"], f.name)) for f in dataclasses.fields(ReSampleConfig)}
    overrides = {}
    for item in fields:
        name, _, text = item.partition("=")
        if name not in types:
            raise ValueError(f"{spec!r}: no field {name!r}")
        kind = types[name]
        if kind is bool and text.lower() not in ("true", "false"):
            raise ValueError(f"{spec!r}: {name} is true or false, not {text!r}")
        overrides[name] = text.lower() == "true" if kind is bool else kind(text)
    return ReSampleConfig.preset(base, **overrides)


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    """Whether case ``index`` is this process's under ``--shard K/N`` (``shard`` as the CLI's
    ``parse_shard`` gives it, (K - 1, N)): index = K - 1 modulo N, as ``distributed.share``."""
    return index % shard[1] == shard[0]


def run_task(name, cases, operator, noise, prior, baseline, args, rows):
    """Each method on each case; append (task, method, image, psnr, ssim, seconds, resid/sigma) rows.
    ``args`` gives the presets, ``paper_images``, ``oracle_steps``, ``samples``, ``seed_offset``
    and ``shard`` (``in_shard``)."""
    mean_of = f" (mean of {args.samples})" if args.samples > 1 else ""
    for index, (image_name, x) in enumerate(cases):
        if not in_shard(index, args.shard):
            continue
        if args.oracle_steps:
            start = time.perf_counter()
            for label, estimate in decoded_references(prior, x, args.oracle_steps).items():
                rows.append(
                    (
                        name,
                        label,
                        image_name,
                        psnr(estimate, x),
                        ssim(estimate, x),
                        time.perf_counter() - start,
                        None,
                    )
                )
        y, sigma = measure(operator, x, noise, seed=1000 + index)
        start = time.perf_counter()
        estimate = baseline[1](y)
        base_psnr = psnr(estimate, x)
        rows.append(
            (
                name,
                baseline[0],
                image_name,
                base_psnr,
                ssim(estimate, x),
                time.perf_counter() - start,
                residual_ratio(operator, y, estimate, sigma),
            )
        )
        for preset in args.presets:
            if preset == "paper" and index >= args.paper_images:
                continue
            start = time.perf_counter()
            result = restore(
                y,
                operator,
                prior,
                dataclasses.replace(candidate(preset), final_pixel_consistency=True),
                image_shape=tuple(x.shape[1:]),
                sigma_y=sigma,
                seed=index + args.seed_offset,
                samples=args.samples,
            )
            seconds = time.perf_counter() - start
            pixel_seconds = result.trace.timing.get("final_pixel", 0.0)
            outputs = [(f"resample:{preset}+pixel{mean_of}", result.x, seconds, result.residual["ratio"])]
            if result.decoded is not None:
                decoded_ratio = result.residual["decoded_ratio"]
                outputs.insert(
                    0, (f"resample:{preset}{mean_of}", result.decoded, seconds - pixel_seconds, decoded_ratio)
                )
            for method, image, method_seconds, ratio in outputs:
                estimate = image[None]
                rows.append(
                    (name, method, image_name, psnr(estimate, x), ssim(estimate, x), method_seconds, ratio)
                )
                print(
                    f"  {name} {image_name} {method}: {rows[-1][3]:.2f} dB, residual {ratio:.2f} sigma "
                    f"({method_seconds:.0f} s); {baseline[0]} {base_psnr:.2f} dB"
                )


def ct_part(args, rows) -> None:
    cases, _ = ct_cases(args.ct_images)
    run_ct("ct", cases, args, rows)


def dicom_part(args, rows) -> None:
    run_ct("ct dicom", dicom_cases(), args, rows)


def run_ct(name: str, cases: list[tuple[str, torch.Tensor]], args, rows) -> None:
    """FBP, TV-LS (weight picked on the tuning phantoms) and ReSample on ``cases``."""
    _, tuning = ct_cases(0)
    operator = ParallelBeamCT(25, 128)
    prior = load_prior(args.ct_model)
    print(f"{name}: {len(cases)} images, prior {args.ct_model}")
    ys = [measure(operator, tuning[i : i + 1], None, seed=i)[0] for i in range(len(tuning))]
    y_tune = torch.cat(ys)

    def tv(y: torch.Tensor, weight: float) -> torch.Tensor:
        return tv_least_squares(y, operator, weight, filtered_back_projection(y, operator))

    weight = pick_weight(
        TV_WEIGHTS,
        lambda w: statistics.mean(
            psnr(tv(y_tune, w)[i : i + 1], tuning[i : i + 1]) for i in range(len(tuning))
        ),
    )
    for index, (image_name, x) in enumerate(cases):
        if not in_shard(index, args.shard):
            continue
        y, sigma = measure(operator, x, None, seed=1000 + index)
        start = time.perf_counter()
        estimate = filtered_back_projection(y, operator)
        seconds = time.perf_counter() - start
        ratio = residual_ratio(operator, y, estimate, sigma)
        rows.append((name, "fbp", image_name, psnr(estimate, x), ssim(estimate, x), seconds, ratio))
    run_task(
        name,
        cases,
        operator,
        None,
        prior,
        (f"tv-ls (weight {weight:g})", lambda y: tv(y, weight)),
        args,
        rows,
    )


def deblur_part(args, rows) -> None:
    cases = list(photos().items())
    prior = load_prior(args.natural_model)
    print(f"deblurring: {', '.join(name for name, _ in cases)}, prior {args.natural_model}")
    blur = GaussianBlur(3.0, 61)
    measured = [measure(blur, x, 0.005, seed=1000 + i)[0] for i, (_, x) in enumerate(cases)]
    lam = pick_weight(
        TIKHONOV_WEIGHTS,
        lambda w: statistics.mean(
            psnr(regularised_least_squares(y, blur, w), x) for y, (_, x) in zip(measured, cases, strict=True)
        ),
    )
    baseline = (f"tikhonov (weight {lam:g})", lambda y: regularised_least_squares(y, blur, lam))
    run_task("deblur", cases, blur, 0.005, prior, baseline, args, rows)


def superres_part(args, rows) -> None:
    cases = list(photos().items())
    prior = load_prior(args.natural_model)
    print(f"super-resolution: {', '.join(name for name, _ in cases)}, prior {args.natural_model}")
    baseline = ("bicubic", lambda y: bicubic_upsample(y, 4))
    run_task("superres x4", cases, BicubicDownsample(4), 0.005, prior, baseline, args, rows)


PARTS = {"ct": (ct_part,), "dicom": (dicom_part,), "deblur": (deblur_part,), "superres": (superres_part,)}
PARTS["all"] = PARTS["ct"] + PARTS["dicom"] + PARTS["deblur"] + PARTS["superres"]


def summary(rows) -> str:
    lines = [
        "| task | method | images | PSNR dB (mean ± std) | SSIM (mean) | residual / σ (mean) | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    for (task, method), group in groups.items():
        p = [r[3] for r in group]
        spread = statistics.stdev(p) if len(p) > 1 else 0.0
        ratios = [r[6] for r in group if r[6] is not None]
        ratio = f"{statistics.mean(ratios):.2f}" if ratios else "-"
        lines.append(
            f"| {task} | {method} | {len(group)} | {statistics.mean(p):.2f} ± {spread:.2f} | "
            f"{statistics.mean(r[4] for r in group):.3f} | {ratio} | {statistics.mean(r[5] for r in group):.1f} |"
        )
    lines += ["", "Shepp-Logan alone:" if any(r[2] == "shepp-logan" for r in rows) else ""]
    lines += [f"- {r[1]}: {r[3]:.2f} dB, SSIM {r[4]:.3f}" for r in rows if r[2] == "shepp-logan"]
    return "\n".join(lines)


class RowLog(list):
    """The result rows, each also appended to a CSV file (when given) as it comes, so
    that an interrupted run keeps what it measured."""

    HEADER = ("task", "method", "image", "psnr", "ssim", "seconds", "residual_ratio")

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.path = path
        if path:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.HEADER)

    def append(self, row: tuple) -> None:
        super().append(row)
        if self.path:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow(["" if v is None else v for v in row])


def read_rows(path: str) -> list[tuple]:
    with open(path, newline="") as f:
        return [
            (task, method, image, float(p), float(q), float(sec), float(ratio) if ratio else None)
            for task, method, image, p, q, sec, ratio in list(csv.reader(f))[1:]
        ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=tuple(PARTS), default="all")
    parser.add_argument(
        "--presets",
        default="fast",
        help="comma-separated ReSample presets, or PRESET+FIELD=VALUE+... candidates as in tune_fast.py",
    )
    parser.add_argument(
        "--paper-images",
        type=int,
        default=10**6,
        help="run the paper preset on only the first K images of each task",
    )
    parser.add_argument(
        "--ct-images", type=int, default=20, help="held-out ellipse phantoms (plus Shepp-Logan)"
    )
    parser.add_argument(
        "--oracle-steps",
        type=int,
        default=0,
        help="also report the decoder's reach: D(E(x)) and D(z) with z fitted to the truth in this many steps",
    )
    parser.add_argument(
        "--samples", type=int, default=1, help="ReSample posterior samples per image; their mean is scored"
    )
    parser.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="ReSample's seed is the image index plus this: other posterior draws, same measurements",
    )
    parser.add_argument("--ct-model", default="ct-ellipses")
    parser.add_argument("--natural-model", default="dead-leaves")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", default=None, help="also write every per-image row here")
    parser.add_argument(
        "--shard",
        default="1/1",
        metavar="K/N",
        help="run every N-th image from the K-th: N processes side by side, then --merge their --csv files",
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="CSV", help="run nothing: print the table of these --csv files"
    )
    args = parser.parse_args()
    if args.merge:
        print(summary([row for path in args.merge for row in read_rows(path)]))
        return
    args.presets = [p for p in args.presets.split(",") if p]
    try:
        args.shard = parse_shard(args.shard)
    except ValueError as error:
        parser.error(f"--shard: {error}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[tuple] = RowLog(args.csv)
    for part in PARTS[args.part]:
        part(args, rows)
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
