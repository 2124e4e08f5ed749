"""The final pixel solve (ReSampleConfig.final_pixel_consistency) and the fit warning:
the output fits the data to the noise level where the prior's decoded image does not,
its weight is the discrepancy principle's, and a poor fit is said out loud."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_rgb
from scipy.optimize import brentq

from resample_cli import pipeline
from resample_cli.cli.fit import warn_if_poor_fit
from resample_cli.operators.base import Operator
from resample_cli.operators.blur import GaussianBlur
from resample_cli.operators.inpainting import Inpainting, random_mask
from resample_cli.operators.matrix import MatrixOperator
from resample_cli.priors import load_prior
from resample_cli.solvers.consistency import fit_pixels_discrepancy
from resample_cli.solvers.resample import ReSampleConfig, resample

SIGMA = 0.02


@pytest.fixture(scope="module")
def prior(prior_dir):
    return load_prior(str(prior_dir))


def smooth_image() -> torch.Tensor:
    """A (1, 3, 32, 32) image in [0.1, 0.9] that a tiny random decoder cannot show."""
    ramp = torch.linspace(0.1, 0.9, 32)
    return torch.stack(
        [
            ramp[None, :].expand(32, 32),
            ramp[:, None].expand(32, 32),
            0.5 * ramp.flip(0)[None, :].expand(32, 32) + 0.2,
        ]
    )[None]


def measured(operator: Operator, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = operator(smooth_image())
    return clean + SIGMA * torch.randn(clean.shape, generator=g)


def run(prior, operator: Operator, y: torch.Tensor, *, pixel: bool, steps: int = 4):
    config = ReSampleConfig.preset("fast", steps=steps, latent_iters=5, final_pixel_consistency=pixel)
    return resample(y, operator, prior, config, sigma_y=SIGMA, generator=torch.Generator().manual_seed(1))


def ratio(operator: Operator, y: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((y - operator(x)).norm()) / (SIGMA * math.sqrt(operator.measurement_count(y)))


def test_the_output_fits_to_the_noise_level_where_the_decoded_image_does_not(prior, one_thread):
    blur = GaussianBlur(1.0, kernel_size=7)
    y = measured(blur)
    result = run(prior, blur, y, pixel=True)
    assert ratio(blur, y, result.decoded) > 3  # the random prior is far off
    # The discrepancy principle puts the residual at sigma_y sqrt(m); the clamp to [0, 1]
    # that follows moves it a little (here 0.999 to 1.009: the solve overshoots to -0.04).
    assert ratio(blur, y, result.x) == pytest.approx(1.0, abs=0.03)
    assert result.trace.final_residual[0] == pytest.approx(ratio(blur, y, result.x) * SIGMA, rel=1e-4)
    assert result.x.min() >= 0 and result.x.max() <= 1
    assert len(result.trace.final_pixel_lam) == 1 and result.trace.final_pixel_lam[0] > 0


def test_the_pixel_solve_runs_after_the_trajectory_and_leaves_it_alone(prior, one_thread):
    blur = GaussianBlur(1.0, kernel_size=7)
    y = measured(blur)
    plain, pixel = run(prior, blur, y, pixel=False), run(prior, blur, y, pixel=True)
    assert plain.decoded is None and plain.trace.final_pixel_lam == []
    torch.testing.assert_close(pixel.decoded, plain.x, rtol=0, atol=0)
    torch.testing.assert_close(pixel.z, plain.z, rtol=0, atol=0)


def inpainting_lam(y: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor, m: int) -> float:
    """The discrepancy weight for inpainting in closed form. On an observed pixel the
    Tikhonov solution is x0 + (y - x0) / (1 + lam), so the residual is
    lam / (1 + lam) ||M (y - x0)||; it equals sigma sqrt(m) at lam = t / (1 - t)."""
    t = SIGMA * math.sqrt(m) / float((mask * (y - x0)).double().norm())
    return t / (1 - t)


def test_the_weight_is_the_discrepancy_principles_closed_form_for_inpainting(prior, one_thread):
    mask = random_mask((32, 32), 0.5, torch.Generator().manual_seed(3))
    operator = Inpainting(mask)
    y = operator(measured(operator))  # zero where a pixel is missing, as the operator expects
    result = run(prior, operator, y, pixel=True)
    m = operator.measurement_count(y)
    expected = inpainting_lam(y, result.decoded, mask, m)
    # Bisection in log lam keeps the weight on the side that meets the target: just below.
    assert result.trace.final_pixel_lam[0] == pytest.approx(expected, rel=1e-2)
    assert result.trace.final_pixel_lam[0] <= expected * (1 + 1e-6)
    assert ratio(operator, y, result.x) == pytest.approx(1.0, abs=1e-2)


def dense_problem(seed: int = 0):
    """An ill-conditioned 30 x 48 matrix, a truth, its noisy measurement and a start far off."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    v, _ = np.linalg.qr(rng.standard_normal((48, 30)))
    a = u @ np.diag(np.logspace(0, -2, 30)) @ v.T
    truth = rng.uniform(0, 1, 48)
    y = a @ truth + SIGMA * rng.standard_normal(30)
    return a, y, np.zeros(48)


def dense_discrepancy_lam(a: np.ndarray, y: np.ndarray, x0: np.ndarray) -> float:
    """The weight whose Tikhonov residual is sigma sqrt(m), from the SVD: with
    r0 = y - A x0 and beta = U^T r0, the residual is || lam / (s^2 + lam) beta || plus
    the part of r0 outside the range of A."""
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    r0 = y - a @ x0
    beta = u.T @ r0
    outside = np.linalg.norm(r0 - u @ beta) ** 2

    def excess(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return math.sqrt(np.sum((lam / (s**2 + lam) * beta) ** 2) + outside) - SIGMA * math.sqrt(len(y))

    return math.exp(brentq(excess, -20, 20, xtol=1e-12))


class KrylovMatrix(MatrixOperator):
    fast_solve = False  # takes the one-basis Lanczos path instead of per-weight solves


@pytest.mark.parametrize("operator_class, rel", [(MatrixOperator, 1e-2), (KrylovMatrix, 1e-4)])
def test_the_weight_matches_an_svd_computation_for_a_dense_matrix(operator_class, rel):
    a, y, x0 = dense_problem()
    operator = operator_class(torch.from_numpy(a), (1, 6, 8)).double()
    target_rms = SIGMA  # rms over the 30 entries: residual norm sigma sqrt(30)
    fit = fit_pixels_discrepancy(
        operator, torch.from_numpy(y)[None], torch.from_numpy(x0).reshape(1, 1, 6, 8), target_rms
    )
    assert float(fit.lam[0]) == pytest.approx(dense_discrepancy_lam(a, y, x0), rel=rel)
    assert float(fit.rms[0]) == pytest.approx(SIGMA, rel=rel)


def test_images_that_already_fit_keep_the_decoded_image():
    operator = MatrixOperator(torch.eye(4, dtype=torch.float64), (1, 2, 2))
    x0 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    fit = fit_pixels_discrepancy(operator, x0.flatten(1) + 0.001, x0, target_rms=SIGMA)
    assert torch.equal(fit.value, x0) and math.isinf(float(fit.lam[0]))


class Squared(Operator):
    """A nonlinear operator without a regularised solve."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.square()


def test_nonlinear_operators_skip_the_pixel_solve(prior, one_thread):
    operator = Squared()
    y = measured(operator)
    result = run(prior, operator, y, pixel=True, steps=3)
    assert result.decoded is None and result.trace.final_pixel_lam == []


def residual_block(ratio: float | None, decoded_ratio: float | None = None) -> dict:
    return {
        "rms": 0.0,
        "sigma_y": 1.0,
        "ratio": ratio,
        "relative": 0.0,
        "per_dc_step": [],
        "decoded_ratio": decoded_ratio,
    }


def test_the_warning_fires_above_the_threshold_and_not_below():
    threshold = pipeline.FIT_RATIO_THRESHOLD
    assert threshold == 1.5
    assert pipeline.fit_warning(residual_block(threshold - 0.01), "ct") is None
    assert pipeline.fit_warning(residual_block(1.0), "deblur") is None
    assert pipeline.fit_warning(residual_block(None), "ct") is None  # sigma_y = 0: no ratio
    message = pipeline.fit_warning(residual_block(2.53), "ct")
    assert "2.53" in message and "cannot represent" in message and "--noise" in message
    assert "train-prior" in message and "--base ct-ellipses" in message
    assert "resample bench ct" in message and "--solvers classical" in message
    assert "\n" not in message
    photo = pipeline.fit_warning(residual_block(threshold + 0.01), "deblur")
    assert "resample bench deblur" in photo and "ct-ellipses" not in photo


def test_the_warning_looks_at_the_decoded_image_when_a_pixel_solve_hid_the_misfit():
    message = pipeline.fit_warning(residual_block(1.0, decoded_ratio=2.5), "ct")
    assert "2.50" in message and "final pixel solve" in message
    assert pipeline.fit_warning(residual_block(1.0, decoded_ratio=1.2), "ct") is None


def test_the_report_records_the_fit_and_the_pixel_solve(prior, one_thread):
    blur = GaussianBlur(1.0, kernel_size=7)
    y = measured(blur)
    config = ReSampleConfig.preset("fast", steps=4, latent_iters=5, final_pixel_consistency=True)
    restoration = pipeline.restore(y, blur, prior, config, image_shape=(3, 32, 32), sigma_y=SIGMA)
    report = pipeline.report(
        task="deblur",
        operator=blur,
        prior=prior,
        config=config,
        preset="fast",
        restoration=restoration,
        seed=0,
        dtype="float32",
    )
    res = report["residual"]
    # The residual block is the output's; the decoded image's ratio is kept beside it.
    assert res["ratio"] == pytest.approx(ratio(blur, y, restoration.x[None]), rel=1e-4)
    assert res["decoded_ratio"] == pytest.approx(ratio(blur, y, restoration.decoded[None]), rel=1e-4)
    assert res["decoded_ratio"] > pipeline.FIT_RATIO_THRESHOLD >= res["ratio"]
    assert report["solver"]["final_pixel_consistency"] is True
    assert report["solver"]["final_pixel_lam"] == restoration.trace.final_pixel_lam
    assert report["fit"] == {
        "ratio_threshold": pipeline.FIT_RATIO_THRESHOLD,
        "warning": pipeline.fit_warning(res, "deblur"),
    }
    assert report["fit"]["warning"] is not None

    out = WarningRecorder()
    warn_if_poor_fit(out, Path("blurred.png"), report)
    warn_if_poor_fit(out, Path("fine.png"), {**report, "fit": {**report["fit"], "warning": None}})
    assert out.lines == [f"blurred.png: {report['fit']['warning']}"]


class WarningRecorder:
    """Stands in for the console's Output: keeps the warnings."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(message)


def test_the_paper_preset_is_the_authors_behaviour():
    paper = ReSampleConfig.preset("paper")
    assert paper == ReSampleConfig() and paper.final_pixel_consistency is False
    assert asdict(paper) == {
        "steps": 500,
        "eta": 0.0,
        "timestep_grid": "authors",
        "dc_every": 10,
        "dc_start": 1 / 3,
        "pixel_fraction": 0.5,
        "lookahead": 5,
        "lookahead_lag": True,
        "gamma": 40.0,
        "dps_scale": 0.5,
        "dps_z0": "authors",
        "start_z0": "authors",
        "units": "pm1",
        "pixel_solver": "adam",
        "pixel_iters": 2000,
        "pixel_lr": 1e-2,
        "latent_iters": 500,
        "latent_lr": 5e-3,
        "latent_solver": "adam",
        "stop": "threshold",
        "stop_mse": 1e-6,
        "tau": 1.0,
        "stop_check": "after_step",
        "plateau": 200,
        "pixel_plateau": False,
        "final_consistency": True,
        "final_pixel_consistency": False,
    }


def test_the_command_line_warns_and_records_a_poor_fit(tmp_path, cli, model_args):
    """The tiny random prior cannot represent a photo: the user sees one warning line naming
    the input, and the JSON record and the report carry it."""
    source = random_rgb(tmp_path / "photo.png")
    r = cli(
        "deblur", source, "--sigma", "1", "--kernel-size", "5", "-o", tmp_path / "out", "--json", *model_args
    )
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(source) in warnings[0] and "--solvers classical" in warnings[0]
    record = json.loads(r.stdout.splitlines()[-1])
    report = json.loads((tmp_path / "out" / "photo.report.json").read_text())
    assert record["fit"] == report["fit"] and report["fit"]["warning"] in warnings[0]
    assert report["residual"]["decoded_ratio"] > pipeline.FIT_RATIO_THRESHOLD
