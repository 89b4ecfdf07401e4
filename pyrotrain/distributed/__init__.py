"""Distributed engines behind one :class:`~pyrotrain.distributed.base.Backend` contract.

The loop talks to a backend only; :mod:`.base` holds the contract, the one reduce, launch
detection and what a launcher implies; one module per engine implements it: :mod:`.single` (one
process), :mod:`.horovod` (under ``horovodrun`` or ``mpirun``) and :mod:`.torch`
(torch.distributed under ``torchrun``).
"""

from __future__ import annotations

from .base import (
    Backend,
    DistributedConfig,
    Launch,
    PeerFailure,
    create_backend,
    failure_message,
    is_main_process,
    launch_env,
    parse_distributed,
    process_rank,
    start_process,
)

__all__ = [
    "Backend",
    "DistributedConfig",
    "Launch",
    "PeerFailure",
    "create_backend",
    "failure_message",
    "is_main_process",
    "launch_env",
    "parse_distributed",
    "process_rank",
    "start_process",
]
