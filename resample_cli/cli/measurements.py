"""Measurements of clean images, y = A(x) + noise: the work of ``resample simulate``,
and of ``resample bench``, which measures its images the same way.

Imported by those commands only when they run: it imports torch.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from ..fileio.atomic import atomic_path
from ..fileio.ct import AIR_HU, equal_angles, hu_to_unit, read_angles_file, read_dicom_slice_facts
from ..fileio.dicom_detect import looks_like_dicom
from ..fileio.errors import InputError
from ..fileio.images import LoadedImage, read_image, save_array, write_image
from ..operators import GaussianNoise, Inpainting, ParallelBeamCT, box_mask, random_mask
from ..operators.base import Operator
from .console import Output
from .files import check_output_dir, clean_inputs, expand_inputs
from .tasks import mask_for, read_clean_ct, read_mask, task_operator, to_batch

# Side files to write, by name suffix; "npz" instead holds the arrays of a CT measurement's .npz.
Extras = dict[str, np.ndarray | dict[str, np.ndarray]]
Maker = Callable[[LoadedImage, torch.Generator], tuple[Operator, Extras]]


def noise_generator(seed: int, path: Path) -> torch.Generator:
    """The generator of one file's operator and noise: it depends on the seed and the file's name."""
    return torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(path.name.encode()))


def measure(
    op: Operator,
    clean: LoadedImage,
    noise: float,
    generator: torch.Generator,
    relative_noise: float | None = None,
) -> tuple[torch.Tensor, float]:
    """y = A(clean) + noise, a batch of one, and the noise std: ``noise``, or when
    ``relative_noise`` is given, that fraction of the clean measurement's largest magnitude."""
    with torch.no_grad():
        exact = op(to_batch(clean.data))
        sigma = noise if relative_noise is None else relative_noise * float(exact.abs().max())
        y = GaussianNoise(sigma)(exact, generator=generator)
        if isinstance(op, Inpainting):
            y = op(y)  # missing pixels hold no data, not noise
    return y, sigma


def simulate_images(
    task: str,
    options: Mapping[str, Any],
    inputs: list[Path],
    output_dir: Path,
    *,
    noise: float,
    seed: int,
    npy: bool,
    overwrite: bool,
) -> int:
    """``resample simulate TASK``: for each clean file, build the operator the task's
    ``options`` describe (and any side files), measure, add noise, write; the exit code.
    The ct option --relative-noise replaces ``noise`` as in ``measure``."""
    make = measurement_maker(task, options)  # a bad option is a usage error, before any file
    read, relative_noise = read_clean(task), options.get("relative_noise")
    out = Output()
    paths = expand_inputs(inputs, clean_inputs(task))
    try:
        check_output_dir(output_dir)
    except InputError as err:
        out.error(str(err))
        return 1
    failures = []
    for path in paths:
        try:
            with _warnings_to(out):
                clean = read(path)
                gen = noise_generator(seed, path)
                op, extras = make(clean, gen)
                y, sigma = measure(op, clean, noise, gen, relative_noise)
                written = _write_measurement(
                    path, output_dir, y[0].numpy(), clean.bit_depth, npy, overwrite, extras, sigma
                )
            note = "" if relative_noise is None else f"  (noise std {sigma:.4g})"
            out.log(f"{path} -> {', '.join(str(p) for p in written)}{note}")
        except (InputError, ValueError) as err:
            failures.append(str(err) if isinstance(err, InputError) else f"{path}: {err}")
            out.error(failures[-1])
    return out.summary(failures)


@contextlib.contextmanager
def _warnings_to(out: Output) -> Iterator[None]:
    """The warnings raised inside, as this tool's warning lines (also when it fails)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                out.warn(str(warning.message))


def _write_measurement(path, output_dir, y, bit_depth, npy, overwrite, extras, sigma) -> list[Path]:
    main = output_dir / (path.stem + (".npz" if "npz" in extras else ".npy" if npy else ".png"))
    side = {output_dir / f"{path.stem}{tag}": value for tag, value in extras.items() if tag != "npz"}
    targets = [main, *side]
    if not overwrite:
        for target in targets:
            if target.exists():
                raise InputError(target, "exists; pass --overwrite")
    if "npz" in extras:
        with atomic_path(main) as tmp, open(tmp, "wb") as f:
            # The noise std goes along, for `resample ct` to use when --noise is not given.
            np.savez(f, sinogram=y[0].astype(np.float32), noise_std=np.float64(sigma), **extras["npz"])
    elif npy:
        save_array(main, y[0] if y.shape[0] == 1 else y.transpose(1, 2, 0))
    else:
        write_image(main, y, bit_depth=16 if bit_depth == 16 and y.shape[0] == 1 else 8)
    for target, value in side.items():
        write_image(target, value)
    return targets


def measurement_maker(task: str, options: Mapping[str, Any]) -> Maker:
    """How ``simulate TASK`` and ``bench TASK`` measure each clean image, from the task's
    options (``task_options.TASK_OPTIONS``)."""
    if task == "inpaint":
        return inpainting_maker(options["missing"], options["box"], options["mask"])
    if task == "ct":
        return ct_maker(ct_angles(options["angles"], options["angles_file"]))
    op = task_operator(task, options)
    return lambda clean, gen: (op, {})  # the same operator for every image, with no side files


def read_clean(task: str) -> Callable[[Path], LoadedImage]:
    """How a task's clean images are read: for ct, DICOM slices (in HU) or grey images; else images."""
    return read_clean_ct if task == "ct" else read_image


def inpainting_maker(missing: float, box: int | None, mask: Path | None) -> Maker:
    """Per image: the mask of ``mask`` (a file or a folder matched by name), else a centred
    missing ``box``, else ``missing`` of the pixels at random; and NAME.mask.png."""

    def make(clean: LoadedImage, gen: torch.Generator):
        h, w = clean.data.shape[-2:]
        if mask is not None:
            m = torch.from_numpy(read_mask(mask_for(clean.path, mask)))
            if tuple(m.shape) != (h, w):
                raise InputError(clean.path, f"mask is {m.shape[0]}x{m.shape[1]} but the image is {h}x{w}")
        elif box is not None:
            m = box_mask((h, w), box)
        else:
            m = random_mask((h, w), missing, gen)
        m = m.reshape(h, w).float()  # Inpainting takes (H, W); the mask file is (1, H, W)
        return Inpainting(m), {".mask.png": m[None].numpy()}

    return make


def ct_angles(angles: int, angles_file: Path | None) -> np.ndarray:
    """Projection angles in degrees: read from ``angles_file``, else ``angles`` equally spaced."""
    try:
        return read_angles_file(angles_file) if angles_file is not None else equal_angles(angles)
    except InputError as err:
        raise typer.BadParameter(str(err), param_hint="--angles-file") from None


def ct_maker(theta: np.ndarray) -> Maker:
    """Per square slice: the parallel-beam projection at ``theta``. The .npz gets the angles
    and, from a DICOM slice, the slice's tags as JSON (``dicom_slice_facts``), which
    ``resample ct --dicom-template`` uses to place its derived slice."""

    def make(clean: LoadedImage, gen: torch.Generator):
        h, w = clean.data.shape[-2:]
        if h != w:
            raise InputError(clean.path, f"CT slice is {h}x{w}; a square slice is needed")
        warn_outside_circle(clean)
        arrays = {"angles": theta.astype(np.float64)}
        if looks_like_dicom(clean.path):
            arrays["dicom"] = np.array(json.dumps(read_dicom_slice_facts(clean.path)))
        return ParallelBeamCT([float(a) for a in theta], h), {"npz": arrays}

    return make


def warn_outside_circle(clean: LoadedImage) -> None:
    """Warn when a slice is not air outside its inscribed circle. Nothing is cut away: the
    projector (like skimage's radon with circle=True) samples rays as long as the slice is
    wide, which reach those pixels only at some angles, so they are measured in part and
    reconstructed poorly; the user should know, not find a bad corner."""
    image = clean.data[0]
    n = image.shape[0]
    offsets = np.arange(n) - n // 2
    outside = offsets[:, None] ** 2 + offsets[None, :] ** 2 > (n // 2) ** 2
    dense = outside & (image > hu_to_unit(np.float32(AIR_HU)))
    if dense.any():
        share = float(image[outside].sum() / image.sum())
        warnings.warn(
            f"{clean.path}: {int(dense.sum())} pixels outside the inscribed circle (radius {n // 2} px) are "
            f"not air ({share:.1%} of the slice's sum); they are projected as they are, but the rays "
            "reach them only at some angles, so they are measured in part and reconstructed poorly",
            stacklevel=2,
        )
