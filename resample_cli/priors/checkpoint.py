"""Reading weight files without unrestricted pickle, and putting them into a model built
from its config (so diffusers' own loader, which may unpickle, is never involved)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import PriorError
from .layout import SAFETENSORS

# Attention parameter names diffusers used before 0.14: checkpoints converted back then may
# still carry them, and diffusers' own loader renames them too.
_LEGACY_ATTENTION = re.compile(r"^(.*)\.(query|key|value|proj_attn)\.(weight|bias)$")
_RENAMED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.bin`` file through ``torch.load(weights_only=True)``."""
    try:
        if path.name == SAFETENSORS:
            state = load_file(path)
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # SafetensorError, UnpicklingError, EOFError, RuntimeError...: all unusable
        raise _unreadable(name, path, err) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PriorError(f"model {name!r}: weight file {path} does not hold a flat dictionary of tensors")
    return state


def load_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load ``path`` into ``model``; every parameter must be there with the config's shape."""
    state = _rename_legacy_attention(read_state_dict(path, name), model)
    expected = model.state_dict()
    problems = []
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    for key in sorted(expected.keys() & state.keys()):
        if state[key].shape != expected[key].shape:
            problems.append(
                f"{key} is {tuple(state[key].shape)} in the file but {tuple(expected[key].shape)} by the config"
            )
            break
    if problems:
        raise PriorError(
            f"model {name!r}: weights in {path} do not match {path.parent.name}/config.json: {'; '.join(problems)}"
        )
    model.load_state_dict(state)


def _rename_legacy_attention(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    wanted = set(model.state_dict())
    renamed = {}
    for key, value in state.items():
        match = _LEGACY_ATTENTION.match(key)
        if match and key not in wanted:
            new = f"{match[1]}.{_RENAMED[match[2]]}.{match[3]}"
            key = new if new in wanted else key
        renamed[key] = value
    return renamed


def _unreadable(name: str, path: Path, err: BaseException) -> PriorError:
    # The first sentence only: torch's further advice (retry with weights_only=False) is not ours to give.
    detail = re.split(r"\.\s|\n", str(err).strip(), maxsplit=1)[0]
    return PriorError(
        f"model {name!r}: weight file {path} is corrupt, truncated or not a plain tensor file "
        f"({type(err).__name__}: {detail})"
    )
