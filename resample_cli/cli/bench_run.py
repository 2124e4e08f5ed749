"""The work of ``resample bench TASK``: measure the clean images, run each solver on
each, and write the tables. Imported by the command only when it runs: it imports torch,
the solvers and the priors."""

from __future__ import annotations

import json
import re
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
from ..priors.text import Prompt, TextConditionedPrior
from ..training.data import SyntheticSource
from .bench import BenchOptions
from .conditioning import chosen_prompt, ready_prior
from .console import Output
from .files import check_output_dir, clean_inputs, expand_inputs
from .measurements import Maker, measure, measurement_maker, noise_generator, read_clean
from .options import DEFAULT_MODELS, DEFAULT_NOISE
from .restore import resolve_device

OUTPUTS = ("bench.md", "bench.csv")
_FILE_UNSAFE = re.compile(r"[^\w.@-]+")  # in a solver label, what may not go into a file name


def run_benchmark(task: str, task_options: Mapping[str, Any], options: BenchOptions) -> int:
    """Run the benchmark ``resample bench`` describes; the exit code. Each image's operator
    is made from ``task_options`` as ``resample simulate TASK`` makes it."""
    labels = _solver_labels(task, options)
    prompt = chosen_prompt(options.prompt, options.negative_prompt, options.guidance_scale)
    make = measurement_maker(task, task_options)
    device = resolve_device(options.device)
    out = Output(quiet=options.quiet)
    targets = [options.output_dir / name for name in OUTPUTS]
    relative_noise = task_options["relative_noise"]
    dtype = options.dtype.value
    autocast = None if dtype == "float32" else getattr(torch, dtype)
    settings = BenchSettings(options.steps, options.seed, autocast, options.tv_weight, options.tikhonov_lam)
    try:
        check_output_dir(options.output_dir)
        _refuse_existing(targets, options.overwrite)
        priors, images, source = _images_and_priors(task, labels, options, device, out)
        _ready_priors(priors, prompt, options.gradient_checkpointing)
        sigma_y = DEFAULT_NOISE[task] if options.noise is None else options.noise
        cases = [_case(image, make, sigma_y, relative_noise, options.seed) for image in images]
        bench_solvers = _bench_solvers(labels, task, priors, settings)
        labels = [solver.label for solver in bench_solvers]
        saved = _image_paths(options.output_dir, cases, labels) if options.save_images else {}
        _refuse_existing(saved.values(), options.overwrite)
        if saved:
            (options.output_dir / "images").mkdir(exist_ok=True)
    except (InputError, PriorError) as err:
        out.error(str(err))
        raise typer.Exit(1) from None
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
        task, cases, priors, source, noise_line, options.seed, labels, options.steps, device, dtype
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


def _images_and_priors(
    task: str, labels: list[str], options: BenchOptions, device: torch.device, out: Output
) -> tuple[dict[str, LatentPrior], list[LoadedImage], str]:
    """The priors the solvers need, by --model's names (none for classical solvers only),
    the clean images, and a line saying where these came from. --data is read before the
    models load: a bad file needs no model to be found; --synthetic images take the first
    prior's size without --size."""
    if options.data is not None:
        images, source = _read_images(task, options.data)
    priors = {}
    if needs_prior(labels):
        for spec in (options.model or DEFAULT_MODELS[task]).split(","):
            out.log(f"loading model {spec} on {device}")
            priors[spec] = load_prior(spec, revision=options.revision, device=device)
    if options.data is None:
        first = next(iter(priors.values()), None)
        images, source = _synthetic_images(
            task, options.synthetic, options.n, options.size, options.seed, first
        )
    return priors, images, source


def _ready_priors(priors: dict[str, LatentPrior], prompt: Prompt, gradient_checkpointing: bool) -> None:
    """The prompt goes to the text-conditioned priors, the others run unconditioned; a
    prompt with none to take it is a PriorError."""
    text = [spec for spec, prior in priors.items() if isinstance(prior, TextConditionedPrior)]
    if priors and not text and not prompt.unconditional:
        ready_prior(next(iter(priors.values())), prompt, gradient_checkpointing)  # raises, naming the model
    for spec, prior in priors.items():
        ready_prior(prior, prompt if spec in text else Prompt(), gradient_checkpointing)


def _bench_solvers(labels: list[str], task: str, priors: dict[str, LatentPrior], settings) -> list:
    """Each diffusion solver on each prior (labelled with the model when there are several),
    then the classical solvers."""
    diffusion = [label for label in labels if needs_prior([label])]
    classical = [label for label in labels if label not in diffusion]
    several = len(priors) > 1
    built = []
    for spec, prior in priors.items():
        model = spec.rstrip("/").split("/")[-1] if several else None
        built += build_solvers(diffusion, task, prior, settings, model=model)
    return built + build_solvers(classical, task, None, settings)


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
            # The solver says how many steps it runs: the authors' grid may have one more.
            return lambda step, total: bar.update(steps_bar, completed=step, total=total)

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
        (case.name, label): folder / f"{Path(case.name).stem}.{_FILE_UNSAFE.sub('-', label)}.png"
        for case in cases
        for label in labels
    }


def _settings(task, cases, priors, source, noise, seed, labels, steps, device, dtype) -> dict[str, str]:
    """The lines above the tables: enough to run the benchmark again."""
    model = "; ".join(_model_line(prior) for prior in priors.values()) or "none (classical solvers only)"
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


def _model_line(prior: LatentPrior) -> str:
    """A prior's name, source, kind (latent or pixel-space) and conditioning."""
    info = prior.info
    line = f"{info.name} (repo {info.repo}, revision {info.revision})" if info.repo else info.name
    line += f", {prior.space}-space"
    conditioning = prior.conditioning()
    if conditioning is not None:
        line += f", prompt {conditioning['prompt']!r}"
        if conditioning["guidance_scale"] != 1:
            line += (
                f", negative {conditioning['negative_prompt']!r}, guidance {conditioning['guidance_scale']:g}"
            )
    return line
