"""The CUDA paths (issue 20): every solver of the registry, the operators' solves and the
command line with ``--device cuda``, on a tiny random prior, so that a failure no CPU run
can show (a tensor made on the CPU and met by one on the GPU, a generator on the wrong
device) fails here. Skipped without CUDA.

RESAMPLE_TEST_DEVICE=cpu runs the same tests on the CPU (a check of the tests themselves;
it proves nothing about CUDA).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from conftest import load_report, random_grey, random_rgb

from resample_cli.operators import (
    BicubicDownsample,
    GaussianBlur,
    Inpainting,
    NonlinearBlur,
    ParallelBeamCT,
)
from resample_cli.operators.compose import ChannelMean
from resample_cli.priors import load_prior
from resample_cli.solvers import SOLVER_NAMES, SOLVERS, solver_config, solver_named
from resample_cli.solvers.consistency import StopRule, adam_fit, fit_pixels_discrepancy
from resample_cli.solvers.ddim import randn_like

DEVICE = torch.device(os.environ.get("RESAMPLE_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("offline", "one_thread"),
]

SIZE = 32  # the tiny prior's images: an 8x8 latent
STEPS = 6
# ReSample with every stage in a few steps: data consistency at each step, the window split
# between pixel and latent stages, solves of a few iterations.
RESAMPLE_OVERRIDES = {"dc_every": 1, "pixel_fraction": 0.5, "latent_iters": 3, "pixel_iters": 3}


def operators(n: int) -> dict[str, torch.nn.Module]:
    """One operator of each kind (linear with a fast solve, linear through the Krylov
    search, per-image parameters, nonlinear, wrapped), built on the CPU as the CLI builds them."""
    masks = (torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    return {
        "blur": GaussianBlur(1.0, kernel_size=5),
        "superres": BicubicDownsample(2),
        "inpainting": Inpainting(masks),
        "nonlinear": NonlinearBlur(1.0, kernel_size=5),
        "ct": ChannelMean(ParallelBeamCT(8, SIZE), 3),
    }


OPERATORS = tuple(operators(1))


@pytest.fixture(scope="module")
def prior(prior_dir):
    return load_prior(str(prior_dir), device=DEVICE)


def measure(op: torch.nn.Module, n: int) -> torch.Tensor:
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = op(x)
    return y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))


def config_for(name: str, preset: str):
    overrides = RESAMPLE_OVERRIDES if name == "resample" else {}
    return solver_config(name, preset, steps=STEPS, **overrides)


def solve_on_device(prior, name, preset, op_name, *, n=2, generator="cpu", autocast=None):
    op = operators(n)[op_name].to(DEVICE)
    y = measure(operators(n)[op_name], n).to(DEVICE)
    solve, _ = solver_named(name)
    gen = None if generator is None else torch.Generator(device=generator).manual_seed(0)
    return solve(
        y,
        op,
        prior,
        config_for(name, preset),
        sigma_y=0.01,
        image_size=(SIZE, SIZE),
        generator=gen,
        autocast=autocast,
    )


def check_result(result, n: int) -> None:
    assert result.x.device.type == DEVICE.type and result.z.device.type == DEVICE.type
    assert result.x.shape == (n, 3, SIZE, SIZE)
    assert torch.isfinite(result.x).all() and result.x.min() >= 0 and result.x.max() <= 1
    assert len(result.trace.final_residual) == n
    assert all(np.isfinite(result.trace.final_residual))
    assert result.trace.counts["unet_forward"] >= STEPS * n


@pytest.mark.parametrize("op_name", OPERATORS)
@pytest.mark.parametrize("preset", ["paper", "fast"])
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_every_solver_runs_on_the_device_with_every_kind_of_operator(prior, name, preset, op_name):
    """With the pipeline's CPU generator; a batch of two (inpainting: one mask per image)."""
    why = SOLVERS[name].refuses(operators(1)[op_name].linear)
    if why:
        pytest.skip(why)
    check_result(solve_on_device(prior, name, preset, op_name), 2)


@pytest.mark.parametrize("generator", [DEVICE.type, None], ids=["device-generator", "no-generator"])
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_a_generator_on_the_device_or_none_works_too(prior, name, generator):
    check_result(solve_on_device(prior, name, "fast", "superres", generator=generator), 2)


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_bfloat16_autocast_runs_every_solver(prior, name):
    """As ``--dtype bfloat16``: the networks under autocast, the solves in float32."""
    result = solve_on_device(prior, name, "fast", "blur", autocast=torch.bfloat16)
    check_result(result, 2)
    assert result.x.dtype == torch.float32


def test_a_seed_draws_the_same_noise_on_any_device():
    """``randn_like`` draws on the generator's device: the pipeline's CPU generator gives the
    device the numbers it gives the CPU."""
    like = torch.empty(2, 3, 8, 8)
    on_cpu = randn_like(like, torch.Generator().manual_seed(5))
    on_device = randn_like(like.to(DEVICE), torch.Generator().manual_seed(5))
    assert on_device.device.type == DEVICE.type
    torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=0, atol=0)


@pytest.mark.parametrize("op_name", ["blur", "superres", "inpainting", "ct"])
def test_the_discrepancy_solve_gives_on_the_device_what_it_gives_on_the_cpu(op_name):
    """ReSample's pixel stage and final pixel solve: the operator's own solve under a
    bisection on lam (blur, inpainting), or one Krylov basis for every lam (superres, CT)."""
    op = operators(2)[op_name]
    y = measure(op, 2)
    start = torch.full((2, 3, SIZE, SIZE), 0.5)
    target = torch.tensor([0.01, 0.02])
    expected = fit_pixels_discrepancy(op, y, start, target)
    got = fit_pixels_discrepancy(op.to(DEVICE), y.to(DEVICE), start.to(DEVICE), target.to(DEVICE))
    for name in ("value", "rms", "lam"):
        value = getattr(got, name)
        assert value.device.type == DEVICE.type, name
        torch.testing.assert_close(value.cpu(), getattr(expected, name), rtol=1e-3, atol=1e-4)


# --- the command line -------------------------------------------------------------------


def _measured(tmp_path, cli, task: str) -> tuple[list, object]:
    """A simulated measurement for ``task`` (on the CPU, as ``resample simulate`` runs) and
    the restoring command's arguments for it."""
    meas = tmp_path / "meas"
    if task == "ct":
        random_grey(tmp_path / "clean.png")
        cli("simulate", "ct", tmp_path / "clean.png", "-o", meas, "--angles", "8")
        return ["ct", meas / "clean.npz"], "clean"
    random_rgb(tmp_path / "clean.png")
    if task == "deblur":
        return ["deblur", tmp_path / "clean.png", "--sigma", "1", "--kernel-size", "5"], "clean"
    if task == "superres":
        cli("simulate", "superres", tmp_path / "clean.png", "-o", meas, "--scale", "2")
        return ["superres", meas / "clean.png", "--scale", "2"], "clean"
    cli("simulate", "inpaint", tmp_path / "clean.png", "-o", meas, "--missing", "0.5")
    return ["inpaint", meas / "clean.png", "--mask", meas / "clean.mask.png"], "clean"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("task", ["deblur", "superres", "inpaint", "ct"])
def test_the_cli_restores_on_the_device(tmp_path, cli, prior_dir, task, dtype):
    """The default solver and preset (ReSample ``fast``), whose pixel stages and final pixel
    solve go through each operator's regularised solve."""
    args, stem = _measured(tmp_path, cli, task)
    out = tmp_path / "out"
    device = ["--device", str(DEVICE), "--dtype", dtype]
    cli(*args, "-o", out, "--model", prior_dir, "--steps", "4", *device)
    report = load_report(out / f"{stem}.report.json")
    assert report["device"].startswith(DEVICE.type) and report["dtype"] == dtype
    assert np.isfinite(report["residual"]["rms"])


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_the_cli_runs_every_solver_on_the_device(tmp_path, cli, prior_dir, name):
    args, stem = _measured(tmp_path, cli, "superres")
    out = tmp_path / "out"
    cli(*args, "-o", out, "--model", prior_dir, "--steps", "3", "--solver", name, "--device", str(DEVICE))
    report = load_report(out / f"{stem}.report.json")
    assert report["device"].startswith(DEVICE.type) and report["solver"]["name"] == name


# --- synchronisation --------------------------------------------------------------------


def _synchronisations(run) -> int:
    """Host-device synchronisations ``run()`` makes, as torch's sync debug mode reports them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="synchronisation is a CUDA matter")
@pytest.mark.xfail(
    strict=False,
    reason="issue 20 audit: consistency.adam_fit synchronises about 7 times an iteration "
    "(active.nonzero(), boolean-mask indexing of last, v, taken and active); its stopping rule "
    "needs one",
)
def test_an_adam_fit_iteration_synchronises_at_most_twice():
    n = 4
    start = torch.zeros(n, 3, 8, 8, device=DEVICE)
    target = torch.randn(start.shape, device=DEVICE)

    def mse_of(v, idx):
        return (v - target[idx]).pow(2).flatten(1).mean(1)

    never = StopRule(torch.zeros(n, device=DEVICE), 0, "before_step")

    def fit(iters: int):
        return lambda: adam_fit(start, mse_of, iters=iters, lr=0.1, stop=never)

    fit(2)()  # warm-up
    per_iteration = (_synchronisations(fit(15)) - _synchronisations(fit(5))) / 10
    assert per_iteration <= 2, f"{per_iteration:.1f} synchronisations per iteration"
