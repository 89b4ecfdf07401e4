"""Backends: how many processes share a job, and how they agree on gradients and parameters.

A backend is a small object (``rank``, ``size``, ``is_main``, ``broadcast_parameters``,
``average_gradients``, ``average``, ``barrier``) so the training loop has no ``if horovod:``.
"""

from __future__ import annotations

from typing import Any

from ..config import named_section
from ..errors import PyrotrainError
from .single import SingleProcess

BACKENDS = ("auto", "none")


def build_backend(node: Any) -> SingleProcess:
    name, _ = named_section(node, "distributed")
    if name not in BACKENDS:
        raise PyrotrainError(
            "unknown distributed backend", key="distributed.name", value=name, choices=BACKENDS
        )
    return SingleProcess()


__all__ = ["SingleProcess", "build_backend"]
