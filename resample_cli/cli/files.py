"""Expanding inputs (files, folders, globs) and naming outputs."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from ..io.errors import InputError
from ..io.images import ARRAY_SUFFIXES, IMAGE_SUFFIXES
from .options import CommonOptions

IMAGE_INPUTS = IMAGE_SUFFIXES | ARRAY_SUFFIXES
SINOGRAM_INPUTS = {".npy", ".npz"}
CT_INPUTS = IMAGE_INPUTS | {".dcm"}  # clean CT slices: DICOM in HU, or images in [0, 1]


def expand_inputs(items: Iterable[str | Path], suffixes: set[str]) -> list[Path]:
    """Files as given; folders as their files with one of ``suffixes`` (sorted, not
    recursive); patterns with * ? [ that the shell left unexpanded, globbed. A path
    that exists nowhere is kept, so that reading it reports it as missing."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and _matches(p, suffixes))
        elif not path.exists() and any(c in str(item) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(item)))
            out += [p for p in matches if p.is_file()] or [path]
        else:
            out.append(path)
    return out


def _matches(path: Path, suffixes: set[str]) -> bool:
    # Files the tool writes itself beside its outputs are never inputs.
    name = path.name.lower()
    if name.startswith(".") or ".report." in name or ".std." in name or ".mask." in name:
        return False
    return path.suffix.lower() in suffixes


def check_input_file(path: Path) -> None:
    """Fail with one line if ``path`` is not a file this process can read: what can be
    known without decoding it (its contents are checked when it is read)."""
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "not readable (permission denied)")


def match_by_name(path: Path, folder: Path, suffixes: Iterable[str], tags: Iterable[str] = ("",)) -> Path:
    """The file in ``folder`` named like ``path`` (its stem, optionally + a tag such as
    ".mask", with any of ``suffixes``)."""
    for tag in tags:
        for suffix in suffixes:
            candidate = folder / f"{path.stem}{tag}{suffix}"
            if candidate.is_file():
                return candidate
    raise InputError(path, f"no file named {path.stem}.* in {folder} to match it")


def stem_path(source: Path, common: CommonOptions, tail: str) -> Path:
    """The output of ``source`` ending in ``tail``: in --output-dir, with --suffix."""
    return common.output_dir / f"{source.stem}{common.suffix}{tail}"


def check_output_dir(folder: Path) -> None:
    """Create the output folder, or fail with one line if it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(folder, f"cannot create the output folder ({err.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, "output folder is not writable")
