"""The priors shipped in the package (resample_cli/bundled/) and the README's offline main command."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from resample_cli.priors import load_prior
from resample_cli.priors.registry import get_entry
from resample_cli.solvers.schedule import scheduler_grid
from resample_cli.training.data import dead_leaves, ellipse_phantoms

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"ct-ellipses": (1, 128), "dead-leaves": (3, 64)}
MAX_AE_ERROR = {"ct-ellipses": 0.05, "dead-leaves": 0.15}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_prior_loads_by_name_within_size(name, offline, one_thread):
    channels, resolution = SHIPPED[name]
    entry = get_entry(name)
    assert entry.kind == "bundled" and entry.channels == channels and entry.resolution == resolution
    weights = sum(f.stat().st_size for f in entry.path.rglob("*.safetensors"))
    assert 0 < weights <= 25 * 2**20
    assert not list(entry.path.rglob("*.bin")), "bundled weights are safetensors only"
    prior = load_prior(name)
    assert prior.image_channels == channels and resolution % prior.size_multiple == 0
    shape = prior.latent_shape(resolution, resolution)
    z = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = prior.decode(z)
        eps = prior.eps(z, torch.tensor([scheduler_grid(prior.scheduler, 10)[0].t]))
    assert x.shape == (1, channels, resolution, resolution) and eps.shape == z.shape
    assert bool(torch.isfinite(eps).all())
    # The autoencoder was trained: it reconstructs fresh images of its training generator
    # (mean absolute error in [0, 1]: 0.011 and 0.081 measured; above 0.3 untrained).
    g = torch.Generator().manual_seed(1)
    clean = ellipse_phantoms(2, 128, g) if name == "ct-ellipses" else dead_leaves(2, 64, 3, g)
    with torch.no_grad():
        again = (prior.decode(prior.encode(clean * 2 - 1)) + 1) / 2
    assert float((again.clamp(0, 1) - clean).abs().mean()) < MAX_AE_ERROR[name]


def readme_main_command() -> list[str]:
    """The README's offline main command (the first `resample ct examples/...` line)."""
    text = (ROOT / "README.md").read_text()
    line = re.search(r"^resample ct examples/\S+.*$", text, re.MULTILINE)
    assert line, "README has no `resample ct examples/...` command"
    return shlex.split(line.group(0).split("#")[0])[1:]


def test_readme_main_command_runs_offline_on_the_shipped_prior(
    cli, offline, one_thread, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)
    args = readme_main_command()
    out = tmp_path / "restored"
    # The README's command, with few steps (CI does not afford a full run) and a temporary output folder.
    index = args.index("-o")
    args[index + 1] = str(out)
    cli(*args, "--steps", "4", "--quiet")
    report = json.loads(next(out.glob("*.report.json")).read_text())
    assert report["model"]["name"] == "ct-ellipses" and report["task"] == "ct"
    assert report["metrics"]["psnr"] > 10
    assert (out / "shepp-logan-25.png").exists() and (out / "shepp-logan-25.npy").exists()
