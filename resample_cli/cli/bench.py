"""``resample bench TASK``: simulate measurements of clean images, run each solver on each,
and write a Markdown and a CSV table of quality, residual, cost, time and memory."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from .. import __version__
from ..bench import (
    DEFAULT_TIKHONOV_LAM,
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
from .files import check_output_dir, expand_inputs
from .options import COMMON_PARAMETERS, RelativeNoise, check_one_noise, given_options, positive
from .restore import resolve_device
from .simulate import (
    CT_INPUTS,
    Maker,
    ct_angles,
    ct_maker,
    fixed_operator,
    inpainting_maker,
    measure,
    noise_generator,
)
from .tasks import (
    DEFAULT_MODELS,
    DEFAULT_NOISE,
    IMAGE_INPUTS,
    blur_operator,
    nonlinear_operator,
    read_clean_ct,
)
from .train import Synthetic

Task = Enum("Task", {name: name for name in DEFAULT_MODELS}, type=str)

# The common options of the restoring commands that mean the same here.
_COMMON = {p.name: p.annotation for p in COMMON_PARAMETERS}
_DEFAULTS = {p.name: p.default for p in COMMON_PARAMETERS}
ModelOption = _COMMON["model"]
RevisionOption = _COMMON["revision"]
DeviceOption = _COMMON["device"]
DTypeOption = _COMMON["dtype"]
QuietOption = _COMMON["quiet"]

DATA, SOLVERS, TASK = "Data", "Solvers", "Task options"
# Which tasks each task option applies to; given for another task it is a usage error.
TASK_OPTIONS = {
    "sigma": ("deblur",),
    "kernel_size": ("deblur",),
    "kernel": ("deblur",),
    "scale": ("superres",),
    "missing": ("inpaint",),
    "box": ("inpaint",),
    "mask": ("inpaint",),
    "operator": ("nonlinear-deblur",),
    "operator_arg": ("nonlinear-deblur",),
    "angles": ("ct",),
    "angles_file": ("ct",),
    "relative_noise": ("ct",),
    "tv_weight": ("ct", "nonlinear-deblur"),
    "tikhonov_lam": ("deblur", "inpaint"),
}
OUTPUTS = ("bench.md", "bench.csv")


def bench(
    ctx: typer.Context,
    task: Annotated[
        Task, typer.Argument(help="The inverse problem to benchmark.", show_default=False, metavar="TASK")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder (or files, globs) of clean images in [0, 1]; for ct also DICOM slices in HU. Each is "
            "measured as `resample simulate TASK` would (same noise for the same --seed and file name).",
            rich_help_panel=DATA,
        ),
    ] = None,
    synthetic: Annotated[
        Synthetic | None,
        typer.Option(
            help="Instead of --data: N built-in images, 'ellipses' (random ellipse phantoms) or 'dead-leaves' "
            "(occluding disks), drawn with --seed.",
            rich_help_panel=DATA,
        ),
    ] = None,
    n: Annotated[
        int, typer.Option("--n", min=1, help="Number of --synthetic images.", rich_help_panel=DATA)
    ] = 8,
    size: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Side of the --synthetic images in pixels. [default: the prior's training resolution]",
            rich_help_panel=DATA,
        ),
    ] = None,
    noise: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Measurement noise std sigma_y in [0, 1] image units (ct: sinogram units). [default: as "
            "`resample simulate`: 0.005, ct 0]",
            rich_help_panel=DATA,
        ),
    ] = None,
    relative_noise: RelativeNoise = None,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seed of the synthetic images, the measurement noise and the solvers.",
            rich_help_panel=DATA,
        ),
    ] = 0,
    solvers: Annotated[
        str,
        typer.Option(
            help="Comma-separated solvers: resample[:fast|paper], latent-dps[:fast|paper], psld[:fast|paper] "
            "(linear tasks only), and classical: the task's classical baselines (deblur, inpaint: tikhonov; "
            "superres: bicubic; ct: fbp, tv-ls; nonlinear-deblur: tv-ls), also by name. Presets default to fast.",
            rich_help_panel=SOLVERS,
        ),
    ] = "resample:fast,classical",
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="DDIM steps of every diffusion solver, overriding its preset's (resample 50/500, latent-dps "
            "and psld 100/1000 for fast/paper).",
            rich_help_panel=SOLVERS,
        ),
    ] = None,
    tv_weight: Annotated[
        float | None,
        typer.Option(
            callback=positive,
            help="Weight of the total variation in tv-ls (ct, nonlinear-deblur). [default: ct 1.0, "
            "nonlinear-deblur 0.001]",
            rich_help_panel=SOLVERS,
        ),
    ] = None,
    tikhonov_lam: Annotated[
        float,
        typer.Option(
            callback=positive,
            help="Weight lam of ||x - 0.5||^2 in tikhonov (deblur, inpaint).",
            rich_help_panel=SOLVERS,
        ),
    ] = DEFAULT_TIKHONOV_LAM,
    sigma: Annotated[
        float,
        typer.Option(callback=positive, help="deblur: Gaussian blur std in pixels.", rich_help_panel=TASK),
    ] = 3.0,
    kernel_size: Annotated[
        int, typer.Option(min=1, help="deblur: Gaussian kernel width in pixels (odd).", rich_help_panel=TASK)
    ] = 61,
    kernel: Annotated[
        Path | None,
        typer.Option(
            help="deblur: blur kernel file (.npy or image), scaled to sum 1; replaces --sigma.",
            rich_help_panel=TASK,
        ),
    ] = None,
    scale: Annotated[
        int, typer.Option(min=2, help="superres: downsampling factor, an integer >= 2.", rich_help_panel=TASK)
    ] = 4,
    missing: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="inpaint: fraction of pixels missing, at random.", rich_help_panel=TASK
        ),
    ] = 0.7,
    box: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="inpaint: instead, a centred missing square of this side in pixels.",
            rich_help_panel=TASK,
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="inpaint: instead, a mask file (white = observed) or a folder of them matched by name.",
            rich_help_panel=TASK,
        ),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(
            help="nonlinear-deblur: forward model 'package.module:Class'. [default: the built-in NonlinearBlur]",
            rich_help_panel=TASK,
        ),
    ] = None,
    operator_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="nonlinear-deblur: key=value operator argument (repeatable).", rich_help_panel=TASK
        ),
    ] = None,
    angles: Annotated[
        int,
        typer.Option(
            min=1, help="ct: projection angles, equally spaced over [0, 180) degrees.", rich_help_panel=TASK
        ),
    ] = 25,
    angles_file: Annotated[
        Path | None,
        typer.Option(help="ct: instead, a text or .npy file of angles in degrees.", rich_help_panel=TASK),
    ] = None,
    model: ModelOption = None,
    revision: RevisionOption = None,
    device: DeviceOption = _DEFAULTS["device"],
    dtype: DTypeOption = _DEFAULTS["dtype"],
    output_dir: Annotated[
        Path,
        typer.Option("--output-dir", "-o", help="Folder for bench.md and bench.csv (created if missing)."),
    ] = Path("bench"),
    save_images: Annotated[
        bool, typer.Option(help="Also write each restoration as images/NAME.SOLVER.png in the output folder.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing bench files. Without it an existing one is an error.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Benchmark solvers on one task: simulate the measurements of clean images (--data) or built-in ones
    (--synthetic), run every solver on every image, and write bench.md and bench.csv: PSNR, SSIM, LPIPS,
    residual / (sigma_y sqrt(m)), UNet and decoder passes, seconds and peak memory per image, with the mean
    ± std over images."""
    _check_task_options(ctx, task.value, synthetic is not None)
    check_one_noise(ctx, relative_noise)
    try:
        labels = parse_solvers(solvers, task.value)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--solvers") from None
    if (data is None) == (synthetic is None):
        raise typer.BadParameter("give exactly one of --data DIR and --synthetic KIND", param_hint="--data")
    if synthetic is not None and size is None and not needs_prior(labels):
        raise typer.BadParameter(
            "give the image side: classical solvers have no prior to take it from", param_hint="--size"
        )
    make = _maker(task.value, ctx.params)
    torch_device = resolve_device(device)
    out = Output(quiet=quiet)
    targets = [output_dir / name for name in OUTPUTS]
    sigma_y = DEFAULT_NOISE[task.value] if noise is None else noise
    try:
        check_output_dir(output_dir)
        _refuse_existing(targets, overwrite)
        prior = None
        if needs_prior(labels):
            spec = model or DEFAULT_MODELS[task.value]
            out.log(f"loading model {spec} on {torch_device}")
            prior = load_prior(spec, revision=revision, device=torch_device)
        images, source = _images(task.value, data, synthetic, n, size, seed, prior)
        cases = [_case(image, make, sigma_y, relative_noise, seed) for image in images]
        saved = _image_paths(output_dir, cases, labels) if save_images else {}
        _refuse_existing(saved.values(), overwrite)
        if saved:
            (output_dir / "images").mkdir(exist_ok=True)
    except (InputError, PriorError) as err:
        out.error(str(err))
        raise typer.Exit(1) from None
    autocast = None if dtype.value == "float32" else getattr(torch, dtype.value)
    settings = BenchSettings(steps, seed, autocast, tv_weight, tikhonov_lam)
    bench_solvers = build_solvers(labels, task.value, prior, settings)
    lpips, lpips_note = load_lpips(torch_device)
    try:
        rows, failures = _run(out, task.value, cases, bench_solvers, torch_device, lpips, saved)
    except KeyboardInterrupt:
        out.error("interrupted; no bench files were written")
        raise typer.Exit(130) from None
    noise_line = f"{sigma_y:g}"
    if relative_noise is not None:
        sigmas = [case.sigma_y for case in cases]
        noise_line = f"{relative_noise:g} of each sinogram's maximum ({min(sigmas):.4g} to {max(sigmas):.4g})"
    lines = _settings(
        task.value, cases, prior, source, noise_line, seed, labels, steps, torch_device, dtype.value
    )
    info = TableInfo(torch_device, lpips_note, lines)
    write_csv(targets[1], rows, info)
    write_markdown(targets[0], f"resample bench {task.value}", rows, info)
    out.log(f"{len(rows)} rows -> {targets[0]}, {targets[1]}")
    raise typer.Exit(out.summary(failures))


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


def _check_task_options(ctx: typer.Context, task: str, synthetic: bool) -> None:
    """An option given for a task it does not apply to is a usage error, not silently ignored."""
    given = given_options(ctx)
    for name, tasks in TASK_OPTIONS.items():
        if name in given and task not in tasks:
            raise typer.BadParameter(
                f"applies to {' and '.join(tasks)} only, not {task}", param_hint=_flag(name)
            )
    for name in given & {"n", "size"}:
        if not synthetic:
            raise typer.BadParameter("applies to --synthetic images only", param_hint=_flag(name))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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


def _images(task, data, synthetic, n, size, seed, prior) -> tuple[list[LoadedImage], str]:
    """The clean images, and a line saying where they came from."""
    if data is not None:
        suffixes, read = (CT_INPUTS, read_clean_ct) if task == "ct" else (IMAGE_INPUTS, read_image)
        paths = expand_inputs([data], suffixes)
        if not paths:
            raise InputError(data, "no images here")
        return [read(path) for path in paths], f"{len(paths)} from {data}"
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
