"""``resample simulate TASK``: make the measurements of clean images, for trying the
restoring commands and for benchmarks.

The commands' options only: each imports the work (``measurements``, torch) when it runs.
The task's options are ``task_options.TASK_OPTIONS``; the rest are declared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .options import (
    COMMON,
    DEFAULT_NOISE,
    NOISE_HELP,
    REQUIRED,
    argument,
    check_one_noise,
    given_options,
    option,
    takes,
)
from .task_options import TASK_OPTIONS, files_named

simulate_app = typer.Typer(
    help="Simulate measurements of clean images: y = A(x) + noise.", no_args_is_help=True
)

# What each command does, as its help says.
HELP = {
    "deblur": "Blur clean images and add noise.",
    "superres": "Downsample clean images (antialiased bicubic) and add noise.",
    "inpaint": "Remove pixels of clean images (writing NAME.mask.png, white = observed) and add noise.",
    "nonlinear-deblur": "Apply a nonlinear blur to clean images and add noise.",
    "ct": "Project clean CT slices into sinograms: NAME.npz with 'sinogram' (angles, detectors) and 'angles' "
    "(degrees). DICOM slices are mapped from HU to [0, 1] through the window [-1024, 3072].",
}
# The files a measurement NAME.EXT comes with, by task.
SIDE_FILES = {"inpaint": [".mask.png"]}

CLEAN = argument("inputs", list[Path], help="Clean images, folders or glob patterns.", show_default=False)
CLEAN_CT = CLEAN.but(help="Clean CT slices: DICOM (.dcm, in HU) or grey images/arrays in [0, 1].")
OUTPUT_DIR = COMMON["output_dir"].but(
    default=REQUIRED, help="Folder for the measurements.", show_default=False, rich_help_panel=None
)
NOISE = COMMON["noise"].but(help=NOISE_HELP, rich_help_panel=None)
SEED = COMMON["seed"].but(
    help="Seed; each file's noise depends on the seed and its name.", rich_help_panel=None
)
NPY = option(
    "npy",
    bool,
    False,
    flags=("--npy",),
    help="Write float32 .npy measurements (exact, unclipped) instead of PNG.",
)
OVERWRITE = COMMON["overwrite"].but(help="Replace existing measurement files.", rich_help_panel=None)


def _plan(task: str, inputs: list[Path], output_dir: Path, tail: str, reads: dict[str, Path | None]) -> None:
    """The checks that come before any work, as usage errors (exit 2): some input to
    measure, and no measurement (NAME + ``tail``, and the task's side files) that would
    replace a file the command reads (an input, or the file of an option in ``reads``) or
    that two inputs would both write."""
    from .files import check_outputs_are_safe, clean_inputs, expand_required

    tails = [tail, *SIDE_FILES.get(task, [])]
    sources = expand_required(inputs, clean_inputs(task))
    planned = [(source, [output_dir / f"{source.stem}{t}" for t in tails]) for source in sources]
    check_outputs_are_safe(planned, reads.items())


def _register(task: str) -> None:
    """Add ``resample simulate TASK``. CT writes its sinograms as .npz, so it takes no --npy."""
    is_ct = task == "ct"
    task_options = TASK_OPTIONS[task].for_measuring()
    options = [
        CLEAN_CT if is_ct else CLEAN,
        OUTPUT_DIR,
        *task_options,
        NOISE.but(default=DEFAULT_NOISE[task]),
        SEED,
        *([] if is_ct else [NPY]),
        OVERWRITE,
    ]

    @takes(options, context=True)
    def command(
        ctx: typer.Context,
        inputs: list[Path],
        output_dir: Path,
        noise: float,
        seed: int,
        overwrite: bool,
        npy: bool = False,
        **values: Any,
    ) -> None:
        check_one_noise(given_options(ctx), values.get("relative_noise"))
        tail = ".npz" if is_ct else ".npy" if npy else ".png"
        _plan(task, inputs, output_dir, tail, files_named(task_options, values))
        from .measurements import simulate_images

        code = simulate_images(
            task, values, inputs, output_dir, noise=noise, seed=seed, npy=npy, overwrite=overwrite
        )
        raise typer.Exit(code)

    simulate_app.command(task, help=HELP[task])(command)


for _task in TASK_OPTIONS:
    _register(_task)
