"""Training and fine-tuning latent diffusion priors (``resample train-prior``): synthetic and
folder data, the two-stage trainer, checkpoints and the diffusers-layout output."""

from .config import TrainConfig, TrainingError, TrainProgress, learning_rate
from .data import (
    DeadLeaves,
    FolderSource,
    ImageSource,
    SyntheticSource,
    dead_leaves,
    dead_leaves_with_disks,
    ellipse_phantoms,
    power_law_cdf,
    sample_power_law,
)
from .results import TrainResult
from .train import make_source, train_prior

__all__ = [
    "DeadLeaves",
    "FolderSource",
    "ImageSource",
    "SyntheticSource",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingError",
    "dead_leaves",
    "dead_leaves_with_disks",
    "ellipse_phantoms",
    "learning_rate",
    "make_source",
    "power_law_cdf",
    "sample_power_law",
    "train_prior",
]
