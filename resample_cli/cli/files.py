"""Expanding inputs (files, folders, globs), naming outputs, and making sure no output
replaces a file the command reads."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import typer

from ..fileio.ct import is_sinogram_series
from ..fileio.dicom_detect import is_extensionless_dicom
from ..fileio.errors import InputError
from ..fileio.images import ARRAY_SUFFIXES, IMAGE_SUFFIXES, image_size
from .options import CommonOptions

IMAGE_INPUTS = IMAGE_SUFFIXES | ARRAY_SUFFIXES
SINOGRAM_INPUTS = {".npy", ".npz"}
CT_INPUTS = IMAGE_INPUTS | {".dcm"}  # clean CT slices: DICOM in HU, or images in [0, 1]
MASK_SUFFIXES = [".png", ".npy", ".tif", ".tiff", ".bmp"]
REPORT_TAIL = ".report.json"
# What the restoring commands' writers name their main outputs (writers.py): an input
# such as NAME.jpg is never one, even with a NAME.report.json beside it.
OUTPUT_SUFFIXES = {".png", ".tif", ".npy", ".dcm"}


def clean_inputs(task: str) -> set[str]:
    """What a folder of a task's clean images (``simulate TASK``, ``bench TASK --data``) may hold."""
    return CT_INPUTS if task == "ct" else IMAGE_INPUTS


def expand_inputs(items: Iterable[str | Path], suffixes: set[str], series: bool = False) -> list[Path]:
    """Files as given; folders as their files with one of ``suffixes`` (sorted, not
    recursive), leaving out this tool's own outputs, or with ``series`` a folder of DICOM
    files as itself (one series: a volume); patterns with * ? [ that the shell left
    unexpanded, globbed. A path that exists nowhere is kept, so that reading it reports it
    as missing. A file named twice is taken once."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if series and is_sinogram_series(path):
            out.append(path)
        elif path.is_dir():
            out += _folder_inputs(path, suffixes)
        elif not path.exists() and any(c in str(item) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(item)))
            out += [p for p in matches if p.is_file()] or [path]
        else:
            out.append(path)
    return _each_once(out)


def expand_required(items: Iterable[str | Path], suffixes: set[str], series: bool = False) -> list[Path]:
    """``expand_inputs``, where finding no input at all is a usage error (exit 2)."""
    sources = expand_inputs(items, suffixes, series)
    if not sources:
        outputs = sum(len(tool_outputs(Path(i))) for i in items if Path(i).is_dir())
        why = f" (left out: {outputs} output(s) of resample, each with its NAME.report.json beside it)"
        raise typer.BadParameter("no input files" + (why if outputs else ""), param_hint="INPUT")
    return sources


def _each_once(paths: list[Path]) -> list[Path]:
    """``paths`` in order, without a second name of the same file."""
    seen: set[Path] = set()
    unique = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def _folder_inputs(folder: Path, suffixes: set[str]) -> list[Path]:
    outputs = tool_outputs(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name not in outputs and _matches(p, suffixes)
    )


def tool_outputs(folder: Path) -> set[str]:
    """Names of the files in ``folder`` that a restoring command wrote: each has its
    report beside it (``NAME.png`` and ``NAME.report.json``). A rerun may read the folder
    it writes to, and must not restore its own earlier outputs."""
    names = {p.name for p in folder.iterdir()}
    reports = {name[: -len(REPORT_TAIL)] for name in names if name.endswith(REPORT_TAIL)}
    return {
        name for name in names if Path(name).stem in reports and Path(name).suffix.lower() in OUTPUT_SUFFIXES
    }


def _matches(path: Path, suffixes: set[str]) -> bool:
    # Files the tool writes itself beside its outputs are never inputs.
    name = path.name.lower()
    if name.startswith(".") or any(tag in name for tag in (".report.", ".std.", ".mask.", ".residual.")):
        return False
    # Scanners export DICOM without a suffix (IM0001): told by the DICM preamble.
    return path.suffix.lower() in suffixes or (".dcm" in suffixes and is_extensionless_dicom(path))


def check_input_file(path: Path) -> None:
    """Fail with one line if ``path`` is not a file (or a series' folder) this process can
    read: what can be known without decoding it (its contents are checked when it is read)."""
    if not path.exists():
        raise InputError(path, "no such file")
    if not (path.is_file() or path.is_dir()):
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


def mask_for(source: Path, mask: Path) -> Path:
    """One mask for every input, or the mask in a folder named like the input
    (``NAME.mask.png``, as ``simulate inpaint`` writes it, or ``NAME.png``)."""
    if mask.is_dir():
        return match_by_name(source, mask, MASK_SUFFIXES, tags=(".mask", ""))
    return mask


def check_mask_fits(source: Path, mask: Path) -> None:
    """Fail, naming the input and its mask, when the mask is not the input's size (read
    from the headers: found before a model loads)."""
    mask_path = mask_for(source, mask)
    (mh, mw), (h, w) = image_size(mask_path), image_size(source)
    if (mh, mw) != (h, w):
        raise InputError(source, f"mask {mask_path} is {mh}x{mw} but the image is {h}x{w}")


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


def check_outputs_are_safe(
    planned: Iterable[tuple[Path, Iterable[Path]]], read: Iterable[tuple[str, Path | None]] = ()
) -> None:
    """Refuse a plan, as a usage error (exit 2) before any work, in which an output would
    replace a file the command reads (an input, or a file named by an option), or two
    inputs would write the same file; the message names both. ``planned``: each input and
    the outputs it would write; ``read``: the options' files by option name (a folder
    stands for every file in it). Files are compared by resolved path (symlinks followed)
    and by inode (hard links)."""
    planned = [(source, list(outputs)) for source, outputs in planned]
    protected: dict[object, tuple[str, Path]] = {}  # identity -> what the file is, and its name
    for source, _ in planned:
        for key in _identity(source):
            protected.setdefault(key, ("the input", source))
    for option, path in read:
        for file in _files_named(path):
            for key in _identity(file):
                protected.setdefault(key, (f"the {option} file", file))
    writer_of: dict[Path, Path] = {}
    for source, outputs in planned:
        for output in outputs:
            clash = next((protected[key] for key in _identity(output) if key in protected), None)
            if clash is not None:
                what, path = clash
                target = "that input itself" if path == source else f"{what} {path}"
                raise typer.BadParameter(
                    f"{output}, the output of {source}, would replace {target}; "
                    "choose another --output-dir or a --suffix",
                    param_hint="--output-dir",
                )
            first = writer_of.setdefault(output.resolve(), source)
            if first != source:
                raise typer.BadParameter(
                    f"{first} and {source} would both be written to {output}; rename one, or run them separately",
                    param_hint="INPUT",
                )


def _identity(path: Path) -> set[object]:
    """What makes two names one file: the resolved path, and the inode of an existing file."""
    keys: set[object] = {path.resolve()}
    try:
        stat = path.stat()
    except OSError:
        return keys
    keys.add((stat.st_dev, stat.st_ino))
    return keys


def _files_named(path: Path | None) -> list[Path]:
    if path is None:
        return []
    return [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
