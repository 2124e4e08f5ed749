"""The command line's side of the fit check: one warning line per output whose
residual the noise does not explain (the decision and its text: ``pipeline.fit_warning``)."""

from __future__ import annotations

from pathlib import Path

from .console import Output


def warn_if_poor_fit(out: Output, source: Path, report: dict) -> None:
    """Print the report's fit warning, if it has one, naming the input."""
    warning = report.get("fit", {}).get("warning")
    if warning:
        out.warn(f"{source}: {warning}")
