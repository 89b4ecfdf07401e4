"""Optimizer stacks, schedulers and pyrotrain's optimizers."""

from .schedulers import SchedulerSpec, build_scheduler
from .stack import DCTMark, GroupSpec, OptimizerStack, parse_groups

__all__ = [
    "DCTMark",
    "GroupSpec",
    "OptimizerStack",
    "SchedulerSpec",
    "build_scheduler",
    "parse_groups",
]
