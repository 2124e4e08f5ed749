"""``resample models list|info|download``, offline with an empty Hugging Face cache."""

from __future__ import annotations

import json

import pytest
from conftest import plain

from resample_cli.priors import load_registry

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


def test_models_list_json_is_the_registry_and_nothing_is_cached(cli):
    listed = json.loads(cli("models", "list", "--json").stdout)
    registry = load_registry()
    assert set(listed) == set(registry) and "celebahq" in listed
    entry = listed["celebahq"]
    assert entry["repo"] == "CompVis/ldm-celebahq-256" and entry["latent_scale"] == 1.0
    assert entry["revision"] == registry["celebahq"].revision and len(entry["revision"]) == 40
    assert entry["cached"] == "no"


def test_models_list_table_names_every_model(cli):
    text = plain(cli("models", "list").stdout)
    for name in load_registry():
        assert name in text


def test_models_info_shows_the_pinned_revision_and_the_cache(cli, offline):
    text = plain(cli("models", "info", "celebahq").stdout)
    assert "CompVis/ldm-celebahq-256" in text and load_registry()["celebahq"].revision in text
    assert f"hub_cache {offline}" in text and "cached no" in text


def test_models_info_of_an_unknown_name_exits_2(cli):
    r = cli("models", "info", "no-such-model", expect=2)
    assert "unknown model 'no-such-model'" in r.stderr and "celebahq" in r.stderr


def test_models_download_offline_fails_with_the_reason(cli, offline):
    r = cli("models", "download", "someone/missing-model", expect=1)
    text = plain(r.stderr)
    assert "someone/missing-model" in text and str(offline) in text and "HF_HUB_OFFLINE" in text
    assert list(offline.iterdir()) == []  # nothing half-downloaded


def test_version(cli):
    from resample_cli import __version__

    assert cli("--version").stdout.strip() == f"resample {__version__}"


@pytest.mark.parametrize(
    "command", [("models", "list"), ("models", "list", "--json"), ("models", "info", "celebahq")]
)
def test_a_broken_registry_is_one_error_line_not_a_traceback(cli, tmp_path, monkeypatch, command):
    broken = tmp_path / "registry.toml"
    broken.write_text("[models.x\nrepo = ")
    monkeypatch.setattr("resample_cli.priors.registry.registry_file", lambda: broken)
    r = cli(*command, expect=1 if command[1] == "list" else 2)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(broken) in lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_a_cache_that_is_not_a_folder_lists_models_as_not_cached(cli, tmp_path, monkeypatch):
    from huggingface_hub import constants

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(not_a_folder))
    listed = json.loads(cli("models", "list", "--json").stdout)
    assert listed["celebahq"]["cached"] == "no" and listed["ct-ellipses"]["cached"] != "no"
