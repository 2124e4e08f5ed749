"""A restoring command's batch, planned before any model is loaded: which inputs to
restore, which to skip, and the failures that need no model (an input that is missing
or unreadable, an output that exists without --overwrite). Nothing here imports torch,
so these errors come at once, and a batch with nothing left to do never loads a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from ..io.errors import InputError
from .console import Output
from .files import check_input_file, expand_inputs, stem_path
from .options import CommonOptions, require_existing
from .writers import Writer


@dataclass
class PlannedInput:
    source: Path
    outputs: dict[str, Path]  # the writer's ("output" the main one), the report, std maps, plot
    skip: bool = False  # --skip-existing and an output exists
    error: str | None = None  # why it cannot be restored, known without a model

    @property
    def output(self) -> Path:
        return self.outputs["output"]


@dataclass
class Batch:
    task: str
    suffixes: set[str]  # of the inputs, and of references matched to them by name
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

    def summarise(self, out: Output, written: int = 0, failures: list[str] | None = None) -> int:
        """The closing line and the list of failed inputs; the exit code (0, or 1 if any failed)."""
        failed = self.failures + (failures or [])
        skipped = sum(p.skip for p in self.inputs)
        out.log(f"{written} written, {skipped} skipped, {len(failed)} failed")
        return out.summary(failed)

    def finish_without_model(self) -> int:
        """End a batch that has nothing to restore (every input skipped or refused)."""
        out = Output(quiet=self.common.quiet, json_lines=self.common.json)
        self.report_planned(out)
        return self.summarise(out)


def plan_batch(
    task: str, inputs: list[Path], suffixes: set[str], writer: Writer, common: CommonOptions
) -> Batch:
    """Expand the inputs and decide what becomes of each from the files alone.
    Usage errors (exit 2): --skip-existing with --overwrite, a --reference that names
    nothing, no input files at all."""
    if common.skip_existing and common.overwrite:
        raise typer.BadParameter("--skip-existing and --overwrite exclude each other")
    require_existing(common.reference, "--reference")
    sources = expand_inputs(inputs, suffixes)
    if not sources:
        raise typer.BadParameter("no input files", param_hint="INPUT")
    return Batch(task, suffixes, writer, common, [_plan(source, writer, common) for source in sources])


def _plan(source: Path, writer: Writer, common: CommonOptions) -> PlannedInput:
    planned = PlannedInput(source, {**writer.paths(source, common), **auxiliary_paths(source, common)})
    existing = [p for p in planned.outputs.values() if p.exists()]
    if existing and common.skip_existing:
        planned.skip = True
        return planned
    try:
        check_input_file(source)
        if existing and not common.overwrite:
            raise InputError(existing[0], "output exists; pass --overwrite or --skip-existing")
    except InputError as err:
        planned.error = str(err)
    return planned


def auxiliary_paths(source: Path, common: CommonOptions) -> dict[str, Path]:
    """The outputs every task writes besides its own: the report, std maps, the residual plot."""
    paths = {"report": stem_path(source, common, ".report.json")}
    if common.samples > 1:
        paths["std_png"] = stem_path(source, common, ".std.png")
        paths["std_npy"] = stem_path(source, common, ".std.npy")
    if common.plot:
        paths["plot"] = stem_path(source, common, ".residual.png")
    return paths
