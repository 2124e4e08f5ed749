"""resample: solve imaging inverse problems with latent diffusion priors (ReSample).

Importing the package is cheap (no torch): the command line's ``--version`` and ``--help``
rely on it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    # One source for the version: the installed distribution's metadata (pyproject.toml).
    __version__ = version("resample-cli")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
