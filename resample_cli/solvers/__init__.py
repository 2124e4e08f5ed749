"""Solvers: ReSample (``resample``), Latent-DPS and PSLD (``latent_dps``), DiffPIR
(``diffpir``), the classical baselines (``classical``), and their shared parts (``ddim``,
``consistency``, ``krylov``, ``trace``, ``schedule``).

``SOLVERS`` is the registry of the diffusion solvers the command line offers (``--solver``,
``bench --solvers``), declared once, in the order ``--help`` lists them. Each entry names
the module that holds its function and config class; ``solver_named`` imports that module
on call, so listing the names (``SOLVER_NAMES``) imports no torch: the CLI's declaration
modules read them for ``--help``.

Every solver function has ReSample's interface,
``solve(y, operator, prior, config, *, sigma_y, image_size, generator, callback, autocast) -> Result``,
and every config class ``preset(name, **overrides)``, ``to_dict()``, a ``steps`` field and
``resolved(operator)``: the config as it runs on that operator (values its sources set per
task filled in), which the report records.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class SolverConfig(Protocol):
    """What the pipeline and the CLI use of a solver's settings."""

    steps: int

    def resolved(self, operator: Any) -> SolverConfig:
        """The config with the values its solver sets per task (from ``operator``) filled in."""
        ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class SolverEntry:
    """One diffusion solver: its command-line name, where its function and config class
    live (``module`` under ``resample_cli.solvers``), one line for ``--help``, whether it
    needs a linear operator (one with ``adjoint``) or a latent prior (one with an
    autoencoder), and the name of the method it is on a pixel-space prior, where that has one
    of its own (Latent-DPS on pixels is DPS)."""

    name: str
    module: str
    function: str
    config: str
    summary: str
    linear_only: bool = False
    latent_only: bool = False
    pixel_name: str | None = None

    def load(self) -> tuple[Callable[..., Any], type]:
        """(solve function, config class), importing the module (and torch) now."""
        module = importlib.import_module(f"{__name__}.{self.module}")
        return getattr(module, self.function), getattr(module, self.config)

    def refuses(self, linear: bool, space: str = "latent") -> str | None:
        """Why this solver cannot run with an operator that is (not) ``linear``, or on a
        prior of ``space`` ("latent" or "pixel"); None if it can."""
        if self.linear_only and not linear:
            return f"{self.name} needs a linear operator (its gluing term uses the adjoint A^T)"
        if self.latent_only and space != "latent":
            return (
                f"{self.name} needs a latent prior (its gluing term ties the decoder to the encoder, which "
                "a pixel-space prior lacks); on a pixel prior latent-dps is DPS"
            )
        return None

    def name_on(self, space: str) -> str:
        """The name of what this solver runs on a prior of ``space`` (reports, bench rows)."""
        return self.pixel_name if space == "pixel" and self.pixel_name else self.name


SOLVERS: dict[str, SolverEntry] = {
    entry.name: entry
    for entry in (
        SolverEntry(
            "resample",
            "resample",
            "resample",
            "ReSampleConfig",
            "ReSample: latent DDIM with hard data consistency and stochastic resampling",
        ),
        SolverEntry(
            "latent-dps",
            "latent_dps",
            "latent_dps",
            "LatentDPSConfig",
            "Latent-DPS: a DPS gradient step on the latent after each DDIM step (on a pixel prior: DPS)",
            pixel_name="dps",
        ),
        SolverEntry(
            "psld",
            "latent_dps",
            "psld",
            "PSLDConfig",
            "PSLD: Latent-DPS plus its gluing term (latent priors); linear operators only",
            linear_only=True,
            latent_only=True,
        ),
        SolverEntry(
            "diffpir",
            "diffpir",
            "diffpir",
            "DiffPIRConfig",
            "DiffPIR: a data proximal step after each denoising step",
        ),
    )
}
SOLVER_NAMES: tuple[str, ...] = tuple(SOLVERS)
DEFAULT_SOLVER = "resample"


def solver_entry(name: str) -> SolverEntry:
    """The registry's entry for ``name``; a ValueError names the solvers."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose from {', '.join(SOLVER_NAMES)}") from None


def solver_named(name: str) -> tuple[Callable[..., Any], type]:
    """(solve function, config class) of the solver ``name``, its module imported now."""
    return solver_entry(name).load()


def solver_config(name: str, preset: str, **overrides: Any) -> SolverConfig:
    """The config of solver ``name`` from its preset ``preset`` with ``overrides``; a
    ValueError for an unknown preset names the solver and its presets."""
    _, config_class = solver_named(name)
    try:
        return config_class.preset(preset, **overrides)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def name_of_config(config: object) -> str:
    """The name of the solver whose config class ``config`` is (by class and module, so
    no solver module is imported); a ValueError when none is."""
    cls = type(config)
    for entry in SOLVERS.values():
        if cls.__name__ == entry.config and cls.__module__ == f"{__name__}.{entry.module}":
            return entry.name
    raise ValueError(f"{cls.__name__} is the config of no registered solver")


__all__ = [
    "DEFAULT_SOLVER",
    "SOLVERS",
    "SOLVER_NAMES",
    "SolverConfig",
    "SolverEntry",
    "name_of_config",
    "solver_config",
    "solver_entry",
    "solver_named",
]
