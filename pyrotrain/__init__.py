"""pyrotrain: a training driver for Pyro with YAML-configured optimizer stacks."""

from ._version import __version__ as __version__
from .api import compose, train
from .errors import PyrotrainError
from .registry import (
    register_dataset,
    register_elbo,
    register_guide,
    register_model,
    register_optimizer,
    register_scheduler,
)

__all__ = [
    "PyrotrainError",
    "compose",
    "register_dataset",
    "register_elbo",
    "register_guide",
    "register_model",
    "register_optimizer",
    "register_scheduler",
    "train",
]
