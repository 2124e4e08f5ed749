"""The one error type for bad inputs and outputs."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A file that cannot be used; ``str()`` is one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
