"""The registry of known models: ``registry.toml`` (shipped in ``resample_cli/bundled/``) maps a
short name to a Hub repository at a pinned revision, or to a model bundled beside it.
Each field is documented in the repository's ``weights/README.md``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..bundled import registry_file
from .errors import PriorError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, a dependency there
    import tomli as tomllib


@dataclass(frozen=True)
class RegistryEntry:
    """One known model. Exactly one of ``repo`` (a Hub model) and ``path`` (a bundled one) is set."""

    name: str
    repo: str | None = None
    revision: str | None = None
    path: Path | None = None  # absolute; written relative to the registry file's folder
    unet: str = "unet"
    autoencoder: str | None = None  # None: whichever of vqvae/ and vae/ exists
    scheduler: str = "scheduler"
    latent_scale: float | None = None  # None: the autoencoder config's scaling_factor, else 1.0
    resolution: int | None = None
    channels: int | None = None
    license: str | None = None
    description: str = ""

    @property
    def kind(self) -> Literal["hub", "bundled"]:
        return "hub" if self.repo else "bundled"

    @property
    def pinned(self) -> bool | None:
        """Whether a Hub entry names one commit (a 40-hex hash) rather than a branch or tag,
        which may move; None for a bundled model, which has no revisions."""
        if self.repo is None:
            return None
        return self.revision is not None and re.fullmatch(r"[0-9a-f]{40}", self.revision) is not None


# TOML value types each field accepts (integers are fine where a float is expected).
_TYPES: dict[str, tuple[type, ...]] = {
    "repo": (str,),
    "revision": (str,),
    "path": (str,),
    "unet": (str,),
    "autoencoder": (str,),
    "scheduler": (str,),
    "latent_scale": (float, int),
    "resolution": (int,),
    "channels": (int,),
    "license": (str,),
    "description": (str,),
}


def load_registry(path: Path | str | None = None) -> dict[str, RegistryEntry]:
    """All entries of the registry file at ``path`` (default: the one shipped with the package)."""
    path = Path(path) if path is not None else registry_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PriorError(f"cannot read the model registry {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise PriorError(f"the model registry {path} is not valid TOML: {err}") from err
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise PriorError(f"the model registry {path} needs [models.NAME] tables")
    return {name: _entry(name, table, path) for name, table in models.items()}


def get_entry(name: str, path: Path | str | None = None) -> RegistryEntry:
    """The registry entry called ``name``; a ``PriorError`` listing the known names if there is none."""
    entries = load_registry(path)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise PriorError(f"unknown model {name!r}: not in the model registry (known: {known})")
    return entries[name]


def _entry(name: str, table: object, registry: Path) -> RegistryEntry:
    where = f"model registry {registry}, entry {name!r}"
    if not isinstance(table, dict):
        raise PriorError(f"{where}: expected a table of fields")
    for key, value in table.items():
        if key not in _TYPES:
            raise PriorError(f"{where}: unknown field {key!r} (fields: {', '.join(_TYPES)})")
        if not isinstance(value, _TYPES[key]) or isinstance(value, bool):
            raise PriorError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    if ("repo" in table) == ("path" in table):
        raise PriorError(f"{where}: give exactly one of 'repo' (a Hub model) and 'path' (a bundled model)")
    if "path" in table and "revision" in table:
        raise PriorError(f"{where}: 'revision' applies only to Hub models")
    values = dict(table)
    if "path" in values:
        values["path"] = (registry.parent / values["path"]).resolve()
    if "latent_scale" in values:
        values["latent_scale"] = float(values["latent_scale"])
        if values["latent_scale"] <= 0:
            raise PriorError(f"{where}: 'latent_scale' must be positive")
    return RegistryEntry(name=name, **values)
