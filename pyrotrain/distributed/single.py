"""The trivial engine: one process, nothing to agree on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..schema import setting

NAME = "none"
LAUNCH_VARS: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Settings:
    """``distributed=none`` takes no settings."""

    name: str = setting("none: always one process", default=NAME)


def create(settings: Settings) -> SingleProcess:
    return SingleProcess()


def share_start_time(start: float) -> float:
    return start


class SingleProcess:
    """The :class:`~pyrotrain.distributed.base.Backend` of one process: every collective is a
    no-op."""

    name = NAME
    rank = 0
    local_rank = 0
    size = 1
    is_main = True
    lr_scale = 1.0

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        pass

    def reduce(
        self, params: Iterable[torch.Tensor], loss: float = 0.0, stop: int = 0
    ) -> tuple[float, int]:
        """Leave the gradients as they are; return ``loss`` and ``stop`` (one process's)."""
        return loss, stop

    def gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def params_in_sync(self) -> bool:
        return True
