"""The random number generators a step may draw from, in this process: torch's (which Pyro draws
from), Python's ``random``, numpy's, and every CUDA device's once CUDA is in use. One state for
checkpoints (every rank's, restored on resume) and for evaluations, which draw from their own seed
and must leave the training's draws as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyro.util
import torch


def get_rng_state() -> dict[str, Any]:
    """Every generator's state: ``torch``, ``random``, ``numpy``, and ``cuda`` (one per device)
    where CUDA has been initialised (asking earlier would initialise it)."""
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back a state from :func:`get_rng_state` (the CUDA part where it has one)."""
    pyro.util.set_rng_state({k: state[k] for k in ("torch", "random", "numpy")})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """Run the block, then put every generator back as it was before it (also when it raises)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
