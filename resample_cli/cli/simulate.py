"""``resample simulate TASK``: make the measurements of clean images, for trying the
restoring commands and for benchmarks."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from ..io.atomic import atomic_path
from ..io.ct import equal_angles, read_angles_file
from ..io.errors import InputError
from ..io.images import LoadedImage, read_image, save_array, write_image
from ..operators import BicubicDownsample, GaussianNoise, Inpainting, ParallelBeamCT, box_mask, random_mask
from ..operators.base import Operator
from .console import Output
from .files import check_output_dir, expand_inputs
from .options import RelativeNoise, check_one_noise, positive
from .tasks import (
    DEFAULT_NOISE,
    IMAGE_INPUTS,
    blur_operator,
    mask_for,
    nonlinear_operator,
    read_clean_ct,
    read_mask,
    to_batch,
)

simulate_app = typer.Typer(
    help="Simulate measurements of clean images: y = A(x) + noise.", no_args_is_help=True
)

Clean = Annotated[
    list[Path], typer.Argument(help="Clean images, folders or glob patterns.", show_default=False)
]
OutDir = Annotated[
    Path, typer.Option("--output-dir", "-o", help="Folder for the measurements.", show_default=False)
]
Noise = Annotated[float, typer.Option(min=0.0, help="Noise std in [0, 1] image units (CT: sinogram units).")]
Seed = Annotated[int, typer.Option(min=0, help="Seed; each file's noise depends on the seed and its name.")]
Npy = Annotated[
    bool, typer.Option("--npy", help="Write float32 .npy measurements (exact, unclipped) instead of PNG.")
]
Overwrite = Annotated[bool, typer.Option(help="Replace existing measurement files.")]
CT_INPUTS = IMAGE_INPUTS | {".dcm"}  # clean CT slices: DICOM in HU, or images in [0, 1]


Maker = Callable[[LoadedImage, torch.Generator], tuple[Operator, dict[str, np.ndarray]]]


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


def _simulate_images(
    inputs: list[Path],
    output_dir: Path,
    noise: float,
    seed: int,
    npy: bool,
    overwrite: bool,
    make: Maker,
    suffixes: set[str] = IMAGE_INPUTS,
    read: Callable[[Path], LoadedImage] = read_image,
    relative_noise: float | None = None,
) -> int:
    """For each clean file: build the operator (and any side files), measure, add noise,
    write. ``make`` returns the operator and extra files to write, by name suffix;
    ``relative_noise`` replaces ``noise`` as in ``measure``."""
    out = Output()
    paths = expand_inputs(inputs, suffixes)
    try:
        check_output_dir(output_dir)
    except InputError as err:
        out.error(str(err))
        return 1
    failures = []
    for path in paths:
        try:
            clean = read(path)
            gen = noise_generator(seed, path)
            op, extras = make(clean, gen)
            y, sigma = measure(op, clean, noise, gen, relative_noise)
            written = _write_measurement(
                path, output_dir, y[0].numpy(), clean.bit_depth, npy, overwrite, extras
            )
            note = "" if relative_noise is None else f"  (noise std {sigma:.4g})"
            out.log(f"{path} -> {', '.join(str(p) for p in written)}{note}")
        except (InputError, ValueError) as err:
            failures.append(str(err) if isinstance(err, InputError) else f"{path}: {err}")
            out.error(failures[-1])
    return out.summary(failures)


def _write_measurement(path, output_dir, y, bit_depth, npy, overwrite, extras) -> list[Path]:
    main = output_dir / (path.stem + (".npz" if "npz" in extras else ".npy" if npy else ".png"))
    side = {output_dir / f"{path.stem}{tag}": value for tag, value in extras.items() if tag != "npz"}
    targets = [main, *side]
    if not overwrite:
        for target in targets:
            if target.exists():
                raise InputError(target, "exists; pass --overwrite")
    if "npz" in extras:
        with atomic_path(main) as tmp, open(tmp, "wb") as f:
            np.savez(f, sinogram=y[0].astype(np.float32), angles=extras["npz"])
    elif npy:
        save_array(main, y[0] if y.shape[0] == 1 else y.transpose(1, 2, 0))
    else:
        write_image(main, y, bit_depth=16 if bit_depth == 16 and y.shape[0] == 1 else 8)
    for target, value in side.items():
        write_image(target, value)
    return targets


def fixed_operator(op: Operator) -> Maker:
    """The same operator for every image, with no side files."""
    return lambda clean, gen: (op, {})


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
    """Per square slice: the parallel-beam projection at ``theta``; the angles go into the .npz."""

    def make(clean: LoadedImage, gen: torch.Generator):
        h, w = clean.data.shape[-2:]
        if h != w:
            raise InputError(clean.path, f"CT slice is {h}x{w}; a square slice is needed")
        return ParallelBeamCT([float(a) for a in theta], h), {"npz": theta.astype(np.float64)}

    return make


@simulate_app.command("deblur")
def sim_deblur(
    inputs: Clean,
    output_dir: OutDir,
    sigma: Annotated[float, typer.Option(callback=positive, help="Gaussian blur std in pixels.")] = 3.0,
    kernel_size: Annotated[int, typer.Option(min=1, help="Gaussian kernel width in pixels (odd).")] = 61,
    kernel: Annotated[
        Path | None, typer.Option(help="Blur kernel file (.npy or image), scaled to sum 1.")
    ] = None,
    noise: Noise = DEFAULT_NOISE["deblur"],
    seed: Seed = 0,
    npy: Npy = False,
    overwrite: Overwrite = False,
) -> None:
    """Blur clean images and add noise."""
    op = blur_operator(sigma, kernel_size, kernel)
    raise typer.Exit(_simulate_images(inputs, output_dir, noise, seed, npy, overwrite, fixed_operator(op)))


@simulate_app.command("superres")
def sim_superres(
    inputs: Clean,
    output_dir: OutDir,
    scale: Annotated[int, typer.Option(min=2, help="Downsampling factor, an integer >= 2.")] = 4,
    noise: Noise = DEFAULT_NOISE["superres"],
    seed: Seed = 0,
    npy: Npy = False,
    overwrite: Overwrite = False,
) -> None:
    """Downsample clean images (antialiased bicubic) and add noise."""
    op = BicubicDownsample(scale)
    raise typer.Exit(_simulate_images(inputs, output_dir, noise, seed, npy, overwrite, fixed_operator(op)))


@simulate_app.command("inpaint")
def sim_inpaint(
    inputs: Clean,
    output_dir: OutDir,
    missing: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of pixels missing, at random.")
    ] = 0.7,
    box: Annotated[
        int | None, typer.Option(min=1, help="Instead: a centred missing square of this side, in pixels.")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Instead: a mask file (white = observed) or a folder of them.")
    ] = None,
    noise: Noise = DEFAULT_NOISE["inpaint"],
    seed: Seed = 0,
    npy: Npy = False,
    overwrite: Overwrite = False,
) -> None:
    """Remove pixels of clean images (writing NAME.mask.png, white = observed) and add noise."""
    make = inpainting_maker(missing, box, mask)
    raise typer.Exit(_simulate_images(inputs, output_dir, noise, seed, npy, overwrite, make))


@simulate_app.command("nonlinear-deblur")
def sim_nonlinear(
    inputs: Clean,
    output_dir: OutDir,
    operator: Annotated[
        str | None, typer.Option(help="Forward model 'package.module:Class'. [default: NonlinearBlur]")
    ] = None,
    operator_arg: Annotated[
        list[str] | None, typer.Option(help="key=value keyword argument (repeatable).")
    ] = None,
    noise: Noise = DEFAULT_NOISE["nonlinear-deblur"],
    seed: Seed = 0,
    npy: Npy = False,
    overwrite: Overwrite = False,
) -> None:
    """Apply a nonlinear blur to clean images and add noise."""
    try:
        op = nonlinear_operator(operator, operator_arg or [])
    except (ValueError, ImportError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--operator") from None
    raise typer.Exit(_simulate_images(inputs, output_dir, noise, seed, npy, overwrite, fixed_operator(op)))


@simulate_app.command("ct")
def sim_ct(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Clean CT slices: DICOM (.dcm, in HU) or grey images/arrays in [0, 1].", show_default=False
        ),
    ],
    output_dir: OutDir,
    angles: Annotated[
        int, typer.Option(min=1, help="Projection angles, equally spaced over [0, 180) degrees.")
    ] = 25,
    angles_file: Annotated[
        Path | None, typer.Option(help="Instead: a text or .npy file of angles in degrees.")
    ] = None,
    noise: Noise = DEFAULT_NOISE["ct"],
    relative_noise: RelativeNoise = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Project clean CT slices into sinograms: NAME.npz with 'sinogram' (angles, detectors) and 'angles' (degrees).
    DICOM slices are mapped from HU to [0, 1] through the window [-1024, 3072]."""
    check_one_noise(ctx, relative_noise)
    make = ct_maker(ct_angles(angles, angles_file))
    code = _simulate_images(
        inputs, output_dir, noise, seed, False, overwrite, make, CT_INPUTS, read_clean_ct, relative_noise
    )
    raise typer.Exit(code)
