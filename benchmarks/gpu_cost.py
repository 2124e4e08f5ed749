"""What ReSample's presets cost on a GPU: seconds per image and peak memory on the real
CelebA-HQ LDM architecture, at batch 1 and at the largest batch that fits.

The networks, their random weights, the task (Gaussian deblurring, kernel 61, std 3,
sigma_y 0.005) and the configuration sources are those of benchmarks/cost.py, whose
building blocks this script imports; cost.py gives the pass counts and the CPU timing.

On CUDA, under --gpu-budget seconds in all (270 by default, setup included): every preset
of --presets (default paper,fast; any preset ``ReSampleConfig.preset`` knows) in every dtype
of --dtypes (float32, and bfloat16 autocast as ``--dtype bfloat16`` runs it) on a 256x256
image, at batch 1 and at the largest batch that fits: seconds per image and
torch.cuda.max_memory_allocated. A preset named in --reduce (default paper=10) runs at that
many DDIM steps with its solves' iteration caps cut by the same factor, and its
full-settings seconds are printed beside the measured ones, labelled "scaled": the
measured seconds times the ratio of the pass-weighted costs (full-settings schedule maximum
over the reduced run's counts; each UNet, decoder and encoder pass and each pixel-space
AdamW iteration weighted by its seconds, timed in the same process at that batch and
dtype). Others run at full settings. The largest batch is found by doubling, each probe a
2-step run with 2-iteration solves, which holds the memory peaks (the DPS gradient through
UNet and decoder; the latent solve through the decoder), the search bounded in time
(--probe-seconds). The largest-batch rows share what is left of the budget: a row is timed
at the largest power of two that fits in memory and whose predicted time (batch-1 seconds
per image times the probes' throughput gain) fits its share, and a run still going at the
deadline is stopped; every row left out says why. Without CUDA it prints "no CUDA" and
exits 0; under --quick it runs on the CPU instead, as a smoke check of the same code (the
networks narrowed to 32 channels a block, 32x32, 4 steps, solves capped at 2 iterations;
its numbers are no measurement).

How long: under 5 minutes on an H200 (--gpu-budget bounds the whole run, setup included;
`paper` at full settings takes minutes per image, the paper reports 280-780 s on
A100/A6000-class GPUs, hence its reduced run); --quick about 30 s on a CPU.

    python benchmarks/gpu_cost.py              # the GPU table: one command, < 5 min on an H200
    python benchmarks/gpu_cost.py --quick      # smoke check: tiny networks, on the CPU without CUDA
    python benchmarks/gpu_cost.py [--presets paper,fast] [--dtypes float32,bfloat16]
                                  [--reduce paper=10] [--gpu-budget 270] [--probe-seconds 15]
                                  [--gpu-max-batch 256] [--threads 1] [--csv rows.csv]

Host-device synchronisations the timings include (resample_cli, as audited for issue 20):
the stopping rules' per-iteration checks (``consistency.adam_fit``,
``consistency.fit_latent_gauss_newton``,
``operators.base.conjugate_gradient``, ``krylov.tikhonov_by_discrepancy``), adam_fit's
boolean-mask indexing of the active images, the blur's preconditioner set-up in each of its
solves (``Blur._preconditioner``), ``Trace.timed``'s synchronise per stage, the
per-data-consistency-step residual lists, and the CPU generator's draws, copied to the GPU
from pageable memory. The CelebA-HQ autoencoder quantises (VQ), so `lean` runs its AdamW
fallback here, not its Gauss-Newton latent solves: the same pass budget, another solver.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from resample_cli.priors import DiffusersPrior
from resample_cli.solvers.consistency import StopRule, fit_pixels_adam
from resample_cli.solvers.resample import ReSampleConfig, dc_schedule
from resample_cli.solvers.schedule import ddim_grid
from resample_cli.solvers.trace import Trace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cost import (  # noqa: E402
    PASSES,
    SIGMA_Y,
    OverBudget,
    add_common_arguments,
    build_prior,
    measurement,
    names,
    pass_seconds,
    passes,
    preset_configs,
    print_table,
    ratio_line,
    row,
    run_preset,
    schedule_max,
    settings_text,
    synchronize,
    write_csv,
)

DTYPES: dict[str, torch.dtype | None] = {
    "float32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
GPU_SIZE = 256
# What the scaled full-settings estimate weighs: network passes, and the pixel-space AdamW
# iterations (operator only, no network) that `paper`'s pixel stages run 2,000 of each.
COSTED = (*PASSES, "encoder_forward", "pixel_iterations")
RESERVE = 10.0  # seconds of the budget kept for a run's final solve, which no deadline stops


def pixel_iterations_max(config: ReSampleConfig) -> int:
    """Pixel-space AdamW iterations per image when each pixel solve runs to its cap; 0 when
    the pixel stage is the operator's own regularised solve (the blur here is linear)."""
    if config.pixel_solver != "adam":
        return 0
    return sum(stage == "pixel" for stage in dc_schedule(config)) * config.pixel_iters


def pixel_iterations_run(config: ReSampleConfig, prior: DiffusersPrior, trace: Trace) -> float:
    """Pixel-space AdamW iterations a run took, per image (the mean over the batch)."""
    if config.pixel_solver != "adam":
        return 0.0
    grid = ddim_grid(prior, config.steps, config.timestep_grid)
    stages = [stage for stage in dc_schedule(replace(config, steps=len(grid))) if stage]
    return float(
        sum(
            sum(its) / len(its)
            for stage, its in zip(stages, trace.dc_iterations, strict=True)
            if stage == "pixel"
        )
    )


def reduced(config: ReSampleConfig, steps: int) -> ReSampleConfig:
    """``config`` at ``steps`` DDIM steps, its solves' iteration caps cut by the same factor."""
    if steps >= config.steps:
        return config
    factor = steps / config.steps
    return replace(
        config,
        steps=steps,
        latent_iters=max(1, round(config.latent_iters * factor)),
        pixel_iters=max(1, round(config.pixel_iters * factor)),
    )


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.backends.cuda.cufft_plan_cache.clear()
        torch.cuda.empty_cache()


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the device running out of memory: torch's allocator says so with
    OutOfMemoryError, cuDNN and cuFFT workspaces with a RuntimeError naming it."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        needle in text for needle in ("out of memory", "ALLOC_FAILED", "NOT_ENOUGH_MEMORY")
    )


def pixel_iteration_seconds(
    device: torch.device, size: int, batch: int, config: ReSampleConfig, iters: int = 20
) -> float:
    """Wall seconds of one pixel-space AdamW iteration of ``config`` on a batch (operator
    forward and backward, optimiser step, stopping checks), with a rule that never stops."""
    y, op = measurement(size, batch, device)
    start_image = torch.full_like(y, 0.5)
    never = StopRule(torch.zeros(batch, device=device), 0, config.stop_check)

    def fit(n: int) -> None:
        fit_pixels_adam(op, y, start_image, iters=n, lr=config.pixel_lr, stop=never, units=config.units)

    fit(2)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    fit(iters)
    synchronize(device)
    return (time.perf_counter() - start) / iters


def unit_seconds(
    prior: DiffusersPrior, size: int, batch: int, autocast: torch.dtype | None, config: ReSampleConfig
) -> dict[str, float]:
    """Seconds per image of each item of ``COSTED`` at this batch and dtype."""
    times = pass_seconds(prior, size, batch, autocast)
    pixel = config.pixel_solver == "adam" and config.pixel_iters > 0
    times["pixel_iterations"] = pixel_iteration_seconds(prior.device, size, batch, config) if pixel else 0.0
    return {k: v / batch for k, v in times.items()}


def weighted(counts: Mapping[str, float], unit: Mapping[str, float]) -> float:
    return sum(counts.get(k, 0) * unit.get(k, 0.0) for k in COSTED)


@dataclass
class Setting:
    """One preset in one dtype, and what its search and batch-1 run found."""

    preset: str
    dtype: str
    full: ReSampleConfig
    timed: ReSampleConfig  # ``full`` or its reduction
    largest: int = 0  # the largest batch whose probe ran
    search: str = ""  # why the doubling stopped
    probe_seconds: dict[int, float] = field(default_factory=dict)
    per_image: float | None = None  # measured seconds per image at batch 1

    @property
    def autocast(self) -> torch.dtype | None:
        return DTYPES[self.dtype]

    @property
    def is_reduced(self) -> bool:
        return self.timed != self.full


def setting_row(
    s: Setting, label: str, size: int, batch: int | str, counts: Mapping[str, int], **fields
) -> dict:
    """A table row of ``s`` (its passes from ``counts``, the maximum of its full settings)."""
    return row(
        "gpu", s.preset, label, size, batch, s.timed, counts=counts, full=s.full, dtype=s.dtype, **fields
    )


def probe_config(config: ReSampleConfig) -> ReSampleConfig:
    """A 2-step run with 2-iteration solves: the memory peaks of ``config`` (the DPS
    gradient through UNet and decoder, the latent solve through the decoder) at little cost."""
    return replace(
        config,
        steps=min(config.steps, 2),
        latent_iters=min(config.latent_iters, 2),
        pixel_iters=min(config.pixel_iters, 2),
    )


def search_batch(prior: DiffusersPrior, s: Setting, size: int, max_batch: int, seconds: float) -> None:
    """Double the batch from 1 while a probe runs without running out of memory, up to
    ``max_batch`` and for about ``seconds``; fills ``s.largest``, ``s.search`` and
    ``s.probe_seconds`` (the first probe, at batch 1, is run twice: once to warm up)."""
    probe, device = probe_config(s.timed), prior.device
    stop_at = time.perf_counter() + seconds
    batch, warm = 1, False
    s.search = f"reached --gpu-max-batch {max_batch}"
    while batch <= max_batch:
        failed = None
        try:
            if not warm:
                run_preset(prior, probe, size, 1, autocast=s.autocast)
                warm = True
            seconds_taken = run_preset(prior, probe, size, batch, autocast=s.autocast).seconds
        except RuntimeError as err:  # OutOfMemoryError is one
            if not out_of_memory(err):
                raise
            failed = f"out of memory at {batch}"
        free_memory(device)
        if failed:
            s.search = failed
            return
        s.largest, s.probe_seconds[batch] = batch, seconds_taken
        if time.perf_counter() + 2.5 * seconds_taken > stop_at and batch * 2 <= max_batch:
            s.search = f"search time bound ({seconds:.0f} s) reached before {batch * 2}"
            return
        batch *= 2


def timed_row(
    prior: DiffusersPrior, s: Setting, size: int, batch: int, label: str, deadline: float, note: str
) -> dict:
    """Time ``s`` at ``batch``: seconds per image, peak memory and, for a reduced preset, the
    scaled full-settings estimate."""
    device = prior.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run = run_preset(prior, s.timed, size, batch, autocast=s.autocast, deadline=deadline)
    except (OverBudget, RuntimeError) as err:
        if not (isinstance(err, OverBudget) or out_of_memory(err)):
            raise
        why = str(err) if isinstance(err, OverBudget) else "out of memory"
        free_memory(device)
        return setting_row(s, label, size, batch, Counter(), note=f"{note}{why}".strip())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    per_image = run.seconds / batch
    full_per_image, estimate = per_image, "measured"
    if s.is_reduced:
        unit = unit_seconds(prior, size, batch, s.autocast, s.full)
        full_counts = {**schedule_max(s.full), "pixel_iterations": pixel_iterations_max(s.full)}
        run_counts = {**run.counts, "pixel_iterations": pixel_iterations_run(s.timed, prior, run.trace)}
        full_per_image = per_image * weighted(full_counts, unit) / max(weighted(run_counts, unit), 1e-12)
        estimate = "scaled"
    free_memory(device)
    return setting_row(
        s,
        label,
        size,
        batch,
        run.counts,
        seconds=run.seconds,
        seconds_per_image=per_image,
        full_seconds_per_image=full_per_image,
        estimate=estimate,
        peak_gib=peak,
        note=note.strip(" ;"),
    )


def gpu_rows(
    prior: DiffusersPrior,
    settings: list[Setting],
    *,
    size: int,
    deadline: float,
    max_batch: int,
    probe_seconds: float,
) -> list[dict]:
    """Every setting at batch 1, then at its largest batch, within ``deadline``."""
    device = prior.device
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke check)"
    rows: list[dict] = []

    def skipped(s: Setting, batch: int | str, why: str) -> dict:
        return setting_row(s, label, size, batch, Counter(), note=why)

    # Batch 1, after each setting's batch search.
    for s in settings:
        left = deadline - time.perf_counter()
        if left <= 0:
            rows.append(skipped(s, 1, "skipped: the time budget ran out"))
            continue
        search_batch(prior, s, size, max_batch, min(probe_seconds, left / 4))
        if not s.largest:
            rows.append(skipped(s, 1, f"skipped: {s.search}"))
            continue
        # From the batch-1 probe: its seconds per UNet + decoder pass, times the run's maximum.
        probe_passes = passes(schedule_max(probe_config(s.timed)))
        predicted = s.probe_seconds[1] * passes(schedule_max(s.timed)) / max(probe_passes, 1)
        left = deadline - time.perf_counter()
        if predicted > left:
            rows.append(skipped(s, 1, f"skipped: predicted {predicted:.1f} s, {max(left, 0):.1f} s left"))
            continue
        r = timed_row(prior, s, size, 1, label, deadline, "")
        s.per_image = r.get("seconds_per_image")
        rows.append(r)

    # The largest batch that fits in memory, each row within its share of the time left.
    todo = [s for s in settings if s.per_image is not None and s.largest > 1]
    for i, s in enumerate(todo):
        # RESERVE: a run is stopped only between DDIM steps; its final solve may overrun.
        share = (deadline - RESERVE - time.perf_counter()) / (len(todo) - i)
        one = s.probe_seconds[1]

        def predicted(b: int, s: Setting = s, one: float = one) -> float:
            gain = min(1.0, s.probe_seconds[b] / (b * one)) if one > 0 else 1.0  # the probes' throughput
            return 1.2 * s.per_image * b * gain

        fits = [b for b in sorted(s.probe_seconds) if b > 1 and predicted(b) <= share]
        found = f"largest that fits: {s.largest} ({s.search})"
        if not fits:
            rows.append(
                skipped(s, s.largest, f"skipped: {found}; even batch 2 would take more than {share:.0f} s")
            )
            continue
        batch = fits[-1]
        note = found if batch == s.largest else f"{found}; timed at {batch} to stay within {share:.0f} s; "
        rows.append(timed_row(prior, s, size, batch, label, deadline, note))
    for s in settings:
        if s.per_image is not None and s.largest == 1:
            first = next(r for r in rows if (r["preset"], r["dtype"], r["batch"]) == (s.preset, s.dtype, 1))
            first["note"] = f"no larger batch: {s.search}"
    order = {(s.preset, s.dtype): i for i, s in enumerate(settings)}
    rows.sort(
        key=lambda r: (order[r["preset"], r["dtype"]], r["batch"] if isinstance(r["batch"], int) else 0)
    )
    return rows


def print_gpu_table(rows: list[dict], settings: list[Setting]) -> None:
    def full(r: dict) -> str | None:
        value = r.get("full_seconds_per_image")
        if value is None:
            return None
        return f"{value:.2f}" + (" (scaled)" if r.get("estimate") == "scaled" else "")

    table = [
        {
            **r,
            "full": full(r),
            "steps_run": next(
                (f"{s.timed.steps} of {s.full.steps}" if s.is_reduced else str(s.full.steps))
                for s in settings
                if (s.preset, s.dtype) == (r["preset"], r["dtype"])
            ),
        }
        for r in rows
    ]
    print_table(
        table,
        [
            ("preset", "preset"),
            ("dtype", "dtype"),
            ("batch", "batch"),
            ("steps", "steps_run"),
            ("s / image", "seconds_per_image"),
            ("s / image, full settings", "full"),
            ("peak GiB", "peak_gib"),
            ("UNet+decoder / image", "passes"),
            ("UNet+decoder, full max", "max_passes"),
            ("note", "note"),
        ],
    )


def print_notes(rows: list[dict], settings: list[Setting], size: int, max_batch: int, quick: bool) -> None:
    """What the table's columns are, and the fast / paper and dtype ratios at batch 1."""
    reductions = sorted({(s.preset, s.timed, s.full) for s in settings if s.is_reduced}, key=str)
    print(
        f"\n{settings_text(quick).capitalize()} of each preset, {size}x{size} Gaussian deblurring, "
        f"sigma_y {SIGMA_Y}, one resample() call per row, with the pipeline's CPU generator; s / image: "
        "its wall seconds over the batch. "
        + "".join(
            f"{name} ran {t.steps} of its {f.steps} steps with its solves capped at {t.latent_iters} "
            f"latent / {t.pixel_iters} pixel iterations (of {f.latent_iters} / {f.pixel_iters}); its "
            "'full settings' value is scaled, an estimate and not a measurement: the measured seconds "
            "times the ratio of pass-weighted costs (full settings at the schedule maximum, every "
            "solve to its cap, over this run's counts; each network pass and pixel-space AdamW "
            "iteration weighted by its seconds, timed in this process at the row's batch and dtype). "
            for name, t, f in reductions
        )
        + "bfloat16: autocast of the networks, as --dtype bfloat16 (solves stay float32). "
        f"The larger batch: the largest power of two whose 2-step probe ran without running out "
        f"of memory (tried up to {max_batch}), unless the time budget cut it (see note). Peak: "
        "torch.cuda.max_memory_allocated during the row's run, weights included."
    )
    dtypes = list(dict.fromkeys(s.dtype for s in settings))
    for d in dtypes:
        one = [r for r in rows if r["dtype"] == d and r["batch"] == 1]
        label = f"s / image at full settings (paper's scaled), {d}, batch 1"
        print(ratio_line(one, "full_seconds_per_image", label, not quick))
    by = {(r["preset"], r["dtype"]): r.get("seconds_per_image") for r in rows if r["batch"] == 1}
    speedups = [
        f"{s.preset} {by[s.preset, s.dtype] / by[s.preset, 'float32']:.2f}"
        for s in settings
        if s.dtype != "float32" and by.get((s.preset, s.dtype)) and by.get((s.preset, "float32"))
    ]
    if speedups:
        print("s / image at batch 1, other dtype / float32: " + ", ".join(speedups))


def parse_reduce(text: str) -> dict[str, int]:
    """``NAME=STEPS[,NAME=STEPS...]``."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, steps = item.partition("=")
        if not sep or not steps.strip().isdigit() or int(steps) < 1:
            raise ValueError(f"--reduce takes NAME=STEPS items, got {item!r}")
        out[name.strip()] = int(steps)
    return out


def main() -> int:
    began = time.perf_counter()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(
        parser,
        "smoke check: narrow networks of the same layout, 32x32, 4 steps, solves capped at 2 "
        "iterations, on the CPU when there is no CUDA; seconds",
    )
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="network precisions (default float32,bfloat16)"
    )
    parser.add_argument(
        "--reduce",
        default="paper=10",
        help="NAME=STEPS presets run at fewer steps, their full-settings time scaled (default paper=10)",
    )
    parser.add_argument(
        "--gpu-budget", type=float, default=270.0, help="seconds in all, setup included (default 270)"
    )
    parser.add_argument(
        "--probe-seconds", type=float, default=15.0, help="time bound of each batch search (default 15)"
    )
    parser.add_argument("--gpu-max-batch", type=int, default=256, help="largest batch the search tries")
    args = parser.parse_args()
    configs = preset_configs(parser, args)
    try:
        reduce = parse_reduce(args.reduce)
    except ValueError as err:
        parser.error(str(err))
    dtypes = names(args.dtypes)
    if not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--dtypes needs names from {', '.join(DTYPES)}")
    size, max_batch, budget, probe_seconds = GPU_SIZE, args.gpu_max_batch, args.gpu_budget, args.probe_seconds
    if args.quick:
        reduce = {n: min(s, 2) for n, s in reduce.items()}
        size, max_batch, budget, probe_seconds = 32, 4, min(budget, 120.0), min(probe_seconds, 2.0)
    cuda = torch.cuda.is_available()
    if not (cuda or args.quick):
        print(
            f"GPU part: no CUDA (torch {torch.__version__} sees no CUDA device on this machine); nothing to time."
        )
        return 0
    prior = build_prior(torch.device("cuda" if cuda else "cpu"), tiny=args.quick)
    print(f"\n## GPU seconds per image and peak memory ({size}x{size} input)\n")
    if cuda:
        print(
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
            f"TF32 in convolutions {torch.backends.cudnn.allow_tf32}, in matmuls "
            f"{torch.backends.cuda.matmul.allow_tf32} (torch's defaults, as the CLI runs)\n"
        )
    else:
        print("No CUDA: the GPU part's code runs on the CPU as a smoke check (no memory figures).\n")
    settings = [
        Setting(n, d, c, reduced(c, reduce[n]) if n in reduce else c)
        for n, c in configs.items()
        for d in dtypes
    ]
    rows = gpu_rows(
        prior, settings, size=size, deadline=began + budget, max_batch=max_batch, probe_seconds=probe_seconds
    )
    print_gpu_table(rows, settings)
    print_notes(rows, settings, size, max_batch, args.quick)
    print(f"GPU part: {time.perf_counter() - began:.0f} s of its {budget:.0f} s budget (setup included)")
    write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
