"""Bad input: each gives a non-zero exit, a one-line error that names the file (or the
model, or the folder), and no partial output. Usage errors exit 2; ``--help`` explains
every option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import ct_hu_phantom, files_in, one_line_error, plain, random_grey, random_rgb, write_ct_dicom

from resample_cli.priors import load_registry

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


def _truncated_png(folder: Path) -> Path:
    path = random_rgb(folder / "cut.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _array(folder: Path, value: float) -> Path:
    arr = np.full((32, 32), 0.5, np.float32)
    arr[3, 4] = value
    np.save(folder / "bad.npy", arr)
    return folder / "bad.npy"


def _sinogram(folder: Path, shape=(25, 32), name="sino.npy") -> Path:
    np.save(folder / name, np.random.default_rng(0).random(shape).astype(np.float32))
    return folder / name


def _nan_npz(folder: Path) -> Path:
    sino = np.ones((10, 32), np.float32)
    sino[0, 0] = np.nan
    np.savez(folder / "nan.npz", sinogram=sino, angles=np.arange(10) * 18.0)
    return folder / "nan.npz"


# Each case: (task and its options, a function making the bad input in a folder,
# what the error line must say besides the file's name).
INPUT_CASES = {
    "missing file": (["deblur"], lambda d: d / "nowhere.png", "no such file"),
    "truncated image": (["deblur"], _truncated_png, "not a readable image"),
    "not an image": (
        ["deblur"],
        lambda d: _write(d / "text.png", b"hello, not a PNG"),
        "not a readable image",
    ),
    "empty file": (["superres", "--scale", "2"], lambda d: _write(d / "empty.png", b""), "empty file"),
    "NaN in an array": (["deblur"], lambda d: _array(d, np.nan), "NaN or infinite"),
    "inf in an array": (["deblur"], lambda d: _array(d, np.inf), "NaN or infinite"),
    "NaN in a sinogram": (["ct"], _nan_npz, "NaN or infinite"),
    "empty sinogram file": (["ct", "--angles", "25"], lambda d: _write(d / "s.npz", b""), "empty file"),
    "sinogram shape vs --angles": (["ct", "--angles", "20"], _sinogram, "does not match 20 angles"),
    "sinogram rows vs --angles with --layout": (
        ["ct", "--angles", "20", "--layout", "angles-first"],
        _sinogram,
        "has 25 angle rows but 20 angles",
    ),
    "operator output vs measurement": (
        ["nonlinear-deblur", "--operator", "torch.nn:AvgPool2d", "--operator-arg", "kernel_size=2"],
        lambda d: random_rgb(d / "photo.png"),
        "maps a 3x32x32 image to shape (3, 16, 16), but the measurement has shape (3, 32, 32)",
    ),
    "operator that fails": (
        [
            "nonlinear-deblur",
            "--operator",
            "torch.nn:Unflatten",
            "--operator-arg",
            "dim=1",
            "--operator-arg",
            "unflattened_size=[2,2]",
        ],
        lambda d: random_rgb(d / "photo.png"),
        "the forward model fails on a 3x32x32 image",
    ),
    "square sinogram": (["ct", "--angles", "32"], lambda d: _sinogram(d, (32, 32)), "--layout"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_bad_input_file_fails_with_one_line_naming_it(tmp_path, cli, model_args, case):
    task, make, problem = INPUT_CASES[case]
    (tmp_path / "in").mkdir()
    bad = make(tmp_path / "in")
    out = tmp_path / "out"
    r = cli(*task, bad, "-o", out, *model_args, expect=1)
    one_line_error(r.stderr, str(bad), problem)
    assert files_in(out) == set()
    assert "1 input(s) failed:" in r.stderr


def test_angles_file_of_the_wrong_length_names_both_files(tmp_path, cli, model_args):
    sino = _sinogram(tmp_path)  # 25 angles
    (tmp_path / "angles.txt").write_text("\n".join(str(a) for a in np.arange(20) * 9.0))
    out = tmp_path / "out"
    r = cli("ct", sino, "--angles-file", tmp_path / "angles.txt", "-o", out, *model_args, expect=1)
    one_line_error(r.stderr, str(sino), str(tmp_path / "angles.txt"), "20 angles")
    assert files_in(out) == set()


def test_unreadable_angles_file_is_a_usage_error(tmp_path, cli, model_args):
    (tmp_path / "angles.txt").write_text("0 10 twenty")
    r = cli(
        "ct",
        _sinogram(tmp_path),
        "--angles-file",
        tmp_path / "angles.txt",
        "-o",
        tmp_path / "o",
        *model_args,
        expect=2,
    )
    assert str(tmp_path / "angles.txt") in plain(r.stderr) and not (tmp_path / "o").exists()


def test_mask_of_another_size_names_image_and_mask(tmp_path, cli, model_args):
    random_rgb(tmp_path / "img.png")
    np.save(tmp_path / "m.npy", np.ones((16, 16), bool))
    out = tmp_path / "out"
    r = cli("inpaint", tmp_path / "img.png", "--mask", tmp_path / "m.npy", "-o", out, *model_args, expect=1)
    line = one_line_error(r.stderr, str(tmp_path / "img.png"), str(tmp_path / "m.npy"))
    assert "16x16" in line and "32x32" in line
    assert files_in(out) == set()


def test_a_mask_folder_without_the_inputs_mask(tmp_path, cli, model_args):
    random_rgb(tmp_path / "img.png")
    (tmp_path / "masks").mkdir()
    out = tmp_path / "out"
    r = cli("inpaint", tmp_path / "img.png", "--mask", tmp_path / "masks", "-o", out, *model_args, expect=1)
    one_line_error(r.stderr, str(tmp_path / "img.png"), "no file named img.*")
    assert files_in(out) == set()


@pytest.mark.parametrize("kind", ["no pixel data", "not CT"])
def test_simulate_ct_refuses_dicom_without_pixels_or_of_another_modality(tmp_path, cli, kind):
    path = tmp_path / "slice.dcm"
    write_ct_dicom(
        path, ct_hu_phantom(), modality="MR" if kind == "not CT" else "CT", pixels=kind != "no pixel data"
    )
    assert ("PixelData" in pydicom.dcmread(path)) == (kind == "not CT")
    out = tmp_path / "out"
    r = cli("simulate", "ct", path, "-o", out, expect=1)
    line = one_line_error(r.stderr, str(path))
    assert ("no pixel data" if kind == "no pixel data" else "modality is MR, not CT") in line
    assert files_in(out) == set()


def test_simulate_goes_on_past_a_bad_file(tmp_path, cli):
    random_grey(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"")
    r = cli("simulate", "deblur", tmp_path / "in", "-o", tmp_path / "out", expect=1)
    assert files_in(tmp_path / "out") == {"a.png"}
    one_line_error(r.stderr, str(tmp_path / "in" / "b.png"), "empty file")


# --- models and the output folder ----------------------------------------------------


def test_unknown_model_name(tmp_path, cli):
    random_rgb(tmp_path / "in.png")
    r = cli("deblur", tmp_path / "in.png", "-o", tmp_path / "out", "--model", "no-such-model", expect=1)
    line = one_line_error(r.stderr, "unknown model 'no-such-model'")
    assert "celebahq" in line  # the known names are listed
    assert files_in(tmp_path / "out") == set()


def test_weights_missing_while_offline_says_how_to_fetch_them(tmp_path, cli, offline):
    random_rgb(tmp_path / "in.png")
    r = cli(
        "deblur", tmp_path / "in.png", "-o", tmp_path / "out", "--model", "someone/missing-model", expect=1
    )
    line = one_line_error(r.stderr, "someone/missing-model", str(offline), "HF_HUB_OFFLINE")
    assert "resample models download someone/missing-model" in line
    assert files_in(tmp_path / "out") == set()


def test_default_model_missing_while_offline_names_its_pinned_revision(tmp_path, cli):
    random_rgb(tmp_path / "in.png")
    r = cli("deblur", tmp_path / "in.png", "-o", tmp_path / "out", expect=1)
    line = one_line_error(r.stderr, "'celebahq'", "CompVis/ldm-celebahq-256")
    assert load_registry()["celebahq"].revision in line and "resample models download celebahq" in line


@pytest.mark.parametrize("task", ["deblur", "simulate"])
def test_output_folder_that_cannot_be_created(tmp_path, cli, model_args, task):
    """A folder under a regular file cannot be made, even by root (for whom a read-only
    folder is still writable)."""
    random_rgb(tmp_path / "in.png")
    (tmp_path / "afile").write_text("a file, not a folder")
    target = tmp_path / "afile" / "sub"
    args = (
        ["deblur", tmp_path / "in.png", *model_args]
        if task == "deblur"
        else ["simulate", "deblur", tmp_path / "in.png"]
    )
    r = cli(*args, "-o", target, expect=1)
    assert "cannot create the output folder" in one_line_error(r.stderr, str(target))
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


# --- usage errors: exit 2, nothing written ------------------------------------------


USAGE_CASES = {
    "--scale 1": (["superres", "--scale", "1"], "--scale"),
    "--scale 1.5": (["superres", "--scale", "1.5"], "--scale"),
    "--sigma 0": (["deblur", "--sigma", "0"], "--sigma"),
    "--sigma -2": (["deblur", "--sigma", "-2"], "--sigma"),
    "--steps 0": (["deblur", "--steps", "0"], "--steps"),
    "even --kernel-size": (["deblur", "--kernel-size", "8"], "--kernel-size"),
    "negative --noise": (["deblur", "--noise", "-0.1"], "--noise"),
    "--samples 0": (["inpaint", "--mask", "m.png", "--samples", "0"], "--samples"),
    "unknown --preset": (["deblur", "--preset", "slow"], "--preset"),
    "bad --operator": (["nonlinear-deblur", "--operator", "no_such_module:Thing"], "--operator"),
    "bad --operator-arg": (["nonlinear-deblur", "--operator-arg", "novalue"], "--operator"),
    "bad --kernel": (["deblur", "--kernel", "nokernel.npy"], "--kernel"),
    "simulate --scale 1": (["simulate", "superres", "--scale", "1"], "--scale"),
    "simulate --sigma 0": (["simulate", "deblur", "--sigma", "0"], "--sigma"),
    "--angles and --angles-file": (["ct", "--angles", "4", "--angles-file", "in.png"], "--angles"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_errors_exit_2_and_write_nothing(tmp_path, cli, case):
    args, option = USAGE_CASES[case]
    random_rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    r = cli(*args, tmp_path / "in.png", "-o", out, expect=2)
    assert option in plain(r.stderr) and r.stdout == ""
    assert not out.exists()


def test_no_input_files_in_a_folder_is_a_usage_error(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("deblur", tmp_path / "empty", "-o", tmp_path / "out", expect=2)
    assert "no input files" in plain(r.stderr)


# --- help ---------------------------------------------------------------------------


COMMON_HELP = [
    ("--model", "registry name"),
    ("--revision", "Hub revision"),
    ("--preset", "[default: fast]"),
    ("--steps", "paper: 500, fast: 50"),
    ("--noise", "[0, 1] image units"),
    ("--noise", "[default: 0.005"),
    ("--seed", "[default: 0"),
    ("--samples", "[default: 1"),
    ("--batch-size", "[default: --samples, one input at a time]"),
    ("--shard", "K/N"),
    ("--device", "[default: auto]"),
    ("--dtype", "[default: float32]"),
    ("--output-dir", "[default: restored]"),
    ("--suffix", "'_restored'"),
    ("--skip-existing", "Skip inputs whose output already exists"),
    ("--overwrite", "[default: no-overwrite]"),
    ("--reference", "PSNR and SSIM"),
    ("--plot", "NAME.residual.png"),
    ("--quiet", "No progress bars"),
    ("--json", "stdout"),
]

HELP = {
    ("deblur",): [
        ("--sigma", "std in pixels"),
        ("--sigma", "[default: 3.0]"),
        ("--kernel-size", "[default: 61"),
        ("--kernel-size", "in pixels"),
        ("--kernel", ".npy or image"),
    ],
    ("superres",): [("--scale", "integer >= 2"), ("--scale", "[default: 4")],
    ("inpaint",): [("--mask", "white = observed"), ("--mask", "folder of masks")],
    ("nonlinear-deblur",): [
        ("--operator", "package.module:Class"),
        ("--operator", "[default: the built-in"),
        ("--operator-arg", "key=value"),
    ],
    ("ct",): [
        ("--angles", "degrees"),
        ("--angles-file", "one per sinogram row"),
        ("--angle-unit", "[default: deg]"),
        ("--layout", "det-first"),
        ("--image-size", "in pixels"),
        ("--image-size", "[default: the detector count]"),
        ("--dicom-template", "DICOM"),
    ],
}
SIMULATE_HELP = {
    "deblur": [("--sigma", "std in pixels"), ("--sigma", "[default: 3.0]"), ("--kernel-size", "in pixels")],
    "superres": [("--scale", "integer >= 2"), ("--scale", "[default: 4")],
    "inpaint": [("--missing", "[default: 0.7"), ("--box", "in pixels"), ("--mask", "white = observed")],
    "nonlinear-deblur": [("--operator", "package.module:Class"), ("--operator-arg", "key=value")],
    "ct": [
        ("--angles", "degrees"),
        ("--angles", "[default: 25"),
        ("--angles-file", "degrees"),
        ("--noise", "sinogram units"),
    ],
}


@pytest.mark.parametrize("command", [c[0] for c in HELP])
def test_help_of_each_restoring_command_gives_units_and_defaults(cli, command):
    text = plain(cli(command, "--help").stdout)
    for option, words in HELP[(command,)] + COMMON_HELP:
        assert option in text and words in text, (option, words)


@pytest.mark.parametrize("task", list(SIMULATE_HELP))
def test_help_of_each_simulate_command(cli, task):
    text = plain(cli("simulate", task, "--help").stdout)
    assert "--output-dir" in text
    for option, words in SIMULATE_HELP[task] + [("--noise", "[0, 1] image units"), ("--seed", "[default: 0")]:
        assert option in text and words in text, (option, words)


@pytest.mark.parametrize(
    "args", [[], ["simulate"], ["models"], ["models", "list"], ["models", "info"], ["models", "download"]]
)
def test_help_of_the_groups_and_models_commands(cli, args):
    text = plain(cli(*args, "--help").stdout)
    assert "Usage: resample" in text
    if not args:
        for command in ("deblur", "superres", "inpaint", "nonlinear-deblur", "ct", "simulate", "models"):
            assert command in text
