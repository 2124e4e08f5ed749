"""Latent diffusion priors: the interface solvers use, diffusers-format models, and loading
them by registry name, folder or Hugging Face Hub repository."""

from .base import LatentPrior, PriorInfo
from .diffusers_prior import DiffusersPrior
from .errors import PriorError
from .loading import fetch_prior, load_prior, prior_cache_path
from .registry import RegistryEntry, get_entry, load_registry

__all__ = [
    "DiffusersPrior",
    "LatentPrior",
    "PriorError",
    "PriorInfo",
    "RegistryEntry",
    "fetch_prior",
    "get_entry",
    "load_prior",
    "load_registry",
    "prior_cache_path",
]
