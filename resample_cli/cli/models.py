"""``resample models``: the registry, where models are cached, fetching ahead of time."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from huggingface_hub import constants
from rich.console import Console
from rich.table import Table

from ..priors import PriorError, fetch_prior, get_entry, load_registry, prior_cache_path

models_app = typer.Typer(help="List, inspect and download the known models.", no_args_is_help=True)


def _cached(name: str) -> str:
    try:
        path = prior_cache_path(name)
    except PriorError:
        return "no"
    return str(path) if path else "no"


@models_app.command("list")
def list_models(
    json_out: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List the registry's models and whether each is available offline."""
    entries = load_registry()
    if json_out:
        typer.echo(
            json.dumps({name: {**_entry_dict(e), "cached": _cached(name)} for name, e in entries.items()})
        )
        return
    table = Table("name", "kind", "source", "resolution", "channels", "available offline at")
    for name, e in entries.items():
        table.add_row(
            name,
            e.kind,
            e.repo or str(e.path),
            str(e.resolution or "?"),
            str(e.channels or "?"),
            _cached(name),
        )
    Console().print(table)


@models_app.command("info")
def info(name: Annotated[str, typer.Argument(help="Registry name.")]) -> None:
    """Show every registry field of a model and where it is cached."""
    try:
        entry = get_entry(name)
    except PriorError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for key, value in {
        **_entry_dict(entry),
        "cached": _cached(name),
        "hub_cache": constants.HF_HUB_CACHE,
    }.items():
        typer.echo(f"{key:14} {value}")


@models_app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="Registry name or Hub repo id.")],
    revision: Annotated[
        str | None, typer.Option(help="Commit, branch or tag [default: the pinned one].")
    ] = None,
) -> None:
    """Fetch a model into the Hugging Face cache so later runs work offline."""
    try:
        path = fetch_prior(name, revision)
    except PriorError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name}: ready at {path}")


def _entry_dict(entry) -> dict:
    return {
        "kind": entry.kind,
        "repo": entry.repo,
        "revision": entry.revision,
        "path": None if entry.path is None else str(entry.path),
        "latent_scale": entry.latent_scale,
        "resolution": entry.resolution,
        "channels": entry.channels,
        "license": entry.license,
        "description": entry.description,
    }
