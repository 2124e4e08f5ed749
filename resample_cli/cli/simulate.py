"""``resample simulate TASK``: make the measurements of clean images, for trying the
restoring commands and for benchmarks.

The commands' options only: each imports the work (``measurements``, torch) when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DEFAULT_NOISE, RelativeNoise, check_one_noise, odd, positive

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


def _plan(
    inputs: list[Path],
    output_dir: Path,
    tails: list[str],
    reads: dict[str, Path | None],
    suffixes: set[str] | None = None,
) -> None:
    """The checks that come before any work, as usage errors (exit 2): some input to
    measure, and no measurement (NAME + each of ``tails``) that would replace a file the
    command reads (an input, or the file of an option in ``reads``) or that two inputs
    would both write. ``suffixes``: the inputs a folder holds (default: images)."""
    from .files import IMAGE_INPUTS, check_outputs_are_safe, expand_required

    sources = expand_required(inputs, suffixes or IMAGE_INPUTS)
    planned = [(source, [output_dir / f"{source.stem}{tail}" for tail in tails]) for source in sources]
    check_outputs_are_safe(planned, reads.items())


def _measurement_tail(npy: bool) -> str:
    return ".npy" if npy else ".png"


@simulate_app.command("deblur")
def sim_deblur(
    inputs: Clean,
    output_dir: OutDir,
    sigma: Annotated[float, typer.Option(callback=positive, help="Gaussian blur std in pixels.")] = 3.0,
    kernel_size: Annotated[
        int, typer.Option(min=1, callback=odd, help="Gaussian kernel width in pixels (odd).")
    ] = 61,
    kernel: Annotated[
        Path | None, typer.Option(help="Blur kernel file (.npy or image), scaled to sum 1.")
    ] = None,
    noise: Noise = DEFAULT_NOISE["deblur"],
    seed: Seed = 0,
    npy: Npy = False,
    overwrite: Overwrite = False,
) -> None:
    """Blur clean images and add noise."""
    _plan(inputs, output_dir, [_measurement_tail(npy)], {"--kernel": kernel})
    from .measurements import fixed_operator, simulate_images
    from .tasks import blur_operator

    op = blur_operator(sigma, kernel_size, kernel)
    raise typer.Exit(simulate_images(inputs, output_dir, noise, seed, npy, overwrite, fixed_operator(op)))


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
    _plan(inputs, output_dir, [_measurement_tail(npy)], {})
    from ..operators import BicubicDownsample
    from .measurements import fixed_operator, simulate_images

    op = BicubicDownsample(scale)
    raise typer.Exit(simulate_images(inputs, output_dir, noise, seed, npy, overwrite, fixed_operator(op)))


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
    _plan(inputs, output_dir, [_measurement_tail(npy), ".mask.png"], {"--mask": mask})
    from .measurements import inpainting_maker, simulate_images

    make = inpainting_maker(missing, box, mask)
    raise typer.Exit(simulate_images(inputs, output_dir, noise, seed, npy, overwrite, make))


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
    _plan(inputs, output_dir, [_measurement_tail(npy)], {})
    from .measurements import fixed_operator, simulate_images
    from .tasks import nonlinear_operator

    try:
        op = nonlinear_operator(operator, operator_arg or [])
    except (ValueError, ImportError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--operator") from None
    raise typer.Exit(simulate_images(inputs, output_dir, noise, seed, npy, overwrite, fixed_operator(op)))


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
    from .files import CT_INPUTS

    _plan(inputs, output_dir, [".npz"], {"--angles-file": angles_file}, CT_INPUTS)
    from .measurements import ct_angles, ct_maker, simulate_images
    from .tasks import read_clean_ct

    make = ct_maker(ct_angles(angles, angles_file))
    code = simulate_images(
        inputs, output_dir, noise, seed, False, overwrite, make, CT_INPUTS, read_clean_ct, relative_noise
    )
    raise typer.Exit(code)
