"""torchrun on the CPU (gloo): two ranks share a folder of inputs, and train a prior
data-parallel; each compared with one process doing the same work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import env_offline, files_in, random_rgb
from safetensors.torch import load_file

from resample_cli.distributed import Launch, share
from resample_cli.training import TrainConfig, TrainingError, train_prior
from resample_cli.training.train import _Ranks

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

BLUR = ["--sigma", "1", "--kernel-size", "9"]


def torchrun(args: list, cache: Path, ranks: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node RANKS -m resample_cli ARGS``, on
    this machine only (a free port for the rendezvous)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
    return subprocess.run(
        [*launcher, "-m", "resample_cli", *map(str, args)],
        env=env_offline(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_share_splits_sorted_items_round_robin_keeping_the_given_order():
    items = ["d", "a", "c", "b", "e"]
    assert share(items, 0, 2) == ["a", "c", "e"] and share(items, 1, 2) == ["d", "b"]
    assert share(items, 0, 1) == items
    assert share(items, 3, 4) == ["d"] and share(["a"], 1, 2) == []


def test_two_ranks_write_each_output_once_as_one_process_does_and_report_failures_together(
    tmp_path, cli, model_args, offline
):
    """Four images and one unreadable file: the ranks write the four outputs, bit-identical
    to one process's; the unreadable file fails on its rank; rank 0 alone prints the summary
    of both, and every rank exits 1, so torchrun does."""
    for i, name in enumerate("abcd"):
        random_rgb(tmp_path / "in" / f"{name}.png", seed=i)
    (tmp_path / "in" / "e.png").write_bytes(b"not a png")
    run = ["deblur", tmp_path / "in", *BLUR, *model_args, "--device", "cpu"]
    cli(*run, "-o", tmp_path / "one", expect=1)
    r = torchrun([*run, "-o", tmp_path / "two"], offline)
    assert r.returncode != 0, r.stderr
    written = {"a.png", "b.png", "c.png", "d.png"}
    assert files_in(tmp_path / "two") == written | {f"{n}.report.json" for n in "abcd"}
    for name in written:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert r.stderr.count("4 written, 0 skipped, 1 failed") == 1, r.stderr
    assert r.stderr.count("1 input(s) failed:") == 1 and "e.png" in r.stderr


def test_each_rank_trains_on_its_slice_of_the_global_batch():
    config = _one_process(Path("unused"))
    halves = [_Ranks(Launch(rank, 2, rank), config).mine(torch.arange(4)).tolist() for rank in (0, 1)]
    assert halves == [[0, 1], [2, 3]]
    with pytest.raises(TrainingError, match="batch_size 4 does not split evenly over 3 ranks"):
        _Ranks(Launch(0, 3, 0), config)


TINY = [
    "--resolution", "16", "--ae-channels", "8,8,8", "--unet-channels", "8,16", "--attention-head-dim", "8",
    "--ae-steps", "3", "--unet-steps", "3", "--batch-size", "4", "--checkpoint-every", "2", "--sample-steps", "2",
    "--warmup", "1", "--device", "cpu", "--synthetic", "ellipses",
]  # fmt: skip


def _one_process(output: Path, **changes) -> TrainConfig:
    settings = dict(
        synthetic="ellipses",
        resolution=16,
        ae_channels=(8, 8, 8),
        unet_channels=(8, 16),
        attention_head_dim=8,
        ae_steps=3,
        unet_steps=3,
        batch_size=4,
        checkpoint_every=2,
        sample_steps=2,
        warmup_steps=1,
        device="cpu",
    )
    return TrainConfig(output=output, **{**settings, **changes})


def _weights(prior: Path) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": value
        for part in ("vae", "unet")
        for name, value in load_file(prior / part / "diffusion_pytorch_model.safetensors").items()
    }


def _distance(a: Path, b: Path) -> dict[str, float]:
    """||a - b|| / ||a|| over all the weights of each network of two saved priors."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    out = {}
    for part in ("vae", "unet"):
        names = [k for k in wa if k.startswith(part)]
        diff = sum(float((wa[k] - wb[k]).pow(2).sum()) for k in names) ** 0.5
        out[part] = diff / sum(float(wa[k].pow(2).sum()) for k in names) ** 0.5
    return out


def _losses(run: Path) -> list[float]:
    return [float(line.split(",")[2]) for line in (run / "losses.csv").read_text().splitlines()[1:]]


# How far two ranks' weights may lie from one process's (relative, per network). The halves'
# convolutions and the all-reduce add in another order, so gradients differ in their last
# bits; Adam divides each entry by its own magnitude, which turns last-bit differences of
# near-zero entries into steps of up to the learning rate: 5e-5 measured after 3 + 3 steps.
# One process on half the batch lies 8e-3 away, and that is what a rank that neither split
# the batch nor averaged the gradients would give.
WEIGHT_TOLERANCE = 5e-4


def test_two_rank_training_follows_one_process_with_the_global_batch_and_resumes(tmp_path, offline):
    """Each rank trains on half of each batch of four; the averaged gradients are those of
    the whole batch, so the losses and weights follow one process's up to float rounding.
    Then a resumed two-rank run adds a step from rank 0's checkpoint, as one process does."""
    train_prior(_one_process(tmp_path / "one"))
    train_prior(_one_process(tmp_path / "half", batch_size=2))
    assert min(_distance(tmp_path / "one", tmp_path / "half").values()) > 10 * WEIGHT_TOLERANCE
    r = torchrun(["train-prior", tmp_path / "two", *TINY], offline)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("saved the prior") == 1  # rank 0 speaks
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    assert max(_distance(tmp_path / "one", tmp_path / "two").values()) < WEIGHT_TOLERANCE

    more = [*TINY[: TINY.index("--unet-steps") + 1], "4", *TINY[TINY.index("--unet-steps") + 2 :]]
    r = torchrun(["train-prior", tmp_path / "two", *more, "--resume"], offline)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("resumed from") == 1
    train_prior(_one_process(tmp_path / "one", unet_steps=4), resume=True)
    assert len(_losses(tmp_path / "two")) == 7
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    assert max(_distance(tmp_path / "one", tmp_path / "two").values()) < WEIGHT_TOLERANCE
