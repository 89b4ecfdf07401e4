"""Optimizer stacks, schedulers and pyrotrain's optimizers."""

from .adagrad_rmsprop import AdagradRMSProp
from .clipped_adam import ClippedAdam
from .dct_adam import DCTAdam
from .schedulers import SchedulerSpec, build_scheduler
from .stack import DCTMark, GroupSpec, OptimizerStack, parse_groups

__all__ = [
    "AdagradRMSProp",
    "ClippedAdam",
    "DCTAdam",
    "DCTMark",
    "GroupSpec",
    "OptimizerStack",
    "SchedulerSpec",
    "build_scheduler",
    "parse_groups",
]
