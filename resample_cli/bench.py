"""Benchmarks: every solver on every measured image, one row each, and the tables.

A ``Case`` is a clean image with its measurement and operator; a ``BenchSolver`` turns a
measurement into an image. ``run_bench`` runs each solver on each case and measures the
restoration (PSNR, SSIM, optional LPIPS), its measurement residual, the network passes,
the wall time and the peak memory; ``write_csv`` and ``write_markdown`` write the rows and
their mean ± std per solver. Nothing here reads images or prints.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import pipeline
from .fileio.atomic import write_text_atomic
from .metrics import psnr, ssim
from .operators.base import Operator
from .priors.base import LatentPrior
from .solvers import SOLVERS, solver_config, solver_named
from .solvers.classical import (
    bicubic_upsample,
    filtered_back_projection,
    regularised_least_squares,
    tv_least_squares,
)

# The diffusion solvers, by name: the registry's (``resample_cli.solvers.SOLVERS``).
DIFFUSION_SOLVERS = SOLVERS
# What ``classical`` stands for, per task.
CLASSICAL_SOLVERS = {
    "deblur": ("tikhonov",),
    "superres": ("bicubic",),
    "inpaint": ("tikhonov",),
    "nonlinear-deblur": ("tv-ls",),
    "ct": ("fbp", "tv-ls"),
}
# TV weights: 1.0 was the best of a grid for 25-angle 128 px CT at 1 % noise
# (benchmarks/shipped_priors.py). On [0, 1] images the data term is ~sigma_y^2 per pixel; for
# NonlinearBlur at sigma_y 0.005, weights 1e-4 to 1e-3 gave the same PSNR, 1e-2 lower.
DEFAULT_TV_WEIGHT = {"ct": 1.0, "nonlinear-deblur": 1e-3}
DEFAULT_TIKHONOV_LAM = 1e-2
COUNTS = ("unet_forward", "unet_backward", "decoder_forward", "decoder_backward")

StepCallback = Callable[[int, int], None]  # (step, total)


@dataclass(frozen=True)
class Case:
    """One benchmark image: the clean image (C, H, W) in [0, 1], its measurement y (a
    batch of one), the operator that made it and the std of the noise added."""

    name: str
    clean: torch.Tensor
    y: torch.Tensor
    operator: Operator
    sigma_y: float


@dataclass(frozen=True)
class BenchSolver:
    """A named way from (case, y, operator, sigma_y) to an image (C, H, W) and its network
    pass counts. ``steps`` is the length of its progress (0: no steps); ``linear_only``
    marks solvers that need a linear operator; ``unavailable`` says why it cannot run at all
    (PSLD on a pixel-space prior), empty when it can."""

    label: str
    run: Callable[[Case, torch.Tensor, Operator, float, StepCallback | None], tuple[torch.Tensor, Mapping]]
    steps: int = 0
    linear_only: bool = False
    unavailable: str = ""


@dataclass
class Row:
    """One image restored by one solver. None: not measured (see ``note``)."""

    image: str
    solver: str
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    residual_ratio: float | None = None
    unet_forward: int | None = None
    unet_backward: int | None = None
    decoder_forward: int | None = None
    decoder_backward: int | None = None
    seconds: float | None = None
    peak_mib: float | None = None
    note: str = ""


@dataclass(frozen=True)
class BenchSettings:
    """Solver settings: ``steps`` overrides every diffusion solver's preset; ``seed`` is
    the solvers' seed; the weights are those of the classical solvers (None: the task's
    default)."""

    steps: int | None = None
    seed: int = 0
    autocast: torch.dtype | None = None
    tv_weight: float | None = None
    tikhonov_lam: float = DEFAULT_TIKHONOV_LAM


def parse_solvers(spec: str, task: str) -> list[str]:
    """The labels a comma-separated ``--solvers`` value names: ``NAME[:PRESET]`` for the
    diffusion solvers (preset ``fast`` by default), ``classical`` for the task's classical
    baselines, or one of those by name. A ``ValueError`` names what is allowed."""
    labels: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        name, _, preset = item.partition(":")
        if name in DIFFUSION_SOLVERS:
            preset = preset or "fast"
            solver_config(name, preset)  # a ValueError names the solver's presets
            found = [f"{name}:{preset}"]
        elif name == "classical" and not preset:
            found = list(CLASSICAL_SOLVERS[task])
        elif item in CLASSICAL_SOLVERS[task]:
            found = [item]
        else:
            choices = [f"{n}[:PRESET]" for n in DIFFUSION_SOLVERS] + ["classical", *CLASSICAL_SOLVERS[task]]
            raise ValueError(f"unknown solver {item!r} for {task}; choose from {', '.join(choices)}")
        labels += [label for label in found if label not in labels]
    return labels


def needs_prior(labels: Sequence[str]) -> bool:
    return any(label.partition(":")[0] in DIFFUSION_SOLVERS for label in labels)


def build_solvers(
    labels: Sequence[str],
    task: str,
    prior: LatentPrior | None,
    settings: BenchSettings,
    *,
    model: str | None = None,
) -> list[BenchSolver]:
    """The solvers ``parse_solvers`` labelled; ``prior`` is needed for diffusion ones. A
    diffusion solver's label names the method it is on ``prior`` (``dps`` for Latent-DPS on
    a pixel-space prior) and, given, ``model`` (``resample:fast@NAME``), for priors side by side."""
    out = []
    for label in labels:
        name, _, preset = label.partition(":")
        if name in DIFFUSION_SOLVERS:
            if prior is None:
                raise ValueError(f"{label} needs a prior")
            shown = f"{DIFFUSION_SOLVERS[name].name_on(prior.space)}:{preset}" + (
                f"@{model}" if model else ""
            )
            out.append(_diffusion(shown, name, preset, prior, settings))
        else:
            out.append(BenchSolver(label, _classical(label, task, settings)))
    return out


def _diffusion(
    label: str, name: str, preset: str, prior: LatentPrior, settings: BenchSettings
) -> BenchSolver:
    solve, _ = solver_named(name)
    config = solver_config(name, preset, **({"steps": settings.steps} if settings.steps else {}))

    def run(case, y, operator, sigma_y, on_step):
        restoration = pipeline.restore(
            y,
            operator,
            prior,
            config,
            image_shape=tuple(case.clean.shape),
            sigma_y=sigma_y,
            seed=settings.seed,
            autocast=settings.autocast,
            callback=None if on_step is None else (lambda chunk, info: on_step(info.step, info.total)),
            solver=solve,
        )
        return restoration.x, restoration.trace.counts

    entry = DIFFUSION_SOLVERS[name]
    unavailable = entry.refuses(True, prior.space) or ""
    return BenchSolver(label, run, config.steps, entry.linear_only, unavailable)


def _classical(label: str, task: str, settings: BenchSettings):
    """The classical reconstruction ``label`` of ``task`` as a BenchSolver run function."""
    lam = settings.tikhonov_lam
    weight = DEFAULT_TV_WEIGHT.get(task, 1.0) if settings.tv_weight is None else settings.tv_weight

    def tv_start(case: Case, y: torch.Tensor, operator: Operator) -> torch.Tensor:
        if task == "ct":
            return filtered_back_projection(y, operator)
        # A nonlinear measurement need not look like the image: start from grey.
        return torch.full((1, *case.clean.shape), 0.5, device=y.device)

    reconstruct = {
        "tikhonov": lambda case, y, op: regularised_least_squares(y, op, lam),
        "bicubic": lambda case, y, op: bicubic_upsample(y, op.scale),
        "fbp": lambda case, y, op: filtered_back_projection(y, op),
        "tv-ls": lambda case, y, op: tv_least_squares(y, op, weight, tv_start(case, y, op)),
    }[label]

    def run(case, y, operator, sigma_y, on_step):
        return reconstruct(case, y, operator)[0], {}

    return run


def native_resolution(prior: LatentPrior) -> int | None:
    """The image size the prior was trained at (its UNet's sample size times the
    autoencoder's downsampling), when the prior says."""
    config = getattr(getattr(prior, "unet", None), "config", None)
    size = getattr(config, "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return None if size is None else int(size) * prior.downsample_factor


# --- measuring ----------------------------------------------------------------------


class PeakMemory:
    """Peak memory while the block runs, in MiB: CUDA memory allocated on a CUDA device,
    else the process's resident set size, sampled every 10 ms (and at both ends)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.peak_mib: float | None = None
        self._peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def label(device: torch.device) -> tuple[str, str]:
        """(CSV column, Markdown header) of the peak memory measured on ``device``."""
        if device.type == "cuda":
            return "peak_cuda_mib", "peak CUDA memory (MiB)"
        return "peak_rss_mib", "peak RSS (MiB)"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._done.set()
        self._thread.join()
        self.peak_mib = max(self._peak, _rss_bytes()) / 2**20


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc (macOS): the process's peak so far is the best there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def load_lpips(device: torch.device) -> tuple[Callable[[torch.Tensor, torch.Tensor], float] | None, str]:
    """LPIPS (AlexNet) when the ``lpips`` package is importable and the AlexNet weights
    are already in torch's hub cache: it never downloads. Returns (score, "") or (None,
    the reason it is missing)."""
    if importlib.util.find_spec("lpips") is None:
        return None, "n/a (lpips not installed)"
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(checkpoints.glob("alexnet-owt-*.pth")):
        return None, f"n/a (AlexNet weights not cached in {checkpoints})"
    try:
        import lpips

        model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as err:  # a broken install must not sink the benchmark
        return None, f"n/a (lpips failed to load: {type(err).__name__})"

    def score(x: torch.Tensor, ref: torch.Tensor) -> float:
        # LPIPS takes RGB in [-1, 1]; grey images are repeated over the channels.
        a, b = (t.to(device).expand(3, -1, -1)[None] * 2 - 1 for t in (x, ref))
        with torch.no_grad():
            return float(model(a, b))

    return score, ""


def residual_ratio(y: torch.Tensor, operator: Operator, x: torch.Tensor, sigma_y: float) -> float | None:
    """||y - A(x)|| / (sigma_y sqrt(m)), m the entries of y that are data; None for sigma_y = 0."""
    if sigma_y <= 0:
        return None
    with torch.no_grad():
        fit = operator(x[None].to(y.device))
    return float((y - fit).norm()) / (sigma_y * math.sqrt(float(operator.measurement_count(y)[0])))


def run_bench(
    cases: Sequence[Case],
    solvers: Sequence[BenchSolver],
    *,
    device: torch.device,
    lpips: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    on_start: Callable[[Case, BenchSolver], StepCallback | None] | None = None,
    on_row: Callable[[Row, torch.Tensor | None], None] | None = None,
) -> list[Row]:
    """Every solver on every case, in that order. ``on_start(case, solver)`` may return a
    step callback; ``on_row(row, image)`` sees each row with its image (None when the solver
    does not apply or failed). A solver that raises ``ValueError`` gives a row noting it."""
    rows = []
    for case in cases:
        y, operator = case.y.to(device), case.operator.to(device)
        for solver in solvers:
            row = Row(case.name, solver.label)
            image = None
            if solver.linear_only and not operator.linear:
                row.note = f"not applicable: {solver.label} needs a linear operator"
            elif solver.unavailable:
                row.note = f"not applicable: {solver.unavailable}"
            else:
                on_step = on_start(case, solver) if on_start else None
                try:
                    image = _measure(row, case, y, operator, solver, device, on_step, lpips)
                except ValueError as err:
                    row.note = f"failed: {err}"
            rows.append(row)
            if on_row:
                on_row(row, image)
    return rows


def _measure(row, case, y, operator, solver, device, on_step, lpips) -> torch.Tensor:
    sigma_y = case.sigma_y
    with PeakMemory(device) as memory:
        _sync(device)
        start = time.perf_counter()
        x, counts = solver.run(case, y, operator, sigma_y, on_step)
        _sync(device)
        row.seconds = time.perf_counter() - start
    row.peak_mib = memory.peak_mib
    x = x.detach().float().cpu()
    row.psnr, row.ssim = psnr(x, case.clean), ssim(x, case.clean)
    row.lpips = None if lpips is None else lpips(x, case.clean)
    row.residual_ratio = residual_ratio(y, operator, x, sigma_y)
    for name in COUNTS:
        setattr(row, name, int(counts.get(name, 0)))
    return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- tables -------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    field: str  # Row attribute
    csv: str
    header: str  # Markdown
    digits: int


@dataclass(frozen=True)
class TableInfo:
    """What the tables say around the numbers: the memory kind, why LPIPS is missing
    (empty when measured), and the settings listed above the Markdown tables."""

    device: torch.device
    lpips_note: str = ""
    settings: dict[str, str] = field(default_factory=dict)


def columns(device: torch.device) -> list[Column]:
    memory_csv, memory_header = PeakMemory.label(device)
    return [
        Column("psnr", "psnr_db", "PSNR (dB)", 2),
        Column("ssim", "ssim", "SSIM", 4),
        Column("lpips", "lpips", "LPIPS", 4),
        Column("residual_ratio", "residual_ratio", "residual / (σ_y·√m)", 3),
        Column("unet_forward", "unet_forward", "UNet fwd", 0),
        Column("unet_backward", "unet_backward", "UNet bwd", 0),
        Column("decoder_forward", "decoder_forward", "decoder fwd", 0),
        Column("decoder_backward", "decoder_backward", "decoder bwd", 0),
        Column("seconds", "seconds", "s / image", 3),
        Column("peak_mib", memory_csv, memory_header, 0),
    ]


def _missing(column: Column, info: TableInfo) -> str:
    """What a cell without a value says, in a row whose solver ran."""
    if column.field == "lpips":
        return info.lpips_note
    return "n/a (σ_y = 0)" if column.field == "residual_ratio" else "n/a"


def write_csv(path: str | Path, rows: Sequence[Row], info: TableInfo) -> None:
    """One line per image and solver; numbers unrounded, a missing LPIPS says why."""
    cols = columns(info.device)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "solver", *(c.csv for c in cols), "note"])
    for row in rows:
        cells = []
        for c in cols:
            value = getattr(row, c.field)
            missing = info.lpips_note if c.field == "lpips" and not row.note else ""
            cells.append(missing if value is None else repr(value))
        writer.writerow([row.image, row.solver, *cells, row.note])
    write_text_atomic(path, buffer.getvalue())


def summarise(rows: Sequence[Row]) -> dict[str, dict[str, tuple[float, float | None, int]]]:
    """Per solver (in order of appearance) and numeric field: (mean, sample std or None
    for one value, number of values) over the rows that have a value."""
    out: dict[str, dict[str, tuple[float, float | None, int]]] = {}
    names = [f.name for f in fields(Row) if f.name not in ("image", "solver", "note")]
    for solver in dict.fromkeys(r.solver for r in rows):
        stats = {}
        for name in names:
            values = [getattr(r, name) for r in rows if r.solver == solver and getattr(r, name) is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else None
                stats[name] = (statistics.fmean(values), std, len(values))
        out[solver] = stats
    return out


def write_markdown(path: str | Path, title: str, rows: Sequence[Row], info: TableInfo) -> None:
    """The settings, a mean ± std table per solver, and the per-image rows."""
    cols = columns(info.device)
    if info.device.type == "cuda":
        memory = "torch.cuda.max_memory_allocated during each run"
    else:
        memory = "the process's resident set size, sampled every 10 ms during each run"
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in info.settings.items()]
    lines += [
        f"- peak memory: {memory}",
        "- residual / (σ_y·√m): ||y − A(x̂)|| over sigma_y times the root of the number of measurements m",
        "- ± : the sample standard deviation over images",
        "",
        "## Mean ± std over images",
        "",
        *_markdown_table(["solver", *(c.header for c in cols), "images"], _summary_rows(rows, cols, info)),
        "",
        "## Per image",
        "",
    ]
    per_image = []
    for r in rows:
        cells = [_cell(getattr(r, c.field), c, info, r.note) for c in cols]
        per_image.append([r.image, r.solver, *cells, r.note])
    lines += _markdown_table(["image", "solver", *(c.header for c in cols), "note"], per_image)
    write_text_atomic(path, "\n".join(lines) + "\n")


def _summary_rows(rows: Sequence[Row], cols: Sequence[Column], info: TableInfo) -> list[list[str]]:
    """Per solver: mean ± std of each column, then the number of images and any notes."""
    table = []
    for solver, stats in summarise(rows).items():
        cells = []
        for c in cols:
            if c.field not in stats:
                cells.append(_cell(None, c, info, "" if stats else "no values"))
                continue
            mean, std, _ = stats[c.field]
            cells.append(_fmt(mean, c.digits) + ("" if std is None else f" ± {_fmt(std, c.digits)}"))
        counted = max((n for _, _, n in stats.values()), default=0)
        notes = sorted({r.note for r in rows if r.solver == solver and r.note})
        table.append([solver, *cells, "; ".join([str(counted), *notes])])
    return table


def _cell(value: float | None, column: Column, info: TableInfo, note: str) -> str:
    """A number, rounded; or, missing, why (nothing when the row's note says why)."""
    if value is not None:
        return _fmt(value, column.digits)
    return "" if note else _missing(column, info)


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in body)]
