"""The work of ``resample bench TASK``: measure the clean images, run each solver on
each, and write the tables. Imported by the command only when it runs: it imports torch,
the solvers and the priors."""

from __future__ import annotations

import json
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
from ..io.errors import InputError
from ..io.images import LoadedImage, read_image, write_image
from ..operators import BicubicDownsample
from ..priors import PriorError, load_prior
from ..training.data import SyntheticSource
from .console import Output
from .files import CT_INPUTS, IMAGE_INPUTS, check_output_dir, expand_inputs
from .measurements import (
    Maker,
    ct_angles,
    ct_maker,
    fixed_operator,
    inpainting_maker,
    measure,
    noise_generator,
)
from .options import DEFAULT_MODELS, DEFAULT_NOISE, Device
from .restore import resolve_device
from .tasks import blur_operator, nonlinear_operator, read_clean_ct
from .train import Synthetic

OUTPUTS = ("bench.md", "bench.csv")


def run_benchmark(
    options: dict[str, Any],
    *,
    task: str,
    data: Path | None,
    synthetic: Synthetic | None,
    n: int,
    size: int | None,
    noise: float | None,
    relative_noise: float | None,
    seed: int,
    solvers: str,
    steps: int | None,
    tv_weight: float | None,
    tikhonov_lam: float,
    model: str | None,
    revision: str | None,
    device: Device,
    dtype: str,
    output_dir: Path,
    save_images: bool,
    overwrite: bool,
    quiet: bool,
) -> int:
    """Run the benchmark ``resample bench`` describes; the exit code. ``options``: the
    command's parameters by name, from which the task's operator is made as ``resample
    simulate TASK`` makes it."""
    try:
        labels = parse_solvers(solvers, task)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--solvers") from None
    if synthetic is not None and size is None and not needs_prior(labels):
        raise typer.BadParameter(
            "give the image side: classical solvers have no prior to take it from", param_hint="--size"
        )
    make = _maker(task, options)
    torch_device = resolve_device(device)
    out = Output(quiet=quiet)
    targets = [output_dir / name for name in OUTPUTS]
    sigma_y = DEFAULT_NOISE[task] if noise is None else noise
    try:
        check_output_dir(output_dir)
        _refuse_existing(targets, overwrite)
        if data is not None:  # read before the model loads: a bad file needs no model to be found
            images, source = _read_images(task, data)
        prior = None
        if needs_prior(labels):
            spec = model or DEFAULT_MODELS[task]
            out.log(f"loading model {spec} on {torch_device}")
            prior = load_prior(spec, revision=revision, device=torch_device)
        if data is None:
            images, source = _synthetic_images(task, synthetic, n, size, seed, prior)
        cases = [_case(image, make, sigma_y, relative_noise, seed) for image in images]
        saved = _image_paths(output_dir, cases, labels) if save_images else {}
        _refuse_existing(saved.values(), overwrite)
        if saved:
            (output_dir / "images").mkdir(exist_ok=True)
    except (InputError, PriorError) as err:
        out.error(str(err))
        raise typer.Exit(1) from None
    autocast = None if dtype == "float32" else getattr(torch, dtype)
    settings = BenchSettings(steps, seed, autocast, tv_weight, tikhonov_lam)
    bench_solvers = build_solvers(labels, task, prior, settings)
    lpips, lpips_note = load_lpips(torch_device)
    try:
        rows, failures = _run(out, task, cases, bench_solvers, torch_device, lpips, saved)
    except KeyboardInterrupt:
        out.error("interrupted; no bench files were written")
        raise typer.Exit(130) from None
    noise_line = f"{sigma_y:g}"
    if relative_noise is not None:
        sigmas = [case.sigma_y for case in cases]
        noise_line = f"{relative_noise:g} of each sinogram's maximum ({min(sigmas):.4g} to {max(sigmas):.4g})"
    lines = _settings(task, cases, prior, source, noise_line, seed, labels, steps, torch_device, dtype)
    info = TableInfo(torch_device, lpips_note, lines)
    write_csv(targets[1], rows, info)
    write_markdown(targets[0], f"resample bench {task}", rows, info)
    out.log(f"{len(rows)} rows -> {targets[0]}, {targets[1]}")
    return out.summary(failures)


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


def _maker(task: str, options: dict) -> Maker:
    """The operator of each image, as ``resample simulate TASK`` makes it from the same options."""
    if task == "deblur":
        return fixed_operator(blur_operator(options["sigma"], options["kernel_size"], options["kernel"]))
    if task == "superres":
        return fixed_operator(BicubicDownsample(options["scale"]))
    if task == "inpaint":
        return inpainting_maker(options["missing"], options["box"], options["mask"])
    if task == "ct":
        return ct_maker(ct_angles(options["angles"], options["angles_file"]))
    try:
        return fixed_operator(nonlinear_operator(options["operator"], options["operator_arg"] or []))
    except (ValueError, ImportError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--operator") from None


def _refuse_existing(paths, overwrite: bool) -> None:
    if not overwrite:
        for path in paths:
            if path.exists():
                raise InputError(path, "output exists; pass --overwrite")


def _read_images(task: str, data: Path) -> tuple[list[LoadedImage], str]:
    """The clean images of --data, and a line saying where they came from."""
    suffixes, read = (CT_INPUTS, read_clean_ct) if task == "ct" else (IMAGE_INPUTS, read_image)
    paths = expand_inputs([data], suffixes)
    if not paths:
        raise InputError(data, "no images here")
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
