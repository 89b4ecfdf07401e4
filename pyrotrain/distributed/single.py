"""The trivial backend: one process, nothing to agree on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class SingleProcess:
    rank = 0
    local_rank = 0
    size = 1
    is_main = True
    name = "none"
    backward_passes_per_step = 1
    lr_scale = 1.0

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        pass

    def average_gradients(
        self, params: Iterable[torch.Tensor], loss: float = 0.0, stop: int = 0
    ) -> tuple[float, int]:
        """Leave the gradients as they are; return ``loss`` and ``stop`` (one process's)."""
        return loss, stop

    def gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def average(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        pass

    def params_in_sync(self) -> bool:
        return True
