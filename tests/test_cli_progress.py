"""Progress that tells the truth: remaining time priced by the kind of each step, the
batch's remaining time after its first input, torch's default thread count, and photos
read upright (EXIF orientation)."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import files_in, plain, random_rgb
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from resample_cli.cli import options, restore
from resample_cli.cli.console import EtaColumn, ScheduleEta, batch_remaining
from resample_cli.fileio.images import image_size, read_image
from resample_cli.solvers.latent_dps import LatentDPSConfig
from resample_cli.solvers.resample import ReSampleConfig, StepInfo, dc_schedule

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

BLUR = ["--sigma", "1", "--kernel-size", "9"]


# --- the estimator ------------------------------------------------------------------


def test_remaining_time_prices_each_step_by_its_kind():
    eta = ScheduleEta({None: 1.0, "pixel": 4.0, "latent": 20.0})
    eta.start([None, None, "pixel", None, "pixel", "latent"])
    assert eta.remaining() is None  # nothing timed yet
    eta.record(0.5)
    eta.record(1.5)  # plain steps: 1 s on average, 1 s per unit of prior cost
    assert eta.remaining() == pytest.approx(4 + 1 + 4 + 20)
    eta.record(10.0)  # the first pixel step: its own mean now, not the prior's 4 s
    assert eta.step_seconds("pixel") == 10.0
    # latent, still unseen: 20 units at (0.5 + 1.5 + 10) s / (1 + 1 + 4) units = 2 s per unit
    assert eta.remaining() == pytest.approx(1 + 10 + 40)
    eta.record(1.0)
    eta.record(6.0)  # the pixel mean becomes 8 s
    assert eta.remaining() == pytest.approx(20 * 19.0 / 11)
    eta.record(30.0)
    assert eta.remaining() == 0


def test_the_next_input_starts_with_the_durations_measured_so_far():
    eta = ScheduleEta({None: 1.0, "latent": 100.0})
    eta.start([None, "latent"])
    eta.record(2.0)
    eta.record(50.0)
    eta.start([None, None, "latent"])
    assert eta.remaining() == pytest.approx(2 + 2 + 50)  # known before its first step


def test_batch_remaining_time():
    assert batch_remaining([], 3.0, None, queued=4) is None  # nothing timed yet
    # Before any input finished: the one in hand's expected total for each queued one.
    assert batch_remaining([], 3.0, 7.0, queued=2) == pytest.approx(7 + 2 * 10)
    # After: the mean of the finished ones.
    assert batch_remaining([10.0, 20.0], 5.0, 12.0, queued=3) == pytest.approx(12 + 3 * 15)
    assert batch_remaining([10.0], 4.0, None, queued=1) == pytest.approx(6 + 10)


def test_prior_costs_put_latent_steps_above_pixel_steps_above_plain_ones():
    for preset in ("fast", "paper"):
        cost = restore.prior_step_costs(ReSampleConfig.preset(preset))
        assert cost[None] < cost["pixel"] < cost["latent"]


@pytest.mark.parametrize(
    "config", [ReSampleConfig.preset("paper", steps=3), LatentDPSConfig.preset("fast", steps=3)]
)
def test_the_bars_follow_a_solver_that_runs_more_steps_than_asked(config):
    """ReSample's authors' grid runs ceil(1000 / 333) = 4 steps for --steps 3: the plan of
    the input in hand (two chunks of samples) becomes the solver's from its first step."""
    bars = restore._Bars(None, "deblur", inputs=1, config=config)
    assert bars.eta.kinds == [] and len(bars.schedule) == 3
    bars.start_pass(["a.png"], chunks=2)
    for chunk in range(2):
        for step in range(1, 5):
            bars.step(chunk, StepInfo(step, 4, 0, None, None))
    assert bars.eta.kinds == restore.step_kinds(config, 4) * 2 and bars.eta.done == 8
    if isinstance(config, ReSampleConfig):
        assert bars.eta.kinds[:4] == dc_schedule(replace(config, steps=4))
    else:
        assert bars.eta.kinds == [None] * 8
    bars.finish_input(restored=True)
    bars.start_pass(["b.png"], chunks=1)  # the next input starts with the solver's count
    assert len(bars.eta.kinds) == 4


def test_the_eta_column_counts_down_to_the_tasks_finish_time():
    clock = [100.0]
    bar = Progress(EtaColumn(), console=Console(file=io.StringIO()), get_time=lambda: clock[0])
    task = bar.add_task("steps", total=10, finish_at=None)
    column = EtaColumn()
    assert column.render(bar.tasks[task]).plain == "-:--:--"
    bar.update(task, finish_at=100.0 + 3725)
    clock[0] = 105.0
    assert column.render(bar.tasks[task]).plain == "1:02:00"


# --- the bars of a real run ----------------------------------------------------------


def test_the_bars_show_schedule_priced_etas(tmp_path, cli, model_args, monkeypatch):
    """With a terminal: the step bar gets an ETA from its first step, the batch bar from
    the first input on, and the estimator is given the schedule the solver runs."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    random_rgb(tmp_path / "in" / "a.png")
    random_rgb(tmp_path / "in" / "b.png", seed=1)
    updates: list[tuple[str, float | None]] = []
    plans = []
    real_update, real_start = Progress.update, ScheduleEta.start

    def update(self, task_id, **fields):
        if "finish_at" in fields:
            updates.append((self.tasks[task_id].description, fields["finish_at"]))
        return real_update(self, task_id, **fields)

    def start(self, kinds):
        plans.append(list(kinds))
        return real_start(self, kinds)

    monkeypatch.setattr(Progress, "update", update)
    monkeypatch.setattr(ScheduleEta, "start", start)
    r = cli(
        "deblur",
        tmp_path / "in",
        *BLUR,
        "-o",
        tmp_path / "out",
        "--samples",
        "2",
        "--batch-size",
        "1",
        *model_args,
    )
    steps = int(model_args[model_args.index("--steps") + 1])
    schedule = dc_schedule(ReSampleConfig.preset("fast", steps=steps))
    assert [kinds for kinds in plans if kinds] == [schedule * 2] * 2  # two chunks of samples each
    first_step_bar = [eta for bar, eta in updates if bar == "a.png"]
    assert first_step_bar[0] is None and None not in first_step_bar[1:]
    # From the second input on, both bars know their remaining time.
    second = [bar for bar, _ in updates].index("b.png")
    assert {bar for bar, _ in updates[second:]} == {"deblur", "b.png"}
    assert None not in [eta for _, eta in updates[second:]]
    assert "eta" in r.stderr


# --- threads ------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (6, 3), (8, 4), (64, 4)])
def test_default_threads_is_half_the_cpus_at_most_four(cpus, threads):
    assert options.default_threads(cpus) == threads


def test_without_threads_torch_gets_the_default_unless_omp_num_threads_is_set(
    tmp_path, cli, model_args, monkeypatch
):
    random_rgb(tmp_path / "in.png")
    monkeypatch.setattr(options, "available_cpus", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        cli("deblur", tmp_path / "in.png", *BLUR, "-o", tmp_path / "a", *model_args)
        assert torch.get_num_threads() == 3
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch read it itself: left alone
        cli("deblur", tmp_path / "in.png", *BLUR, "-o", tmp_path / "b", *model_args)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_help_states_the_default(cli):
    text = plain(cli("deblur", "--help").stdout)
    assert "half the CPUs, at most 4" in text and "OMP_NUM_THREADS" in text


# --- EXIF orientation ---------------------------------------------------------------


def _rotated_jpeg(path, h: int = 24, w: int = 40):
    """A JPEG stored w wide and h high whose EXIF says: turn 90 degrees clockwise to view
    (orientation 6, as a phone held upright writes it)."""
    random_rgb(path.with_suffix(".png"), h, w)
    with Image.open(path.with_suffix(".png")) as im:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(path, exif=exif, quality=95)
    path.with_suffix(".png").unlink()
    return path


def test_jpeg_exif_orientation_is_applied_on_read(tmp_path):
    path = _rotated_jpeg(tmp_path / "phone.jpg")
    with Image.open(path) as im:
        stored = np.asarray(im, dtype=np.float32) / 255  # (24, 40, 3) as stored
    upright = read_image(path).data
    assert upright.shape == (3, 40, 24) and image_size(path) == (40, 24)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1).transpose(2, 0, 1))


def test_a_rotated_photo_is_restored_upright(tmp_path, cli, model_args):
    """superres by 2 of the upright 40x24 photo: an upright 80x48 reference fits it."""
    path = _rotated_jpeg(tmp_path / "in" / "phone.jpg")
    random_rgb(tmp_path / "clean" / "phone.png", 80, 48)
    out = tmp_path / "out"
    r = cli(
        "superres", path, "--scale", "2", "--reference", tmp_path / "clean", "-o", out, "--json", *model_args
    )
    assert json.loads(r.stdout)["status"] == "written" and files_in(out) == {"phone.png", "phone.report.json"}
    with Image.open(out / "phone.png") as im:
        assert im.size == (48, 80)  # (width, height): upright
