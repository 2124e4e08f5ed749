"""Forward models y = A(x) on images in [0, 1], and measurement noise."""

from .base import LinearOperator, Operator, conjugate_gradient
from .blur import Blur, GaussianBlur
from .ct import FBP_FILTERS, ParallelBeamCT
from .inpainting import Inpainting, box_mask, random_mask
from .noise import GaussianNoise
from .nonlinear import ModuleOperator, NonlinearBlur, OperatorLoadError, load_operator
from .superres import BicubicDownsample

__all__ = [
    "FBP_FILTERS",
    "BicubicDownsample",
    "Blur",
    "GaussianBlur",
    "GaussianNoise",
    "Inpainting",
    "LinearOperator",
    "ModuleOperator",
    "NonlinearBlur",
    "Operator",
    "OperatorLoadError",
    "ParallelBeamCT",
    "box_mask",
    "conjugate_gradient",
    "load_operator",
    "random_mask",
]
