"""Where the CLI's words go: logs and progress to stderr, JSON lines to stdout."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Output:
    def __init__(self, *, quiet: bool = False, json_lines: bool = False):
        self.quiet = quiet
        self.json_lines = json_lines
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(message))

    def error(self, message: str) -> None:
        self.err.print(Text(f"error: {message}", style="bold red"))

    def warn(self, message: str) -> None:
        self.err.print(Text(f"warning: {message}", style="yellow"))

    def summary(self, failures: list[str]) -> int:
        """Name every failed input at the end of a batch; return the exit code."""
        if not failures:
            return 0
        self.err.print(f"{len(failures)} input(s) failed:")
        for line in failures:
            self.err.print(Text(f"  {line}"))
        return 1

    def record(self, obj: dict) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress | None]:
        """Rich progress bars, only when stderr is a terminal and not --quiet."""
        if self.quiet or not self.err.is_terminal:
            yield None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.err, transient=False) as bar:
            yield bar
