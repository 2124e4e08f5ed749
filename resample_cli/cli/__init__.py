"""The ``resample`` command line (Typer)."""

from .app import app

__all__ = ["app"]
