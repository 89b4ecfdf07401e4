"""pyrotrain: a training driver for Pyro with YAML-configured optimizer stacks."""

__version__ = "0.1.0"

from .api import compose, train  # noqa: E402
from .errors import PyrotrainError  # noqa: E402
from .registry import (  # noqa: E402
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
