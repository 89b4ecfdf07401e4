"""Distributed engines behind one :class:`~pyrotrain.distributed.base.Backend` contract.

The loop talks to a backend only; :mod:`.base` holds the contract, launch detection and what a
launcher implies; one module per engine (:mod:`.single`, :mod:`.horovod`) implements it.
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
