"""``resample bench``: the tables it writes, checked against independent computations.

The diffusion solvers run a tiny random prior for a few steps, so their images are poor;
what is checked is the plumbing (one row per image and solver, the cost counts their
schedules imply, the mean ± std of the rows) and, for the classical baselines, the
numbers themselves.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STEPS, one_line_error, random_rgb, read_unit
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from resample_cli.operators import ParallelBeamCT
from resample_cli.training.data import dead_leaves, ellipse_phantoms

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

CSV_HEADER = [
    "image",
    "solver",
    "psnr_db",
    "ssim",
    "lpips",
    "residual_ratio",
    "unet_forward",
    "unet_backward",
    "decoder_forward",
    "decoder_backward",
    "seconds",
    "peak_rss_mib",
    "note",
]
CPU = ["--device", "cpu"]
Q8 = 0.5 / 255  # largest rounding error of an 8-bit PNG


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def md_table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after ``heading``, as lists of cells."""
    lines = md[md.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def skimage_metrics(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of (C, H, W) images with the window the tool documents."""
    psnr = peak_signal_noise_ratio(ref, x, data_range=1.0)
    ssim = structural_similarity(
        ref, x, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=True
    )
    return psnr, ssim


def pillow_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """Each channel of a (C, H, W) float image resized to size x size by Pillow's bicubic."""
    return np.stack(
        [
            np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
            for c in image
        ]
    ).astype(np.float64)


@pytest.fixture
def fake_lpips(tmp_path, monkeypatch):
    """An importable ``lpips`` package whose LPIPS is the mean absolute difference (in the
    [-1, 1] inputs LPIPS takes), and an empty torch hub cache; yields that cache's
    checkpoints folder, where the test may put the AlexNet weights file."""
    package = tmp_path / "site" / "lpips"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import torch\n"
        "class LPIPS(torch.nn.Module):\n"
        "    def __init__(self, net, verbose=True):\n"
        "        super().__init__()\n"
        "        assert net == 'alex'\n"
        "    def forward(self, a, b):\n"
        "        return (a - b).abs().mean()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield tmp_path / "torch" / "hub" / "checkpoints"
    sys.modules.pop("lpips", None)


# --- tables, rows and counts ----------------------------------------------------------


def test_deblur_rows_counts_and_summary(tmp_path, cli, model_args):
    out = tmp_path / "bench"
    r = cli(
        "bench",
        "deblur",
        "--synthetic",
        "dead-leaves",
        "--n",
        "2",
        "--sigma",
        "1.5",
        "--kernel-size",
        "9",
        "--solvers",
        "resample,latent-dps,psld,classical",
        "-o",
        out,
        *model_args,
        *CPU,
    )
    assert {p.name for p in out.iterdir()} == {"bench.md", "bench.csv"}
    header, rows = read_csv(out / "bench.csv")
    assert header == CSV_HEADER
    solvers = ["resample:fast", "latent-dps:fast", "psld:fast", "tikhonov"]
    assert [(row["image"], row["solver"]) for row in rows] == [
        (image, solver) for image in ("dead-leaves-000", "dead-leaves-001") for solver in solvers
    ]
    for row in rows:
        counts = {
            k: int(row[k]) for k in ("unet_forward", "unet_backward", "decoder_forward", "decoder_backward")
        }
        if row["solver"] == "resample:fast":
            # The fast preset: one UNet pass per step, no look-ahead and no DPS gradient.
            assert counts["unet_forward"] == STEPS and counts["unet_backward"] == 0
            assert counts["decoder_forward"] >= 1
        elif row["solver"] in ("latent-dps:fast", "psld:fast"):
            assert counts == {
                "unet_forward": STEPS,
                "unet_backward": STEPS,
                "decoder_forward": STEPS + 1,
                "decoder_backward": STEPS,
            }
        else:
            assert counts == dict.fromkeys(counts, 0)
        assert float(row["seconds"]) > 0 and float(row["peak_rss_mib"]) > 50
        assert math.isfinite(float(row["psnr_db"])) and -1 <= float(row["ssim"]) <= 1
        assert float(row["residual_ratio"]) > 0 and row["note"] == ""
        if importlib.util.find_spec("lpips") is None:
            assert row["lpips"] == "n/a (lpips not installed)"

    md = (out / "bench.md").read_text()
    assert md.startswith("# resample bench deblur")
    assert "- noise σ_y: 0.005" in md and "- model: " + str(model_args[1]) in md
    assert "peak RSS (MiB)" in md and "residual / (σ_y·√m)" in md
    assert len(md_table(md, "## Per image")) == 8
    summary = {cells[0]: cells for cells in md_table(md, "## Mean ± std over images")}
    assert list(summary) == solvers
    for solver, cells in summary.items():
        psnrs = [float(row["psnr_db"]) for row in rows if row["solver"] == solver]
        assert cells[1] == f"{statistics.fmean(psnrs):.2f} ± {statistics.stdev(psnrs):.2f}"
        assert cells[-1] == "2"
    assert "dead-leaves-001 tikhonov: PSNR" in r.stderr


def test_inpaint_measures_as_simulate_does_and_tikhonov_matches_its_closed_form(tmp_path, cli):
    clean_dir = tmp_path / "clean"
    for i, name in enumerate(("a", "b")):
        random_rgb(clean_dir / f"{name}.png", seed=i)
    lam, noise = 0.05, 0.02
    options = ["--box", "8", "--noise", str(noise), "--seed", "3"]
    out = tmp_path / "bench"
    cli(
        "bench",
        "inpaint",
        "--data",
        clean_dir,
        *options,
        "--solvers",
        "classical",
        "--tikhonov-lam",
        str(lam),
        "--save-images",
        "-o",
        out,
        *CPU,
    )
    # The same measurement as `simulate`, which writes it exactly with --npy.
    cli("simulate", "inpaint", clean_dir, "-o", tmp_path / "meas", "--npy", *options)
    _, rows = read_csv(out / "bench.csv")
    assert [(row["image"], row["solver"]) for row in rows] == [("a.png", "tikhonov"), ("b.png", "tikhonov")]
    for row, name in zip(rows, ("a", "b"), strict=True):
        y = np.load(tmp_path / "meas" / f"{name}.npy").astype(np.float64).transpose(2, 0, 1)
        mask = read_unit(tmp_path / "meas" / f"{name}.mask.png")
        clean = read_unit(clean_dir / f"{name}.png")
        # argmin ||y - M x||^2 + lam ||x - 0.5||^2, pixel by pixel.
        expected = np.clip((mask * y + lam * 0.5) / (mask + lam), 0, 1)
        psnr, ssim = skimage_metrics(expected, clean)
        assert float(row["psnr_db"]) == pytest.approx(psnr, abs=1e-3)
        assert float(row["ssim"]) == pytest.approx(ssim, abs=1e-4)
        m = mask.sum() * 3  # observed entries over the three channels
        ratio = np.linalg.norm(y - mask * expected) / (noise * math.sqrt(m))
        assert float(row["residual_ratio"]) == pytest.approx(ratio, rel=1e-3)
        saved = read_unit(out / "images" / f"{name}.tikhonov.png")
        np.testing.assert_allclose(saved, expected, atol=Q8 + 1e-5)


def test_superres_bicubic_matches_pillow_and_lpips_comes_from_the_package(tmp_path, cli, fake_lpips):
    fake_lpips.mkdir(parents=True)
    (fake_lpips / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    random_rgb(tmp_path / "clean" / "photo.png", seed=5)
    out = tmp_path / "bench"
    cli(
        "bench",
        "superres",
        "--data",
        tmp_path / "clean",
        "--scale",
        "2",
        "--noise",
        "0",
        "--solvers",
        "classical",
        "-o",
        out,
        *CPU,
    )
    clean = read_unit(tmp_path / "clean" / "photo.png")
    expected = np.clip(pillow_bicubic(pillow_bicubic(clean, 16), 32), 0, 1)
    psnr, ssim = skimage_metrics(expected, clean)
    _, rows = read_csv(out / "bench.csv")
    assert len(rows) == 1 and rows[0]["solver"] == "bicubic"
    assert float(rows[0]["psnr_db"]) == pytest.approx(psnr, abs=1e-3)
    assert float(rows[0]["ssim"]) == pytest.approx(ssim, abs=1e-4)
    # The fake LPIPS is the mean |a - b| of the [-1, 1] images: twice that in [0, 1].
    assert float(rows[0]["lpips"]) == pytest.approx(2 * np.abs(expected - clean).mean(), abs=1e-5)
    assert rows[0]["residual_ratio"] == ""  # no noise, no ratio
    summary = md_table((out / "bench.md").read_text(), "## Mean ± std over images")
    assert summary[0][4] == "n/a (σ_y = 0)"


def test_lpips_without_cached_weights_says_why(tmp_path, cli, fake_lpips):
    out = tmp_path / "bench"
    args = ["superres", "--synthetic", "dead-leaves", "--n", "1", "--size", "16", "--solvers", "bicubic"]
    cli("bench", *args, "-o", out, *CPU)
    _, rows = read_csv(out / "bench.csv")
    assert rows[0]["lpips"] == f"n/a (AlexNet weights not cached in {fake_lpips})"
    assert not fake_lpips.exists()  # nothing was downloaded


def test_ct_on_synthetic_ellipses_at_the_priors_resolution(tmp_path, cli, grey_prior_dir):
    out = tmp_path / "bench"
    cli(
        "bench",
        "ct",
        "--synthetic",
        "ellipses",
        "--n",
        "2",
        "--angles",
        "12",
        "--noise",
        "0.5",
        "--solvers",
        "resample,classical",
        "--tv-weight",
        "0.5",
        "--save-images",
        "-o",
        out,
        "--model",
        grey_prior_dir,
        "--steps",
        STEPS,
        *CPU,
    )
    _, rows = read_csv(out / "bench.csv")
    assert [row["solver"] for row in rows] == ["resample:fast", "fbp", "tv-ls"] * 2
    # The prior decodes 32 x 32 images: the phantoms are drawn at that size with the seed.
    phantoms = ellipse_phantoms(2, 32, torch.Generator().manual_seed(0)).double().numpy()
    for row in rows:
        index = int(row["image"][-3:])
        saved = read_unit(out / "images" / f"{row['image']}.{row['solver'].replace(':', '-')}.png")
        assert saved.shape == (1, 32, 32)
        assert float(row["psnr_db"]) == pytest.approx(
            peak_signal_noise_ratio(phantoms[index], saved), abs=0.05
        )
    tv = [float(row["psnr_db"]) for row in rows if row["solver"] == "tv-ls"]
    fbp = [float(row["psnr_db"]) for row in rows if row["solver"] == "fbp"]
    assert min(np.subtract(tv, fbp)) > 0  # TV regularisation beats plain FBP at 12 angles
    md = (out / "bench.md").read_text()
    assert "2 synthetic ellipses, 32x32, 1 channel(s), seed 0" in md


def test_synthetic_dead_leaves_are_the_generators(tmp_path, cli):
    out = tmp_path / "bench"
    args = ["--synthetic", "dead-leaves", "--n", "2", "--size", "16", "--seed", "4", "--noise", "0"]
    cli("bench", "deblur", *args, "--solvers", "classical", "--save-images", "-o", out, *CPU)
    images = dead_leaves(2, 16, 3, torch.Generator().manual_seed(4)).double().numpy()
    _, rows = read_csv(out / "bench.csv")
    for row, clean in zip(rows, images, strict=True):
        saved = read_unit(out / "images" / f"{row['image']}.tikhonov.png")
        assert float(row["psnr_db"]) == pytest.approx(peak_signal_noise_ratio(clean, saved), abs=0.05)


# --- not applicable, errors -------------------------------------------------------------


def test_psld_on_nonlinear_deblur_is_a_not_applicable_row(tmp_path, cli, model_args):
    out = tmp_path / "bench"
    r = cli(
        "bench",
        "nonlinear-deblur",
        "--synthetic",
        "dead-leaves",
        "--n",
        "1",
        "--solvers",
        "psld,classical",
        "-o",
        out,
        *model_args,
        *CPU,
    )
    _, rows = read_csv(out / "bench.csv")
    psld, tv = rows
    assert psld["solver"] == "psld:fast"
    assert psld["note"] == "not applicable: psld:fast needs a linear operator"
    assert psld["psnr_db"] == psld["unet_forward"] == psld["seconds"] == ""
    assert tv["solver"] == "tv-ls" and tv["note"] == "" and float(tv["psnr_db"]) > 0
    assert "not applicable: psld:fast needs a linear operator" in r.stderr
    summary = {cells[0]: cells for cells in md_table((out / "bench.md").read_text(), "## Mean ± std")}
    assert summary["psld:fast"][-1] == "0; not applicable: psld:fast needs a linear operator"


def test_refuses_to_overwrite_unless_asked(tmp_path, cli):
    out = tmp_path / "bench"
    args = [
        "bench",
        "superres",
        "--synthetic",
        "dead-leaves",
        "--n",
        "1",
        "--size",
        "16",
        "--solvers",
        "bicubic",
    ]
    cli(*args, "-o", out, *CPU)
    before = (out / "bench.csv").read_bytes(), (out / "bench.md").read_bytes()
    r = cli(*args, "--seed", "1", "-o", out, *CPU, expect=1)
    assert "output exists; pass --overwrite" in one_line_error(r.stderr, str(out / "bench.md"))
    assert ((out / "bench.csv").read_bytes(), (out / "bench.md").read_bytes()) == before
    cli(*args, "--seed", "1", "--overwrite", "-o", out, *CPU)
    assert (out / "bench.csv").read_bytes() != before[0]  # another image, other numbers


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--synthetic", "ellipses", "--solvers", "resample,magic"], ["--solvers", "unknown solver 'magic'"]),
        (["--synthetic", "ellipses", "--solvers", "resample:slow"], ["--solvers", "unknown preset 'slow'"]),
        (["--synthetic", "ellipses", "--solvers", "fbp"], ["--solvers", "tikhonov"]),  # fbp is CT's
        (["--synthetic", "ellipses", "--scale", "2"], ["--scale", "applies to superres only"]),
        (["--data", ".", "--n", "3"], ["--n", "applies to --synthetic images only"]),
        (["--data", ".", "--synthetic", "ellipses"], ["give exactly one of --data DIR and --synthetic KIND"]),
        (
            ["--synthetic", "ellipses", "--solvers", "classical"],
            ["--size", "classical solvers have no prior"],
        ),
    ],
)
def test_usage_errors(tmp_path, cli, args, needles):
    r = cli("bench", "deblur", *args, "-o", tmp_path / "bench", expect=2)
    text = " ".join(r.stderr.split())
    assert all(needle in text for needle in needles), text
    assert not (tmp_path / "bench").exists()


def test_ct_relative_noise_sets_each_images_sigma_and_only_applies_to_ct(tmp_path, cli):
    out = tmp_path / "bench"
    args = ["--synthetic", "ellipses", "--n", "2", "--size", "32", "--solvers", "fbp", *CPU]
    cli("bench", "ct", *args, "--angles", "12", "--relative-noise", "0.02", "-o", out)
    phantoms = ellipse_phantoms(2, 32, torch.Generator().manual_seed(0))
    sigmas = [0.02 * float(ParallelBeamCT(12, 32)(p[None]).max()) for p in phantoms]
    md = (out / "bench.md").read_text()
    assert f"0.02 of each sinogram's maximum ({min(sigmas):.4g} to {max(sigmas):.4g})" in md
    # Image 0 measured with its sigma given absolutely: the same draws at the same scale, so
    # the same FBP image and the same residual over sigma.
    cli("bench", "ct", *args, "--angles", "12", "--noise", repr(sigmas[0]), "-o", tmp_path / "abs")
    relative, absolute = (read_csv(folder / "bench.csv")[1][0] for folder in (out, tmp_path / "abs"))
    assert relative["image"] == absolute["image"] == "ellipses-000"
    assert float(relative["residual_ratio"]) == pytest.approx(float(absolute["residual_ratio"]), rel=1e-3)
    assert float(relative["psnr_db"]) == pytest.approx(float(absolute["psnr_db"]), abs=1e-3)

    r = cli("bench", "deblur", *args, "--relative-noise", "0.02", "-o", tmp_path / "b2", expect=2)
    assert "--relative-noise" in r.output and "applies to ct only" in r.output
