"""Data shipped inside the package: the model registry (``registry.toml``) and the bundled
priors in the diffusers layout (``ct-ellipses/``, ``dead-leaves/``).

Found through ``importlib.resources``, so a wheel, an sdist, an editable install and a
clone all read the same files. Training logs of the bundled priors stay in the source
repository's ``weights/`` folder and are not installed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def bundled_folder() -> Path:
    """The folder holding ``registry.toml`` and the bundled priors."""
    # Installed packages are plain folders on disk (pip unpacks wheels), so the resource
    # root is a real path that the loaders and huggingface_hub-free code can open.
    return Path(str(files(__name__)))


def registry_file() -> Path:
    """The registry that ships with the package."""
    return bundled_folder() / "registry.toml"
