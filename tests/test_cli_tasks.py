"""simulate -> restore -> report, end to end through the CLI, for all five tasks.

Each run uses a tiny random prior, so the restorations are poor; what is checked is the
plumbing: the measurement ``simulate`` writes is A(clean) + noise, the restoring command
writes the outputs it should, and the report's residual is what an independent
recomputation from the written output gives.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from conftest import (
    STEPS,
    apply,
    check_report,
    check_residual,
    ct_hu_phantom,
    files_in,
    load_report,
    random_grey,
    random_rgb,
    read_unit,
    write_ct_dicom,
)
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import radon

from resample_cli.fileio.ct import hu_to_unit
from resample_cli.operators import (
    BicubicDownsample,
    Blur,
    GaussianBlur,
    Inpainting,
    NonlinearBlur,
    ParallelBeamCT,
)

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

Q8 = 0.5 / 255  # largest rounding error of an 8-bit PNG, in [0, 1] units


def _skimage_metrics(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of (C, H, W) images by scikit-image, with the window the report
    documents (11x11 Gaussian of std 1.5, sample covariances)."""
    psnr = peak_signal_noise_ratio(ref, out, data_range=1.0)
    ssim = structural_similarity(
        ref, out, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=True
    )
    return psnr, ssim


# --- deblur -------------------------------------------------------------------------


def test_deblur_npy_round_trip_residual_is_exact_and_reference_metrics_match_skimage(
    tmp_path, cli, model_args, prior_dir
):
    clean = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "face.npy", clean)
    blur = ["--sigma", "1.5", "--kernel-size", "9"]
    cli(
        "simulate",
        "deblur",
        tmp_path / "face.npy",
        "-o",
        tmp_path / "meas",
        "--npy",
        "--noise",
        "0.02",
        *blur,
    )
    y = np.load(tmp_path / "meas" / "face.npy").transpose(2, 0, 1)
    noise = y - apply(GaussianBlur(1.5, 9), clean.transpose(2, 0, 1))
    assert noise.std() == pytest.approx(0.02, rel=0.1) and abs(noise.mean()) < 0.003

    out = tmp_path / "out"
    source = tmp_path / "meas" / "face.npy"
    r = cli(
        "deblur",
        source,
        *blur,
        "--noise",
        "0.02",
        "-o",
        out,
        "--reference",
        tmp_path / "face.npy",
        *model_args,
    )
    assert files_in(out) == {"face.npy", "face.report.json"}
    report = load_report(out / "face.report.json")
    check_report(report, task="deblur", source=source, output=out / "face.npy", model=prior_dir, noise=0.02)
    assert report["operator"] | {"name": "GaussianBlur", "sigma": 1.5, "kernel_size": 9} == report["operator"]

    x = read_unit(out / "face.npy")
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    check_residual(report, y, apply(GaussianBlur(1.5, 9), x), atol=1e-6)

    psnr, ssim = _skimage_metrics(x, clean.transpose(2, 0, 1).astype(np.float64))
    assert report["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-4)
    assert report["metrics"]["ssim"] == pytest.approx(ssim, abs=1e-4)
    assert f"residual/sigma_y = {report['residual']['ratio']:.3f}" in r.stderr


def test_deblur_with_a_motion_kernel_file(tmp_path, cli, model_args, prior_dir):
    kernel = np.zeros((7, 7))
    kernel[3, 1:6] = 2.0  # horizontal motion; the tool scales it to sum 1
    np.save(tmp_path / "motion.npy", kernel)
    random_rgb(tmp_path / "clean" / "street.png")
    k = ["--kernel", tmp_path / "motion.npy"]
    cli("simulate", "deblur", tmp_path / "clean", "-o", tmp_path / "meas", "--noise", "0", *k)
    op = Blur(torch.from_numpy(kernel / kernel.sum()))
    y = read_unit(tmp_path / "meas" / "street.png")
    clean = read_unit(tmp_path / "clean" / "street.png")
    np.testing.assert_allclose(y, apply(op, clean), atol=Q8 + 1e-6)
    assert np.abs(y - clean).max() > 0.05  # the kernel did blur

    out = tmp_path / "out"
    cli("deblur", tmp_path / "meas", *k, "-o", out, *model_args)
    assert files_in(out) == {"street.png", "street.report.json"}
    report = load_report(out / "street.report.json")
    check_report(
        report,
        task="deblur",
        source=tmp_path / "meas" / "street.png",
        output=out / "street.png",
        model=prior_dir,
    )
    assert report["operator"]["name"] == "Blur" and report["operator"]["kernel_shape"] == [7, 7]
    x = read_unit(out / "street.png")
    # A kernel summing to 1 moves each value by at most the output's rounding.
    check_residual(report, y, apply(op, x), atol=Q8)


def test_threads_sets_torchs_thread_count(tmp_path, cli, model_args):
    random_rgb(tmp_path / "photo.png")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cli(
            "deblur",
            tmp_path / "photo.png",
            "--sigma",
            "1",
            "--threads",
            "1",
            "-o",
            tmp_path / "out",
            *model_args,
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert files_in(tmp_path / "out") == {"photo.png", "photo.report.json"}


# --- superres -----------------------------------------------------------------------


def test_superres_by_two(tmp_path, cli, model_args, prior_dir):
    random_rgb(tmp_path / "clean.png")
    cli(
        "simulate",
        "superres",
        tmp_path / "clean.png",
        "-o",
        tmp_path / "meas",
        "--scale",
        "2",
        "--noise",
        "0",
    )
    y = read_unit(tmp_path / "meas" / "clean.png")
    assert y.shape == (3, 16, 16)
    expected = np.clip(apply(BicubicDownsample(2), read_unit(tmp_path / "clean.png")), 0, 1)  # PNG clips
    np.testing.assert_allclose(y, expected, atol=Q8 + 1e-6)

    out = tmp_path / "out"
    cli("superres", tmp_path / "meas" / "clean.png", "--scale", "2", "-o", out, *model_args)
    report = load_report(out / "clean.report.json")
    check_report(
        report,
        task="superres",
        source=tmp_path / "meas" / "clean.png",
        output=out / "clean.png",
        model=prior_dir,
    )
    assert report["operator"]["name"] == "BicubicDownsample" and report["operator"]["scale"] == 2
    x = read_unit(out / "clean.png")
    assert x.shape == (3, 32, 32)
    # Bicubic weights sum to 1 with small negative lobes (absolute sum < 1.3).
    check_residual(report, y, apply(BicubicDownsample(2), x), atol=1.3 * Q8)


# --- inpaint ------------------------------------------------------------------------


def test_inpaint_with_the_simulated_masks_one_file_or_a_folder(tmp_path, cli, model_args, prior_dir):
    random_rgb(tmp_path / "clean" / "a.png", seed=1)
    random_rgb(tmp_path / "clean" / "b.png", seed=2)
    meas = tmp_path / "meas"
    cli("simulate", "inpaint", tmp_path / "clean", "-o", meas, "--missing", "0.7", "--noise", "0")
    assert files_in(meas) == {"a.png", "a.mask.png", "b.png", "b.mask.png"}
    masks = {n: read_unit(meas / f"{n}.mask.png")[0] for n in "ab"}
    for name, mask in masks.items():
        assert set(np.unique(mask)) == {0.0, 1.0}
        assert int((mask == 0).sum()) == round(0.7 * 32 * 32)
        y, clean = read_unit(meas / f"{name}.png"), read_unit(tmp_path / "clean" / f"{name}.png")
        np.testing.assert_array_equal(y, clean * mask)  # missing pixels read as 0
    assert (masks["a"] != masks["b"]).any()  # each file its own random mask

    # A folder of masks, matched by name (the NAME.mask.png files sit beside the inputs
    # and are not themselves taken as inputs).
    out = tmp_path / "out"
    cli("inpaint", meas, "--mask", meas, "-o", out, *model_args)
    assert files_in(out) == {"a.png", "a.report.json", "b.png", "b.report.json"}
    for name, mask in masks.items():
        report = load_report(out / f"{name}.report.json")
        check_report(
            report, task="inpaint", source=meas / f"{name}.png", output=out / f"{name}.png", model=prior_dir
        )
        assert report["operator"]["observed_fraction"] == pytest.approx(mask.mean())
        x = read_unit(out / f"{name}.png")
        # Only observed pixels are data: m counts them in every channel.
        m = int(mask.sum()) * x.shape[0]
        check_residual(report, read_unit(meas / f"{name}.png"), apply(Inpainting(mask), x), atol=Q8, m=m)

    # One mask file for the input: the same restoration as the folder gave it.
    out1 = tmp_path / "out1"
    cli("inpaint", meas / "a.png", "--mask", meas / "a.mask.png", "-o", out1, *model_args)
    assert (out1 / "a.png").read_bytes() == (out / "a.png").read_bytes()


# --- nonlinear-deblur ---------------------------------------------------------------


def test_nonlinear_deblur_with_the_built_in_blur(tmp_path, cli, model_args, prior_dir):
    clean = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", clean)
    cli("simulate", "nonlinear-deblur", tmp_path / "x.npy", "-o", tmp_path / "meas", "--npy", "--noise", "0")
    y = np.load(tmp_path / "meas" / "x.npy").transpose(2, 0, 1)
    np.testing.assert_allclose(y, apply(NonlinearBlur(), clean.transpose(2, 0, 1)), atol=1e-6)

    out = tmp_path / "out"
    cli("nonlinear-deblur", tmp_path / "meas" / "x.npy", "-o", out, *model_args)
    report = load_report(out / "x.report.json")
    check_report(
        report,
        task="nonlinear-deblur",
        source=tmp_path / "meas" / "x.npy",
        output=out / "x.npy",
        model=prior_dir,
    )
    assert (
        report["operator"] | {"name": "NonlinearBlur", "sigma": 3.0, "kernel_size": 61, "gain": 2.0}
        == report["operator"]
    )
    check_residual(report, y, apply(NonlinearBlur(), read_unit(out / "x.npy")), atol=1e-6)


def test_nonlinear_deblur_with_an_imported_module_and_arguments_on_a_grey_odd_sized_image(
    tmp_path, cli, model_args, prior_dir
):
    """``--operator torch.nn:Softplus --operator-arg beta=4``: any torch module by import
    path, built with keyword arguments; here on a grey 30x22 image through an RGB prior
    (the prior pads it to 32x24 and averages the channels)."""
    random_grey(tmp_path / "g.png", h=22, w=30)
    op_args = ["--operator", "torch.nn:Softplus", "--operator-arg", "beta=4"]
    cli("simulate", "nonlinear-deblur", tmp_path / "g.png", "-o", tmp_path / "meas", *op_args, "--noise", "0")
    softplus = torch.nn.Softplus(beta=4)
    y = read_unit(tmp_path / "meas" / "g.png")
    np.testing.assert_allclose(
        y, np.clip(apply(softplus, read_unit(tmp_path / "g.png")), 0, 1), atol=Q8 + 1e-6
    )

    out = tmp_path / "out"
    cli("nonlinear-deblur", tmp_path / "meas" / "g.png", *op_args, "-o", out, *model_args)
    report = load_report(out / "g.report.json")
    check_report(
        report,
        task="nonlinear-deblur",
        source=tmp_path / "meas" / "g.png",
        output=out / "g.png",
        model=prior_dir,
    )
    assert report["operator"]["module"] == "torch.nn.modules.activation.Softplus"
    with Image.open(out / "g.png") as im:
        assert im.mode == "L" and im.size == (30, 22)
    # Softplus with beta 4 has slope below 1: rounding moves A(x) by at most Q8.
    check_residual(report, y, apply(softplus, read_unit(out / "g.png")), atol=Q8)


# --- ct -----------------------------------------------------------------------------


def _unit_from_hu(path) -> np.ndarray:
    return (np.load(path).astype(np.float64) + 1024) / 4096


def test_ct_from_a_grey_image_npz_angles_and_reference(tmp_path, cli, model_args, prior_dir):
    random_grey(tmp_path / "slice.png")
    cli("simulate", "ct", tmp_path / "slice.png", "-o", tmp_path / "meas", "--angles", "12")
    assert files_in(tmp_path / "meas") == {"slice.npz"}
    with np.load(tmp_path / "meas" / "slice.npz") as f:
        sino, angles = f["sinogram"], f["angles"]
    np.testing.assert_allclose(angles, np.arange(12) * 15.0)
    clean = read_unit(tmp_path / "slice.png")
    assert sino.shape == (12, 32)
    np.testing.assert_allclose(sino, apply(ParallelBeamCT(12, 32), clean)[0], rtol=1e-5, atol=1e-4)

    out = tmp_path / "out"
    source = tmp_path / "meas" / "slice.npz"
    cli("ct", source, "-o", out, "--reference", tmp_path / "slice.png", *model_args)
    assert files_in(out) == {"slice.png", "slice.npy", "slice.report.json"}
    report = load_report(out / "slice.report.json")
    check_report(report, task="ct", source=source, output=out / "slice.png", model=prior_dir)
    op = report["operator"]
    assert op["name"] == "ParallelBeamCT" and op["angles_deg"] == pytest.approx(list(angles))
    assert op["det_count"] == 32 and op["image_size"] == 32

    x = _unit_from_hu(out / "slice.npy")[None]  # float32 HU -> the [0, 1] window
    assert x.shape == (1, 32, 32) and x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    np.testing.assert_allclose(read_unit(out / "slice.png"), x, atol=Q8 + 1e-6)
    check_residual(report, sino[None], apply(ParallelBeamCT(list(angles), 32), x), atol=1e-5)
    psnr, ssim = _skimage_metrics(x, clean)
    assert report["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-3)
    assert report["metrics"]["ssim"] == pytest.approx(ssim, abs=1e-3)


def test_ct_relative_noise_is_a_fraction_of_each_sinograms_maximum(tmp_path, cli, model_args):
    random_grey(tmp_path / "slice.png")
    clean = apply(ParallelBeamCT(12, 32), read_unit(tmp_path / "slice.png"))[0]
    sigma = 0.05 * float(clean.max())
    for name, noise in {
        "relative": ["--relative-noise", "0.05"],
        "absolute": ["--noise", str(sigma)],
    }.items():
        cli("simulate", "ct", tmp_path / "slice.png", "-o", tmp_path / name, "--angles", "12", *noise)
    noisy = {name: np.load(tmp_path / name / "slice.npz")["sinogram"] for name in ("relative", "absolute")}
    # Same seed and file name, so the same draws: the relative option only sets their scale.
    np.testing.assert_allclose(noisy["relative"], noisy["absolute"], rtol=1e-5, atol=1e-4)
    assert np.std(noisy["relative"] - clean) == pytest.approx(sigma, rel=0.25)

    out = tmp_path / "out"
    cli("ct", tmp_path / "relative" / "slice.npz", "-o", out, "--relative-noise", "0.05", *model_args)
    report = load_report(out / "slice.report.json")
    # resample ct sees only the noisy sinogram, so the fraction is of its maximum.
    assert report["residual"]["sigma_y"] == pytest.approx(
        0.05 * float(np.abs(noisy["relative"]).max()), rel=1e-5
    )


@pytest.mark.parametrize(
    "command",
    [
        ["ct", "slice.npz"],
        ["simulate", "ct", "slice.png"],
        ["bench", "ct", "--synthetic", "ellipses", "--n", "1", "--size", "32", "--solvers", "fbp"],
    ],
    ids=["ct", "simulate-ct", "bench-ct"],
)
def test_noise_and_relative_noise_together_are_refused(tmp_path, cli, command):
    random_grey(tmp_path / "slice.png")
    np.savez(tmp_path / "slice.npz", sinogram=np.ones((12, 32)), angles=np.arange(12) * 15.0)
    args = [tmp_path / a if a.startswith("slice.") else a for a in command]
    out = tmp_path / "out"
    r = cli(*args, "-o", out, "--noise", "0.1", "--relative-noise", "0.01", expect=2)
    assert "give either --noise or --relative-noise, not both" in " ".join(r.output.split())
    assert not out.exists()


def test_ct_from_a_dicom_slice_writes_a_derived_dicom(tmp_path, cli, grey_prior_dir):
    hu = ct_hu_phantom()
    padding = np.zeros(hu.shape, bool)
    padding[:3, :3] = True  # a corner outside the scanner's field of view
    write_ct_dicom(tmp_path / "ct.dcm", hu, padding=padding)
    hu[padding] = -1024  # padding reads as air, the bottom of the HU window
    cli("simulate", "ct", tmp_path / "ct.dcm", "-o", tmp_path / "meas", "--angles", "10")
    with np.load(tmp_path / "meas" / "ct.npz") as f:
        sino = f["sinogram"]
    np.testing.assert_allclose(
        sino, apply(ParallelBeamCT(10, 32), hu_to_unit(hu)[None])[0], rtol=1e-5, atol=1e-4
    )

    out = tmp_path / "out"
    source = tmp_path / "meas" / "ct.npz"
    args = ["--model", grey_prior_dir, "--steps", STEPS, "--dicom-template", tmp_path / "ct.dcm"]
    cli("ct", source, "-o", out, "--reference", tmp_path / "ct.dcm", *args)
    assert files_in(out) == {"ct.png", "ct.npy", "ct.dcm", "ct.report.json"}
    report = load_report(out / "ct.report.json")
    check_report(report, task="ct", source=source, output=out / "ct.png", model=grey_prior_dir)
    x = _unit_from_hu(out / "ct.npy")[None]
    check_residual(report, sino[None], apply(ParallelBeamCT(10, 32), x), atol=1e-5)
    psnr, _ = _skimage_metrics(x, hu_to_unit(hu)[None].astype(np.float64))
    assert report["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-3)

    template = pydicom.dcmread(tmp_path / "ct.dcm")
    derived = pydicom.dcmread(out / "ct.dcm")
    assert derived.PatientID == "PH-7" and derived.StudyInstanceUID == template.StudyInstanceUID
    assert derived.SeriesInstanceUID != template.SeriesInstanceUID
    assert derived.SOPInstanceUID != template.SOPInstanceUID
    assert list(derived.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    got = derived.pixel_array * float(derived.RescaleSlope) + float(derived.RescaleIntercept)
    np.testing.assert_array_equal(got, np.round(np.load(out / "ct.npy")))


def test_ct_accepts_a_scikit_image_sinogram_det_first(tmp_path, cli, model_args):
    """skimage.transform.radon returns (detectors, angles): the layout is inferred from
    --angles, and the reconstruction fits the transposed sinogram."""
    yy, xx = np.mgrid[:32, :32] - 16
    image = read_unit(random_grey(tmp_path / "s.png"))[0] * (yy**2 + xx**2 < 15**2)  # zero outside the circle
    theta = np.arange(9) * 20.0
    sino = radon(image, theta=theta, circle=True)
    assert sino.shape == (32, 9)
    np.save(tmp_path / "sino.npy", sino.astype(np.float32))
    out = tmp_path / "out"
    cli("ct", tmp_path / "sino.npy", "--angles", "9", "-o", out, *model_args)
    report = load_report(out / "sino.report.json")
    assert report["operator"]["angles_deg"] == pytest.approx(list(theta))
    x = _unit_from_hu(out / "sino.npy")[None]
    check_residual(report, sino.T[None], apply(ParallelBeamCT(9, 32), x), atol=1e-5)
