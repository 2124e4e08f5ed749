"""resample: solve imaging inverse problems with latent diffusion priors (ReSample)."""

__version__ = "0.1.0"
