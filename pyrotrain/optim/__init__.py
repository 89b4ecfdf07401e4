"""Optimizer stacks, schedulers and pyrotrain's optimizers."""

from .adagrad_rmsprop import AdagradRMSProp
from .adam import Adam, AdamW
from .clipped_adam import ClippedAdam
from .dct_adam import DCTAdam
from .schedulers import SchedulerSpec, build_scheduler
from .spec import DCTMark, GroupSpec, parse_groups
from .stack import OptimizerStack

__all__ = [
    "AdagradRMSProp",
    "Adam",
    "AdamW",
    "ClippedAdam",
    "DCTAdam",
    "DCTMark",
    "GroupSpec",
    "OptimizerStack",
    "SchedulerSpec",
    "build_scheduler",
    "parse_groups",
]
