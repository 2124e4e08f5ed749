"""How the package words things for people: another library's error cut to one line, and a
duration. Standard library only, so every layer (and the CLI's declaration modules) may use it."""

from __future__ import annotations

import re


def first_line(error: BaseException, *, sentence: bool = False) -> str:
    """``error``'s message cut to its first line, or with ``sentence`` to its first sentence
    (torch's further advice, such as retrying with ``weights_only=False``, is not ours to
    give); the exception's type name when it has no message. Quoting other libraries' errors
    through it keeps ours one line long."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    if sentence:
        return re.split(r"\.\s|\n", text, maxsplit=1)[0]
    return text.splitlines()[0]


def format_duration(seconds: float | None, *, compact: bool = False) -> str:
    """Whole seconds as "1 h 02 min 03 s" or "3 min 05 s" (model cards), or with ``compact`` as
    "1h02m" or "3m05s" (progress lines); "?" for a duration not known yet."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if compact:
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"
