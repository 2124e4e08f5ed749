"""A restoring command's batch, planned before any model is loaded: which inputs to
restore, which to skip, and the failures that need no model (an input that is missing
or unreadable, an output that exists without --overwrite, a --reference or mask of
the wrong size). Nothing here imports torch, so these errors come at once, and a batch
with nothing left to do never loads a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer

from ..distributed import launched, share
from ..fileio.errors import InputError
from ..fileio.images import image_size
from .console import Output
from .files import (
    REPORT_TAIL,
    check_input_file,
    check_outputs_are_safe,
    expand_required,
    match_by_name,
    stem_path,
)
from .options import CommonOptions, parse_shard, require_existing
from .writers import Writer

Size = tuple[int, int]  # (H, W)

# Beside the inputs' own kinds, what a --reference folder may hold for an input.
REFERENCE_SUFFIXES = {".png", ".npy", ".dcm"}


@dataclass
class PlannedInput:
    source: Path
    outputs: dict[str, Path]  # the writer's ("output" the main one), the report, std maps, plot
    reference: Path | None = None  # the clean file --reference gives for it
    skip: bool = False  # --skip-existing and an output exists
    error: str | None = None  # why it cannot be restored, known without a model

    @property
    def output(self) -> Path:
        return self.outputs["output"]


@dataclass(frozen=True)
class TaskChecks:
    """What a task lets planning check of each input before a model loads."""

    # The restoration's (H, W), from the input's header; with it a --reference of another
    # size is found before any work.
    restored_size: Callable[[Path], Size] | None = None
    reference_size: Callable[[Path], Size] = image_size
    # The task's own check of an input (inpaint: its mask's size); raises InputError.
    check_input: Callable[[Path], None] | None = None
    # The files the task's options name, by option ("--mask": path): no output may replace one.
    reads: dict[str, Path | None] = field(default_factory=dict)
    # Whether a folder of DICOM files is one input (a CT volume's series), not its files.
    series: bool = False


@dataclass
class Batch:
    task: str
    writer: Writer
    common: CommonOptions
    inputs: list[PlannedInput]

    @property
    def to_restore(self) -> list[PlannedInput]:
        return [p for p in self.inputs if not p.skip and p.error is None]

    @property
    def failures(self) -> list[str]:
        return [p.error for p in self.inputs if p.error is not None]

    def report_planned(self, out: Output) -> None:
        """In input order: an error line and a "failed" record for each input planning
        refused, a "skipped" record for each one skipped."""
        for planned in self.inputs:
            if planned.skip:
                out.record({"input": str(planned.source), "status": "skipped", "output": str(planned.output)})
            elif planned.error is not None:
                out.error(planned.error)
                out.record({"input": str(planned.source), "status": "failed", "error": planned.error})

    @property
    def skipped(self) -> int:
        return sum(p.skip for p in self.inputs)

    def count_line(self, written: int, failed: int, skipped: int | None = None) -> str:
        skipped = self.skipped if skipped is None else skipped
        return f"{written} written, {skipped} skipped, {failed} failed"

    def summarise(
        self, out: Output, written: int = 0, failures: list[str] | None = None, listed: bool = True
    ) -> int:
        """The closing line and (``listed``) the list of failed inputs; the exit code (0, or
        1 if any failed). Under torchrun, of every rank's share: rank 0 prints them, and
        every rank exits 1 if any rank failed an input."""
        failed = self.failures + (failures or [])
        skipped = self.skipped
        launch = launched()
        if launch is not None:
            from ..distributed import gather, leave

            ranks = gather((written, skipped, failed))
            leave()
            written, skipped = sum(r[0] for r in ranks), sum(r[1] for r in ranks)
            failed = [line for r in ranks for line in r[2]]
            if launch.rank != 0:
                return 1 if failed else 0
        out.log(self.count_line(written, len(failed), skipped))
        return out.summary(failed) if listed else int(bool(failed))

    def finish_without_model(self) -> int:
        """End a batch that has nothing to restore (every input skipped or refused)."""
        out = Output(quiet=self.common.quiet, json_lines=self.common.json)
        self.report_planned(out)
        launch = launched()
        if launch is not None:  # the ranks that have work wait for this one's summary
            from ..devices import resolve_device
            from ..distributed import join

            join(launch, resolve_device(self.common.device))
        return self.summarise(out)


def plan_batch(
    task: str,
    inputs: list[Path],
    suffixes: set[str],
    writer: Writer,
    common: CommonOptions,
    checks: TaskChecks | None = None,
) -> Batch:
    """Expand the inputs and decide what becomes of each from the files alone.
    Usage errors (exit 2): --skip-existing with --overwrite, a --reference that names
    nothing, no input files at all, an output that would replace a file the command
    reads, two inputs with one output name, --shard under torchrun. Only this process's
    share of the inputs (``input_share``) is planned further."""
    checks = checks or TaskChecks()
    share_of = input_share(common.shard)
    if common.skip_existing and common.overwrite:
        raise typer.BadParameter("--skip-existing and --overwrite exclude each other")
    require_existing(common.reference, "--reference")
    sources = expand_required(inputs, suffixes, checks.series)
    planned = [
        PlannedInput(source, {**writer.paths(source, common), **auxiliary_paths(source, common)})
        for source in sources
    ]
    check_outputs_are_safe(
        [(p.source, p.outputs.values()) for p in planned],
        [("--reference", common.reference), *checks.reads.items()],
    )
    if share_of is not None:
        planned = share(planned, *share_of, key=lambda p: str(p.source))
    reference_suffixes = sorted(suffixes | REFERENCE_SUFFIXES)
    for p in planned:
        _preflight(p, common, checks, reference_suffixes)
    return Batch(task, writer, common, planned)


def input_share(shard: str | None) -> tuple[int, int] | None:
    """(index, count) of this process's share of the inputs: its torchrun rank's, or
    --shard's; None for all of them. --shard under torchrun is a usage error."""
    launch = launched()
    if launch is None:
        return None if shard is None else parse_shard(shard)
    if shard is not None:
        raise typer.BadParameter(
            "under torchrun the ranks share the inputs already; give --shard to separate runs only",
            param_hint="--shard",
        )
    return launch.rank, launch.world_size


def _preflight(
    planned: PlannedInput, common: CommonOptions, checks: TaskChecks, reference_suffixes: list[str]
) -> None:
    """Mark ``planned`` skipped, or failed with the first problem found without a model."""
    existing = [p for p in planned.outputs.values() if p.exists()]
    if existing and common.skip_existing:
        planned.skip = True
        return
    source = planned.source
    try:
        check_input_file(source)
        if existing and not common.overwrite:
            raise InputError(existing[0], "output exists; pass --overwrite or --skip-existing")
        if common.reference is not None:
            planned.reference = _reference_for(source, common.reference, reference_suffixes)
            if checks.restored_size is not None:
                _check_reference_size(source, planned.reference, checks)
        if checks.check_input is not None:
            checks.check_input(source)
    except InputError as err:
        planned.error = str(err)


def _reference_for(source: Path, reference: Path, suffixes: list[str]) -> Path:
    """The --reference file of ``source``: the one file given, or its namesake in a folder."""
    return match_by_name(source, reference, suffixes) if reference.is_dir() else reference


def _check_reference_size(source: Path, reference: Path, checks: TaskChecks) -> None:
    expected, found = checks.restored_size(source), checks.reference_size(reference)
    if found != expected:
        raise InputError(
            source,
            f"the --reference {reference} is {found[0]}x{found[1]}, "
            f"but the restoration will be {expected[0]}x{expected[1]}",
        )


def auxiliary_paths(source: Path, common: CommonOptions) -> dict[str, Path]:
    """The outputs every task writes besides its own: the report, std maps, the residual plot."""
    paths = {"report": stem_path(source, common, REPORT_TAIL)}
    if common.samples > 1:
        paths["std_png"] = stem_path(source, common, ".std.png")
        paths["std_npy"] = stem_path(source, common, ".std.npy")
    if common.plot:
        paths["plot"] = stem_path(source, common, ".residual.png")
    return paths
