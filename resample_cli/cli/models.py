"""``resample models``: the registry, where models are cached, fetching ahead of time.

Each command imports the priors (and with them huggingface_hub and diffusers) when it
runs, so that ``--help`` answers at once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated

import typer

models_app = typer.Typer(help="List, inspect and download the known models.", no_args_is_help=True)


@contextlib.contextmanager
def _one_line_errors(exit_code: int = 1) -> Iterator[None]:
    """A registry or cache problem ends the command with one ``error:`` line, never a traceback."""
    from ..priors import PriorError

    try:
        yield
    except (PriorError, OSError, ValueError) as err:
        # OSError: an unreadable cache folder; ValueError: huggingface_hub's validation errors.
        message = " ".join(str(err).split()) or type(err).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(exit_code) from None


def _cached(name: str) -> str:
    from ..priors import PriorError, prior_cache_path

    try:
        path = prior_cache_path(name)
    except (PriorError, OSError, ValueError):  # a broken cache entry is simply not available offline
        return "no"
    return str(path) if path else "no"


@models_app.command("list")
def list_models(
    json_out: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List the registry's models and whether each is available offline."""
    from rich.console import Console
    from rich.table import Column, Table

    from ..priors import load_registry

    with _one_line_errors():
        entries = load_registry()
    if json_out:
        typer.echo(
            json.dumps({name: {**_entry_dict(e), "cached": _cached(name)} for name, e in entries.items()})
        )
        return
    table = Table("kind", "source", "resolution", "channels", "available offline at")
    # The names are what --model takes: never cut, the other columns give way.
    table.columns.insert(0, Column("name", min_width=max(map(len, entries), default=4), no_wrap=True))
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
    from huggingface_hub import constants

    from ..priors import get_entry

    with _one_line_errors(exit_code=2):
        entry = get_entry(name)
    for key, value in {
        **_entry_dict(entry),
        "pinned": _pinned(entry),
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
    from ..priors import fetch_prior

    with _one_line_errors():
        path = fetch_prior(name, revision)
    typer.echo(f"{name}: ready at {path}")


def _entry_dict(entry) -> dict:
    return {
        "kind": entry.kind,
        "repo": entry.repo,
        "revision": entry.revision,
        "pinned": entry.pinned,
        "path": None if entry.path is None else str(entry.path),
        "latent_scale": entry.latent_scale,
        "resolution": entry.resolution,
        "channels": entry.channels,
        "license": entry.license,
        "description": entry.description,
    }


def _pinned(entry) -> str | None:
    """Whether the entry names one commit; a branch may move, so what it loads can change."""
    if entry.pinned is None:
        return None
    if entry.pinned:
        return "yes"
    return f"no: the branch {entry.revision or 'main'} (its commit could not be confirmed); pass --revision COMMIT to fix one"
