"""Several inputs per solver call (--batch-size) and --shard: an input's output does not
depend on which inputs share its calls, their order, or the share that restores it."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STEPS, files_in, load_report, random_rgb, read_unit
from tiny_prior import make_tiny_prior

from resample_cli import pipeline
from resample_cli.cli.batch import plan_batch
from resample_cli.cli.files import IMAGE_INPUTS
from resample_cli.cli.options import COMMON, CommonOptions
from resample_cli.cli.writers import ImageWriter
from resample_cli.operators import GaussianBlur
from resample_cli.priors import load_prior
from resample_cli.solvers import SOLVER_NAMES, solver_config, solver_named
from resample_cli.solvers.ddim import randn_like

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

BLUR = ["--sigma", "1", "--kernel-size", "9"]


def test_one_generator_per_image_draws_what_each_draws_alone():
    seeds = [3, 1, 4]
    together = randn_like(torch.empty(3, 2, 5), [torch.Generator().manual_seed(s) for s in seeds])
    for row, seed in zip(together, seeds, strict=True):
        alone = torch.randn((1, 2, 5), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(row[None], alone)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_like(torch.empty(3, 2), [torch.Generator(), torch.Generator()])


def test_sample_streams_differ_by_seed_name_and_sample_and_repeat_otherwise():
    def first_draw(seed, name, samples=2):
        return [torch.randn(4, generator=g) for g in pipeline.sample_generators(seed, name, samples)]

    a = first_draw(0, "a.png")
    assert all(torch.equal(x, y) for x, y in zip(a, first_draw(0, "a.png"), strict=True))
    assert not torch.equal(a[0], a[1])  # two samples of one input
    assert not torch.equal(a[0], first_draw(0, "b.png")[0])
    assert not torch.equal(a[0], first_draw(1, "a.png")[0])


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    folder = make_tiny_prior(tmp_path_factory.mktemp("prior") / "kl", autoencoder="kl")
    return load_prior(str(folder), device=torch.device("cpu"))


# How far batching may move an output. The networks' arithmetic on one row is not always
# bit-for-bit what it is beside other rows: oneDNN picks its convolution and normalisation
# kernels by batch size, which moves the tiny prior's outputs by about 1e-6; the data-
# consistency solves amplify that to about 1e-4 in [0, 1] (8e-5 measured), under half an
# 8-bit level, so a written PNG moves by at most one level at a few pixels.
BATCHED_ATOL = 5e-4


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_each_solver_gives_an_input_in_a_batch_what_it_gives_it_alone(tiny_prior, name):
    """Four inputs of two samples each, in calls of three rows (so calls mix inputs and
    split one input's samples), against each input restored alone."""
    torch.manual_seed(0)
    blur = GaussianBlur(1.0, 5)
    ys = [blur(torch.rand(1, 3, 32, 32)) for _ in range(4)]
    solve, _ = solver_named(name)
    config = solver_config(name, "fast", steps=2)

    def problems():
        return [pipeline.Problem(y, pipeline.sample_generators(0, f"{i}.png", 2)) for i, y in enumerate(ys)]

    run = dict(image_shape=(3, 32, 32), sigma_y=0.01, solver=solve)
    together = pipeline.restore_batch(problems(), blur, tiny_prior, config, batch_size=3, **run)
    alone = [pipeline.restore_batch([p], blur, tiny_prior, config, **run)[0] for p in problems()]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched.x, single.x, atol=BATCHED_ATOL, rtol=0)
        torch.testing.assert_close(batched.std, single.std, atol=BATCHED_ATOL, rtol=0)
    # Each input drew its own samples: no two inputs came out alike.
    assert min(float((a.x - b.x).abs().max()) for a, b in pairwise(alone)) > 100 * BATCHED_ATOL


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _assert_close_outputs(folder: Path, expected: dict[str, bytes]) -> None:
    """The same PNGs, up to one 8-bit level at a few pixels (``BATCHED_ATOL``)."""
    assert set(_outputs(folder)) == set(expected)
    for name in expected:
        got, want = read_unit(folder / name), read_unit(folder.parent / "one" / name)
        assert np.abs(got - want).max() <= 1 / 255 + 1e-9
        assert np.mean(got != want) < 0.01


def test_batch_size_order_and_shards_leave_every_output_as_it_was(tmp_path, cli, model_args):
    """A folder of four inputs, two of them larger: one at a time, in reversed order and
    in two shards (bit-identical: each input runs alone as before), and four per pass
    (two passes: inputs of one size share a call)."""
    for i, name in enumerate("abcd"):
        size = 32 if name in "ac" else 48
        random_rgb(tmp_path / "in" / f"{name}.png", h=size, w=size, seed=i)
    run = ["deblur", *BLUR, *model_args]
    cli(*run, tmp_path / "in", "-o", tmp_path / "one")
    expected = _outputs(tmp_path / "one")
    assert set(expected) == {"a.png", "b.png", "c.png", "d.png"}

    reversed_inputs = [tmp_path / "in" / f"{name}.png" for name in "dcba"]
    cli(*run, *reversed_inputs, "-o", tmp_path / "reversed")
    assert _outputs(tmp_path / "reversed") == expected
    for k in (1, 2):
        cli(*run, tmp_path / "in", "-o", tmp_path / "shards", "--shard", f"{k}/2")
    assert _outputs(tmp_path / "shards") == expected

    cli(*run, tmp_path / "in", "-o", tmp_path / "four", "--batch-size", "4")
    _assert_close_outputs(tmp_path / "four", expected)
    report = load_report(tmp_path / "four" / "a.report.json")
    assert report["batch"] == {"inputs": 2, "batch_size": 4}  # a and c: 32x32
    assert report["cost"]["unet_forward"] == 2 * STEPS  # one call for both


def test_samples_split_over_calls_give_the_same_mean_and_std(tmp_path, cli, model_args):
    random_rgb(tmp_path / "in.png")
    run = ["deblur", tmp_path / "in.png", *BLUR, *model_args, "--samples", "3"]
    cli(*run, "-o", tmp_path / "one")
    cli(*run, "-o", tmp_path / "split", "--batch-size", "2")
    _assert_close_outputs(tmp_path / "split", _outputs(tmp_path / "one"))
    std_all, std_split = np.load(tmp_path / "one" / "in.std.npy"), np.load(tmp_path / "split" / "in.std.npy")
    np.testing.assert_allclose(std_split, std_all, atol=BATCHED_ATOL, rtol=0)
    assert load_report(tmp_path / "split" / "in.report.json")["cost"]["unet_forward"] == 3 * STEPS


def _planned(folder: Path, shard: str | None) -> list[str]:
    defaults = {name: option.default for name, option in COMMON.items()}
    common = CommonOptions(**{**defaults, "shard": shard, "output_dir": folder / "out"})
    batch = plan_batch("deblur", [folder], IMAGE_INPUTS, ImageWriter(), common)
    return [p.source.name for p in batch.inputs]


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_the_shards_hold_every_input_exactly_once(tmp_path, count):
    names = [f"{i:02d}.png" for i in range(7)]
    for i, name in enumerate(names):
        random_rgb(tmp_path / name, h=8, w=8, seed=i)
    shares = [_planned(tmp_path, f"{k}/{count}") for k in range(1, count + 1)]
    assert sorted(name for share in shares for name in share) == names
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1  # every count-th input of the sorted list


@pytest.mark.parametrize("shard", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_a_shard_that_is_not_k_of_n_is_a_usage_error(tmp_path, cli, shard, no_model):
    random_rgb(tmp_path / "in.png")
    r = cli("deblur", tmp_path / "in.png", "--shard", shard, "-o", tmp_path / "out", expect=2)
    assert "--shard" in r.stderr and "K/N" in r.stderr
    assert files_in(tmp_path / "out") == set()


def test_shard_under_torchrun_is_a_usage_error(tmp_path, cli, monkeypatch, no_model):
    random_rgb(tmp_path / "in.png")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    r = cli("deblur", tmp_path / "in.png", "--shard", "1/2", "-o", tmp_path / "out", expect=2)
    assert "under torchrun" in r.stderr
