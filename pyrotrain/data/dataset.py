"""Datasets as named tensors, and the seeded minibatch order.

A dataset is a dict of tensors sharing their first dimension (the rows), split into train and
eval parts. A built-in model receives one minibatch of those tensors by name, plus ``index`` (the
rows' positions in the training set) and ``size`` (the number of training rows) for plate
scaling. A user's own data (``data=python``) also says how it is passed (:class:`CallSpec`):
which values go by position and which by keyword, as the user's own loop passes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PyrotrainError


@dataclass(frozen=True)
class CallSpec:
    """How a user's data is passed to the model and guide: the values named in ``positional`` by
    position, then those in ``keyword`` by keyword. A name is a row tensor of ``Dataset.train``
    (sliced to the minibatch, when there is one) or an entry of ``fixed`` (passed as it is: a
    number, or a tensor whose first dimension is not the rows). ``form`` is how the user gave the
    data (``tensor``, ``tuple``, ``list``, ``dict``), to hand it back whole to a constructor."""

    positional: tuple[str, ...]
    keyword: tuple[str, ...]
    fixed: dict[str, Any]
    form: str

    def with_positional(self, names: tuple[str, ...]) -> CallSpec:
        """The same call with the keyword values ``names`` (in this order) passed by position."""
        rest = tuple(k for k in self.keyword if k not in names)
        return CallSpec(self.positional + names, rest, self.fixed, self.form)


@dataclass
class Dataset:
    train: dict[str, torch.Tensor]
    eval: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    call: CallSpec | None = None  # a user's own data; None: a built-in set's named tensors

    def __post_init__(self) -> None:
        sizes = {k: v.shape[0] for k, v in self.train.items()}
        if len(set(sizes.values())) > 1:
            raise PyrotrainError(f"the training tensors have different numbers of rows: {sizes}")

    @property
    def size(self) -> int:
        if not self.train:  # a user's data without rows (numbers only) is one row
            return 1
        return next(iter(self.train.values())).shape[0]

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        def cast(t: Any) -> Any:
            if not torch.is_tensor(t):
                return t
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        call = self.call
        if call is not None:
            fixed = {k: cast(v) for k, v in call.fixed.items()}
            call = CallSpec(call.positional, call.keyword, fixed, call.form)
        return Dataset(
            {k: cast(v) for k, v in self.train.items()},
            {k: cast(v) for k, v in self.eval.items()},
            self.info,
            call,
        )

    def user_object(self) -> Any:
        """A user's data whole, in the form the user gave it (for a constructor's ``data``)."""
        if self.call is None:
            return self
        value = {**self.call.fixed, **self.train}
        names = self.call.positional + self.call.keyword
        if self.call.form == "tensor":
            return value[names[0]]
        if self.call.form in ("tuple", "list"):
            items = [value[n] for n in names]
            return tuple(items) if self.call.form == "tuple" else items
        return {n: value[n] for n in names}


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
