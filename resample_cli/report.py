"""The measurement-residual report written beside each output, and its plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .fileio.atomic import atomic_path, write_text_atomic

REPORT_VERSION = 1


def residual_summary(
    rms: float,
    sigma_y: float,
    y_norm: float,
    m: int,
    per_dc_step: Sequence[float | None],
    *,
    decoded_rms: float | None = None,
) -> dict:
    """The fixed ``residual`` block: rms = ||y - A(x)|| / sqrt(m) of the output x, its
    ratio to sigma_y, and the relative residual ||y - A(x)|| / ||y||; ``decoded_ratio``:
    the ratio of the decoded image a final pixel solve started from (None when none ran,
    the output then being the decoded image), i.e. how well the prior itself fits."""
    norm = rms * math.sqrt(m)
    return {
        "rms": rms,
        "sigma_y": sigma_y,
        "ratio": _ratio(rms, sigma_y),
        "relative": norm / y_norm if y_norm > 0 else None,
        "per_dc_step": list(per_dc_step),
        "decoded_ratio": None if decoded_rms is None else _ratio(decoded_rms, sigma_y),
    }


def _ratio(rms: float, sigma_y: float) -> float | None:
    return rms / sigma_y if sigma_y > 0 else None


def write_report(path: str | Path, report: dict) -> None:
    write_text_atomic(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def plot_residuals(path: str | Path, per_dc_step: Sequence[float | None], sigma_y: float) -> None:
    """A PNG of the RMS residual after each data-consistency step (log scale), with the
    noise level sigma_y as a dashed line."""
    width, height, margin = 640, 400, 60
    values = [v for v in per_dc_step if v is not None and v > 0]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([margin, 20, width - 20, height - margin], outline="black")
    draw.text((margin, 4), "RMS residual per data-consistency step (log scale)", fill="black")
    draw.text((width // 2 - 60, height - 30), "data-consistency step", fill="black")
    if values:
        levels = values + ([sigma_y] if sigma_y > 0 else [])
        lo, hi = math.log10(min(levels)) - 0.1, math.log10(max(levels)) + 0.1
        n = len(per_dc_step)

        def to_xy(i: int, v: float) -> tuple[float, float]:
            x = margin + (width - 20 - margin) * (i / max(n - 1, 1))
            y = 20 + (height - margin - 20) * (hi - math.log10(v)) / (hi - lo)
            return x, y

        points = [to_xy(i, v) for i, v in enumerate(per_dc_step) if v is not None and v > 0]
        if len(points) > 1:
            draw.line(points, fill="navy", width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="navy")
        if sigma_y > 0:
            _, ys = to_xy(0, sigma_y)
            for x in range(margin, width - 20, 12):
                draw.line([(x, ys), (x + 6, ys)], fill="red", width=1)
            draw.text((width - 120, ys - 14), f"sigma_y = {sigma_y:.3g}", fill="red")
        draw.text((4, 20), f"{10**hi:.2g}", fill="black")
        draw.text((4, height - margin - 10), f"{10**lo:.2g}", fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
