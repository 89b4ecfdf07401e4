"""Datasets as named tensors, and the seeded minibatch order.

A dataset is a dict of tensors sharing their first dimension (the rows), split into train and
eval parts. The model receives one minibatch of those tensors by name, plus ``index`` (the rows'
positions in the training set) and ``size`` (the number of training rows) for plate scaling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..errors import PyrotrainError


@dataclass
class Dataset:
    train: dict[str, torch.Tensor]
    eval: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = {k: v.shape[0] for k, v in self.train.items()}
        if len(set(sizes.values())) > 1:
            raise PyrotrainError(f"the training tensors have different numbers of rows: {sizes}")

    @property
    def size(self) -> int:
        return next(iter(self.train.values())).shape[0]

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        return Dataset(
            {k: cast(v) for k, v in self.train.items()},
            {k: cast(v) for k, v in self.eval.items()},
            self.info,
        )


def split(tensors: dict[str, torch.Tensor], eval_fraction: float, seed: int, info: dict) -> Dataset:
    """Shuffle rows with ``seed`` and hold out ``eval_fraction`` of them for evaluation."""
    if not 0 <= eval_fraction < 1:
        raise PyrotrainError(
            "the evaluation fraction must be in [0, 1)",
            key="data.eval_fraction",
            value=eval_fraction,
        )
    n = next(iter(tensors.values())).shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_eval = int(round(n * eval_fraction))
    eval_idx, train_idx = perm[:n_eval], perm[n_eval:]
    return Dataset(
        {k: v[train_idx] for k, v in tensors.items()},
        {k: v[eval_idx] for k, v in tensors.items()} if n_eval else {},
        info,
    )


class BatchOrder:
    """Deterministic minibatch indices: a fresh permutation of the rows each epoch.

    Epoch ``e`` uses a generator seeded with ``(seed, e)`` alone, so the order of any epoch can be
    rebuilt without replaying the ones before it (what resume and sharding need). With
    ``batch_size=None`` every step sees all rows in their original order.
    """

    def __init__(
        self, n_rows: int, batch_size: int | None, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    @property
    def steps_per_epoch(self) -> int:
        if self.batch_size is None:
            return 1
        return max(1, math.ceil(self.rows_per_rank / self.batch_size))

    @property
    def rows_per_rank(self) -> int:
        return self.n_rows // self.world_size

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        if self.batch_size is None and self.world_size == 1:
            return [torch.arange(self.n_rows)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_rows, generator=g)
        mine = perm[self.rank :: self.world_size][: self.rows_per_rank]
        if self.batch_size is None:
            return [mine]
        return list(mine.split(self.batch_size))

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return self.iter_from(0)

    def resharded(self, consumed: int, world_size: int) -> int:
        """Where this order goes on from a run that took ``consumed`` minibatches of the order of
        ``world_size`` ranks: the same epoch (so the same permutation), at the same fraction of
        it, rounded down. The epoch's remaining rows are dealt to this run's ranks, so around the
        switch some rows of that epoch are seen twice or not at all."""
        if world_size == self.world_size:
            return consumed
        before = BatchOrder(self.n_rows, self.batch_size, self.seed, 0, world_size)
        epoch, done = divmod(consumed, before.steps_per_epoch)
        return epoch * self.steps_per_epoch + done * self.steps_per_epoch // before.steps_per_epoch

    def iter_from(self, consumed: int) -> Iterator[tuple[int, torch.Tensor]]:
        """The order after its first ``consumed`` minibatches (where a resumed run goes on)."""
        epoch, skip = divmod(consumed, self.steps_per_epoch)
        while True:
            for idx in self.epoch(epoch)[skip:]:
                yield epoch, idx
            epoch, skip = epoch + 1, 0
