"""Training priors (``resample train-prior``): the data generators' statistics, a few steps of
each stage on tiny networks, loading the result, checkpoints and resumption, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from safetensors.torch import load_file
from scipy import stats
from tiny_prior import KL_SCALING_FACTOR, make_tiny_prior
from typer.testing import CliRunner

from resample_cli.cli import train as train_cli
from resample_cli.fileio.errors import InputError
from resample_cli.priors import DiffusersPrior, load_prior
from resample_cli.training import (
    FolderSource,
    SyntheticSource,
    TrainConfig,
    TrainingError,
    dead_leaves_with_disks,
    ellipse_phantoms,
    learning_rate,
    train_prior,
)
from resample_cli.training.checkpoints import list_checkpoints, load_checkpoint

TINY = {
    "resolution": 16,
    "ae_channels": (8, 8, 8),
    "latent_channels": 3,
    "unet_channels": (8, 16),
    "attention_head_dim": 8,
    "batch_size": 4,
    "warmup_steps": 1,
    "sample_steps": 2,
    "sample_grid": 2,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and runs compared bit for bit need the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(output, **changes) -> TrainConfig:
    settings = {"synthetic": "ellipses", "ae_steps": 2, "unet_steps": 2, "checkpoint_every": 2, **TINY}
    return TrainConfig(output=output, **{**settings, **changes})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- generators -------------------------------------------------------------------------------


def test_ellipse_phantoms_lie_in_the_unit_range_inside_the_inscribed_circle():
    size = 64
    x = ellipse_phantoms(48, size, gen(0))
    assert x.shape == (48, 1, size, size) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    c = (torch.arange(size) + 0.5) * 2 / size - 1
    outside = (c[None, :] ** 2 + c[:, None] ** 2) > 1
    assert float(x[..., outside].abs().max()) == 0.0
    inside = ~outside
    covered = (x[:, 0][:, inside] > 0).float().mean(1)
    assert float(covered.min()) > 0.15  # the body ellipse alone covers >= 0.25 of the circle
    assert len(torch.unique(x[0])) >= 3  # a body plus further ellipses: several grey levels
    assert torch.equal(x, ellipse_phantoms(48, size, gen(0)))
    assert not torch.equal(x, ellipse_phantoms(48, size, gen(1)))


def test_dead_leaves_radii_follow_the_r_minus_3_power_law():
    r_min, r_max = 1.0, 32.0
    leaves = dead_leaves_with_disks(6, 64, 3, gen(1), r_min=r_min, r_max=r_max)
    radii = torch.cat(leaves.radii).double().numpy()
    assert len(radii) > 2000
    assert radii.min() >= r_min and radii.max() <= r_max

    def cdf(r, exponent):  # p(r) ∝ r^-exponent on [r_min, r_max], in closed form
        a = 1 - exponent
        return (np.clip(r, r_min, r_max) ** a - r_min**a) / (r_max**a - r_min**a)

    assert stats.kstest(radii, lambda r: cdf(r, 3.0)).pvalue > 0.01
    # The test has power: neighbouring exponents are rejected outright.
    assert stats.kstest(radii, lambda r: cdf(r, 2.5)).pvalue < 1e-6
    assert stats.kstest(radii, lambda r: cdf(r, 3.5)).pvalue < 1e-6


def test_dead_leaves_cover_the_image_front_to_back():
    size = 24
    leaves = dead_leaves_with_disks(3, size, 3, gen(2))
    images = leaves.images
    assert images.shape == (3, 3, size, size) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert torch.equal(leaves.uncovered, torch.zeros(3))  # coverage complete
    centre = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(centre, centre, indexing="ij")
    for i in range(3):  # brute force: each pixel shows the first-drawn disk over it
        xy, r = leaves.centres[i], leaves.radii[i]
        d2 = (px.reshape(1, -1) - xy[:, :1]) ** 2 + (py.reshape(1, -1) - xy[:, 1:]) ** 2
        over = d2 <= r[:, None] ** 2  # (disks, pixels)
        assert bool(over.any(0).all())
        first = over.float().argmax(0)
        expected = leaves.colours[i][first].T.reshape(3, size, size)
        assert torch.equal(images[i], expected)
        assert int(first.max()) == len(r) - 1  # drawing stopped at the disk that completed the cover


def test_dead_leaves_budget_leaves_background_and_grey_works():
    leaves = dead_leaves_with_disks(2, 32, 1, gen(3), max_disks=5)
    assert all(len(r) == 5 for r in leaves.radii)
    assert float(leaves.uncovered.min()) > 0
    image, background = leaves.images[0, 0], leaves.background[0, 0]
    assert bool((image == background).any())
    grey = SyntheticSource("dead-leaves", 32, 1).sample(4, gen(4))
    assert grey.shape == (4, 1, 32, 32)
    rgb = SyntheticSource("ellipses", 32, 3).sample(2, gen(5))
    assert rgb.shape == (2, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])


def _ct_slice(path, hu_value: int, shape=(40, 50)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.full(shape, hu_value + 1024, dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_folder_source_crops_converts_and_reads_dicom(tmp_path):
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8)).save(images / "nested" / "b.png")
    (images / "notes.txt").write_text("ignored")
    source = FolderSource(images, 16)
    assert len(source) == 2 and source.channels == 3  # not every file is grey
    x = source.sample(6, gen(0))
    assert x.shape == (6, 3, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, source.sample(6, gen(0)))
    assert FolderSource(images, 8, channels=1).sample(2, gen(0)).shape == (2, 1, 8, 8)

    slices = tmp_path / "ct"
    slices.mkdir()
    _ct_slice(slices / "s1.dcm", 0)  # water: 1024 / 4096 = 0.25 through the HU window
    _ct_slice(slices / "s2.dcm", 0, shape=(20, 20))
    ct = FolderSource(slices, 16)
    assert ct.channels == 1 and ct.dicom_count == 2
    np.testing.assert_allclose(ct.sample(4, gen(1)).numpy(), 0.25, atol=1e-6)

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no training images"):
        FolderSource(tmp_path / "empty", 16)


def test_learning_rate_warms_up_then_decays_by_cosine():
    lrs = [learning_rate(s, 100, 1e-3, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4)
    assert lrs[10 + 45] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))


# --- training ---------------------------------------------------------------------------------


def test_kl_training_saves_a_prior_that_loads_and_runs(tmp_path):
    events = []
    result = train_prior(tiny(tmp_path / "out"), callback=events.append)
    out = tmp_path / "out"
    steps = [e for e in events if e.event == "step"]
    assert [(e.step, e.stage) for e in steps] == [
        (1, "autoencoder"),
        (2, "autoencoder"),
        (3, "unet"),
        (4, "unet"),
    ]
    assert all(e.total == 4 and math.isfinite(e.loss) and e.eta_s is not None for e in steps)
    assert {"checkpoint", "latent-scale", "saved"} <= {e.event for e in events}
    assert (result.steps, result.ae_steps, result.unet_steps) == (4, 2, 2)

    prior = load_prior(str(out))
    assert isinstance(prior, DiffusersPrior)
    assert type(prior.autoencoder).__name__ == "AutoencoderKL"
    assert (prior.image_channels, prior.latent_channels, prior.downsample_factor) == (1, 3, 4)
    config = json.loads((out / "vae" / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(result.latent_scale)
    assert prior.latent_scale == pytest.approx(result.latent_scale)
    z = torch.randn(2, *prior.latent_shape(16, 16))
    assert z.shape == (2, 3, 4, 4)
    assert prior.decode(z).shape == (2, 1, 16, 16)
    assert prior.eps(z, torch.tensor([10, 900])).shape == z.shape
    # The latent scale makes the encoded training images about unit standard deviation.
    x = SyntheticSource("ellipses", 16, 1).sample(256, gen(7)) * 2 - 1
    assert 0.7 < float(prior.encode(x).std()) < 1.4
    # unet/ holds the EMA weights of the last checkpoint; the noise schedule is the LDM one.
    last = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], last.unet_ema[k]) for k in saved)
    schedule = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (schedule["beta_schedule"], schedule["beta_start"], schedule["beta_end"]) == (
        "scaled_linear",
        0.0015,
        0.0195,
    )
    assert schedule["num_train_timesteps"] == 1000 and schedule["clip_sample"] is False

    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    grid = Image.open(out / "samples" / "final.png")
    assert grid.size == (2 * 16 + 2, 2 * 16 + 2)  # 2 x 2 samples, 2-pixel gaps
    assert (out / "samples" / "step-00000002.png").is_file()  # autoencoder reconstructions
    card = (out / "model_card.md").read_text()
    assert "| seed | 0 |" in card and "samples/final.png" in card and "2 steps" in card
    assert len((out / "losses.csv").read_text().splitlines()) == 5
    assert result.weights_bytes == sum(
        p.stat().st_size for p in out.glob("*/diffusion_pytorch_model.safetensors")
    )


def test_vq_training_writes_vqvae(tmp_path):
    result = train_prior(
        tiny(
            tmp_path / "out",
            synthetic="dead-leaves",
            autoencoder="vq",
            vq_codebook_size=32,
            unet_steps=1,
            latent_pool=16,
        )
    )
    assert (tmp_path / "out" / "vqvae").is_dir() and not (tmp_path / "out" / "vae").exists()
    prior = load_prior(str(tmp_path / "out"))
    assert type(prior.autoencoder).__name__ == "VQModel"
    assert prior.image_channels == 3 and prior.latent_scale == pytest.approx(result.latent_scale)
    assert prior.decode(torch.randn(1, 3, 4, 4)).shape == (1, 3, 16, 16)


def _adam_steps(ckpt) -> set[int]:
    return {int(s["step"]) for s in ckpt.optimizer["state"].values()}


def test_resume_continues_the_step_count_and_restores_the_optimiser(tmp_path):
    out = tmp_path / "out"
    train_prior(tiny(out, ae_steps=2, unet_steps=0))
    first = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])
    assert first.state.step == 2 and _adam_steps(first) == {2}

    with pytest.raises(TrainingError, match="resume"):
        train_prior(tiny(out, ae_steps=4, unet_steps=0))
    with pytest.raises(TrainingError, match="ae_channels"):
        train_prior(tiny(out, ae_steps=4, unet_steps=0, ae_channels=(8, 8, 16)), resume=True)

    events = []
    result = train_prior(tiny(out, ae_steps=4, unet_steps=0), resume=True, callback=events.append)
    assert events[0].event == "resumed" and "step 2" in events[0].message
    assert [e.step for e in events if e.event == "step"] == [3, 4]
    assert result.steps == 4
    found = list_checkpoints(out / "checkpoints")
    assert [s for s, _ in found] == [2, 4]
    second = load_checkpoint(found[-1][1])
    assert (second.state.step, second.state.ae_step) == (4, 4)
    assert second.optimizer_stage == "autoencoder"
    assert _adam_steps(second) == {4}  # Adam's state went on from the checkpoint's, not from scratch
    assert [row[0] for row in second.state.history] == [1, 2, 3, 4]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = train_prior(tiny(tmp_path / "a", ae_steps=3, unet_steps=3))

    def interrupt(progress):
        if progress.event == "step" and progress.step == 5:
            raise KeyboardInterrupt

    config = tiny(tmp_path / "b", ae_steps=3, unet_steps=3)
    with pytest.raises(KeyboardInterrupt):
        train_prior(config, callback=interrupt)
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [3, 4]  # the 2 newest kept
    assert not list((tmp_path / "b" / "checkpoints").glob(".*"))  # no half-written checkpoint
    resumed = train_prior(config, resume=True)
    assert resumed.steps == straight.steps == 6
    assert resumed.latent_scale == straight.latent_scale
    for sub in ("vae", "unet"):
        a = load_file(tmp_path / "a" / sub / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "b" / sub / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    assert (tmp_path / "a" / "losses.csv").read_text() == (tmp_path / "b" / "losses.csv").read_text()


def test_fine_tuning_a_base_prior_keeps_its_autoencoder_and_scale(tmp_path):
    base = make_tiny_prior(tmp_path / "base", autoencoder="kl", image_channels=3)
    result = train_prior(
        tiny(tmp_path / "out", synthetic="dead-leaves", base=str(base), ae_steps=0, unet_steps=2)
    )
    assert result.latent_scale == pytest.approx(KL_SCALING_FACTOR)
    before = load_file(base / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "out" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    unet_before = load_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    unet_after = load_file(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    prior = load_prior(str(tmp_path / "out"))
    assert prior.latent_scale == pytest.approx(KL_SCALING_FACTOR)
    assert prior.alphas_cumprod[-1] == pytest.approx(load_prior(str(base)).alphas_cumprod[-1])
    card = (tmp_path / "out" / "model_card.md").read_text()
    assert "| autoencoder | the base's, not trained further |" in card and "x KL" not in card
    with pytest.raises(TrainingError, match="3-channel"):
        train_prior(tiny(tmp_path / "grey", base=str(base), ae_steps=0, channels=1))


@pytest.mark.parametrize("kind, folder", [("kl", "vae"), ("vq", "vqvae")])
def test_decoder_only_fine_tuning_keeps_the_latent_space_and_the_unet(tmp_path, kind, folder):
    base = make_tiny_prior(tmp_path / "base", autoencoder=kind, image_channels=3)
    train_prior(
        tiny(
            tmp_path / "out",
            synthetic="dead-leaves",
            base=str(base),
            ae_train="decoder",
            ae_steps=3,
            unet_steps=0,
        )
    )
    before = load_file(base / folder / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "out" / folder / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    trained = {k for k in before if k.startswith(("decoder.", "post_quant_conv."))}
    assert any(k.startswith("decoder.") for k in trained)
    # everything that makes the latent (encoder, quant_conv, the VQ codebook) is bit for bit the base's
    assert all(torch.equal(before[k], after[k]) for k in before.keys() - trained)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))
    unet_before = load_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    unet_after = load_file(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    assert load_prior(str(tmp_path / "out")).latent_scale == pytest.approx(load_prior(str(base)).latent_scale)
    card = (tmp_path / "out" / "model_card.md").read_text()
    assert "decoder only" in card and "the base's, not trained further" in card
    assert "Samples (DDIM" in card and "not a usable prior" not in card  # the base's UNet samples


def test_the_recorded_command_of_a_fine_tune_leaves_out_the_ignored_architecture(tmp_path):
    config = tiny(tmp_path / "out", base="ct-ellipses", ae_train="decoder", unet_steps=0)
    words = train_cli.command_line(config).split()
    assert words[words.index("--base") + 1] == "ct-ellipses"
    assert words[words.index("--ae-train") + 1] == "decoder"
    assert not set(words) & set(train_cli.BASE_ARCHITECTURE_FLAGS)
    assert "--ae-channels" in train_cli.command_line(tiny(tmp_path / "new")).split()


def test_settings_are_checked(tmp_path):
    with pytest.raises(TrainingError, match="exactly one data source"):
        TrainConfig(output=tmp_path, **TINY).validate()
    with pytest.raises(TrainingError, match="multiple of 8"):
        tiny(tmp_path, resolution=20).validate()
    with pytest.raises(TrainingError, match="attention_head_dim"):
        tiny(tmp_path, attention_head_dim=3).validate()
    with pytest.raises(TrainingError, match="needs a base prior"):
        tiny(tmp_path, ae_steps=0).validate()
    with pytest.raises(TrainingError, match="decoder; it needs a base prior"):
        tiny(tmp_path, ae_train="decoder").validate()
    with pytest.raises(TrainingError, match="ae_train must be one of all, decoder"):
        tiny(tmp_path, ae_train="encoder").validate()


# --- the command ------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    app = typer.Typer(rich_markup_mode=None)
    app.command("train-prior")(train_cli.train_prior)

    @app.callback()
    def main() -> None:
        """Test app."""

    return app


TINY_ARGS = [
    "--resolution", "16", "--ae-channels", "8,8,8", "--unet-channels", "8,16", "--attention-head-dim", "8",
    "--ae-steps", "2", "--unet-steps", "2", "--batch-size", "2", "--checkpoint-every", "2", "--sample-steps", "2",
    "--device", "cpu", "--threads", "1",
]  # fmt: skip


def test_command_trains_end_to_end(tmp_path):
    out = tmp_path / "prior"
    result = CliRunner().invoke(
        cli_app(), ["train-prior", str(out), "--synthetic", "dead-leaves", *TINY_ARGS]
    )
    assert result.exit_code == 0, result.output
    assert "saved the prior" in result.stderr and result.stdout == ""
    prior = load_prior(str(out))
    assert prior.image_channels == 3
    card = (out / "model_card.md").read_text()
    assert "resample train-prior" in card and "--synthetic dead-leaves" in card

    again = CliRunner().invoke(cli_app(), ["train-prior", str(out), "--synthetic", "dead-leaves", *TINY_ARGS])
    assert again.exit_code == 1 and "--resume" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 2  # the start line and one error line
    resumed = CliRunner().invoke(
        cli_app(), ["train-prior", str(out), "--synthetic", "dead-leaves", *TINY_ARGS, "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output


def test_command_errors(tmp_path, monkeypatch):
    app = cli_app()
    both = CliRunner().invoke(app, ["train-prior", str(tmp_path / "o"), "--synthetic", "ellipses",
                                    "--data", str(tmp_path)])  # fmt: skip
    assert both.exit_code == 2 and "exactly one of --data" in both.output
    missing = CliRunner().invoke(app, ["train-prior", str(tmp_path / "o"), "--data", str(tmp_path / "none"),
                                       *TINY_ARGS])  # fmt: skip
    assert missing.exit_code == 1 and "no such folder" in missing.stderr
    assert not (tmp_path / "o").exists()  # nothing written when the data cannot be read
    bad = CliRunner().invoke(app, ["train-prior", str(tmp_path / "o"), "--synthetic", "ellipses",
                                   "--ae-channels", "8,x"])  # fmt: skip
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "run_training", interrupted)
    stopped = CliRunner().invoke(
        app, ["train-prior", str(tmp_path / "o"), "--synthetic", "ellipses", *TINY_ARGS]
    )
    assert stopped.exit_code == 130 and "interrupted" in stopped.stderr and "--resume" in stopped.stderr

    help_text = CliRunner().invoke(app, ["train-prior", "--help"], terminal_width=200).output
    for option in ("--synthetic", "--ae-steps", "--unet-steps", "--resume", "--base", "--checkpoint-every"):
        assert option in help_text
    assert "[default: 500" in help_text and "[default: 1 for ellipses" in help_text
