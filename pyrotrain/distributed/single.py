"""The trivial backend: one process, nothing to agree on."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SingleProcess:
    rank = 0
    local_rank = 0
    size = 1
    is_main = True
    name = "none"

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        pass

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        pass

    def average(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        pass
