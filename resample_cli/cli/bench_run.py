"""The work of ``resample bench TASK``: measure the clean images, run each solver on
each, and write the tables. Imported by the command only when it runs: it imports torch,
the solvers and the priors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import typer

from .. import __version__
from ..bench import (
    BenchSettings,
    Case,
    Row,
    TableInfo,
    build_solvers,
    load_lpips,
    native_resolution,
    needs_prior,
    parse_solvers,
    run_bench,
    write_csv,
    write_markdown,
)
from ..fileio.errors import InputError
from ..fileio.images import LoadedImage, write_image
from ..priors import LatentPrior, PriorError, load_prior
from ..training.data import SyntheticSource
from .bench import BenchOptions
from .console import Output
from .files import check_output_dir, clean_inputs, expand_inputs
from .measurements import Maker, measure, measurement_maker, noise_generator, read_clean
from .options import DEFAULT_MODELS, DEFAULT_NOISE
from .restore import resolve_device

OUTPUTS = ("bench.md", "bench.csv")


def run_benchmark(task: str, task_options: Mapping[str, Any], options: BenchOptions) -> int:
    """Run the benchmark ``resample bench`` describes; the exit code. Each image's operator
    is made from ``task_options`` as ``resample simulate TASK`` makes it."""
    labels = _solver_labels(task, options)
    make = measurement_maker(task, task_options)
    device = resolve_device(options.device)
    out = Output(quiet=options.quiet)
    targets = [options.output_dir / name for name in OUTPUTS]
    relative_noise = task_options["relative_noise"]
    try:
        check_output_dir(options.output_dir)
        _refuse_existing(targets, options.overwrite)
        prior, images, source = _images_and_prior(task, labels, options, device, out)
        sigma_y = DEFAULT_NOISE[task] if options.noise is None else options.noise
        cases = [_case(image, make, sigma_y, relative_noise, options.seed) for image in images]
        saved = _image_paths(options.output_dir, cases, labels) if options.save_images else {}
        _refuse_existing(saved.values(), options.overwrite)
        if saved:
            (options.output_dir / "images").mkdir(exist_ok=True)
    except (InputError, PriorError) as err:
        out.error(str(err))
        raise typer.Exit(1) from None
    dtype = options.dtype.value
    autocast = None if dtype == "float32" else getattr(torch, dtype)
    settings = BenchSettings(options.steps, options.seed, autocast, options.tv_weight, options.tikhonov_lam)
    bench_solvers = build_solvers(labels, task, prior, settings)
    lpips, lpips_note = load_lpips(device)
    try:
        rows, failures = _run(out, task, cases, bench_solvers, device, lpips, saved)
    except KeyboardInterrupt:
        out.error("interrupted; no bench files were written")
        raise typer.Exit(130) from None
    noise_line = f"{sigma_y:g}"
    if relative_noise is not None:
        sigmas = [case.sigma_y for case in cases]
        noise_line = f"{relative_noise:g} of each sinogram's maximum ({min(sigmas):.4g} to {max(sigmas):.4g})"
    lines = _settings(
        task, cases, prior, source, noise_line, options.seed, labels, options.steps, device, dtype
    )
    info = TableInfo(device, lpips_note, lines)
    write_csv(targets[1], rows, info)
    write_markdown(targets[0], f"resample bench {task}", rows, info)
    out.log(f"{len(rows)} rows -> {targets[0]}, {targets[1]}")
    return out.summary(failures)


def _solver_labels(task: str, options: BenchOptions) -> list[str]:
    """The solvers of --solvers; a usage error when one is unknown, or when --synthetic
    images have no side to take: no --size, and no prior to take it from."""
    try:
        labels = parse_solvers(options.solvers, task)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--solvers") from None
    if options.synthetic is not None and options.size is None and not needs_prior(labels):
        raise typer.BadParameter(
            "give the image side: classical solvers have no prior to take it from", param_hint="--size"
        )
    return labels


def _images_and_prior(
    task: str, labels: list[str], options: BenchOptions, device: torch.device, out: Output
) -> tuple[LatentPrior | None, list[LoadedImage], str]:
    """The prior the solvers need (None for classical ones only), the clean images, and a
    line saying where these came from. --data is read before the model loads: a bad file
    needs no model to be found; --synthetic images take the prior's size without --size."""
    if options.data is not None:
        images, source = _read_images(task, options.data)
    prior = None
    if needs_prior(labels):
        spec = options.model or DEFAULT_MODELS[task]
        out.log(f"loading model {spec} on {device}")
        prior = load_prior(spec, revision=options.revision, device=device)
    if options.data is None:
        images, source = _synthetic_images(
            task, options.synthetic, options.n, options.size, options.seed, prior
        )
    return prior, images, source


def _run(out, task, cases, solvers, device, lpips, saved) -> tuple[list[Row], list[str]]:
    """run_bench with progress bars and a log line per row; the rows and the failures."""
    failures: list[str] = []
    with out.progress() as bar:
        runs_bar = bar.add_task(f"bench {task}", total=len(cases) * len(solvers)) if bar else None
        steps_bar = bar.add_task("steps", total=1) if bar else None

        def on_start(case, solver):
            if not bar:
                return None
            bar.reset(steps_bar, total=max(solver.steps, 1), description=f"{case.name} {solver.label}")
            return lambda step, total: bar.update(steps_bar, completed=step)

        def on_row(row, image):
            if row.note.startswith("failed"):
                failures.append(f"{row.image} {row.solver}: {row.note}")
                out.error(failures[-1])
            elif row.note:
                out.warn(f"{row.image} {row.solver}: {row.note}")
            else:
                out.log(
                    f"{row.image} {row.solver}: PSNR {row.psnr:.2f} dB, SSIM {row.ssim:.4f}, {row.seconds:.2f} s"
                )
            if image is not None and saved:
                write_image(saved[row.image, row.solver], image.numpy())
            if bar:
                bar.advance(runs_bar)

        rows = run_bench(cases, solvers, device=device, lpips=lpips, on_start=on_start, on_row=on_row)
    return rows, failures


def _refuse_existing(paths, overwrite: bool) -> None:
    if not overwrite:
        for path in paths:
            if path.exists():
                raise InputError(path, "output exists; pass --overwrite")


def _read_images(task: str, data: Path) -> tuple[list[LoadedImage], str]:
    """The clean images of --data, and a line saying where they came from."""
    paths = expand_inputs([data], clean_inputs(task))
    if not paths:
        raise InputError(data, "no images here")
    read = read_clean(task)
    return [read(path) for path in paths], f"{len(paths)} from {data}"


def _synthetic_images(task, synthetic, n, size, seed, prior) -> tuple[list[LoadedImage], str]:
    """The --synthetic images, as large as the prior's training images unless --size says,
    and a line saying how they were made."""
    size = size or (prior and native_resolution(prior))
    if not size:
        raise typer.BadParameter(
            "give the image side: the prior does not state its resolution", param_hint="--size"
        )
    channels = 1 if task == "ct" else (prior.image_channels if prior else 3)
    batch = SyntheticSource(synthetic.value, size, channels).sample(n, torch.Generator().manual_seed(seed))
    images = [LoadedImage(batch[i].numpy(), 8, Path(f"{synthetic.value}-{i:03d}")) for i in range(n)]
    return images, f"{n} synthetic {synthetic.value}, {size}x{size}, {channels} channel(s), seed {seed}"


def _case(image: LoadedImage, make: Maker, noise: float, relative_noise: float | None, seed: int) -> Case:
    generator = noise_generator(seed, image.path)
    op, _ = make(image, generator)
    try:
        y, sigma_y = measure(op, image, noise, generator, relative_noise)
    except ValueError as err:  # e.g. a size the operator cannot take
        raise InputError(image.path, str(err)) from None
    return Case(image.path.name, torch.from_numpy(image.data), y, op, sigma_y)


def _image_paths(output_dir: Path, cases: list[Case], labels: list[str]) -> dict[tuple[str, str], Path]:
    folder = output_dir / "images"
    return {
        (case.name, label): folder / f"{Path(case.name).stem}.{label.replace(':', '-')}.png"
        for case in cases
        for label in labels
    }


def _settings(task, cases, prior, source, noise, seed, labels, steps, device, dtype) -> dict[str, str]:
    """The lines above the tables: enough to run the benchmark again."""
    if prior is None:
        model = "none (classical solvers only)"
    else:
        info = prior.info
        model = f"{info.name} (repo {info.repo}, revision {info.revision})" if info.repo else info.name
    return {
        "resample": __version__,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "task": task,
        "operator (first image)": json.dumps(cases[0].operator.params()),
        "images": source,
        "noise σ_y": noise,
        "seed": str(seed),
        "solvers": ", ".join(labels) + ("" if steps is None else f" (--steps {steps})"),
        "model": model,
        "device": f"{device}, {dtype}",
    }
