"""Which rows of a parameter a step touched: what row-sparse optimizers and groups update.

A row is an index of a parameter's first dim. Pyro records the rows a subsampled plate gave a
parameter (``pyro.param(..., event_dim=...)`` inside ``pyro.plate(..., subsample=...)``) as
``param._pyro_subsample = {dim: indices}``, overwriting it at every access. :class:`TouchedRows`
collects those records over every access of a step (several minibatches, several particles), so
that the rows of a step are their union, and leaves the union on the parameter for the
optimizer. Where no record exists, :func:`nonzero_rows` finds the rows with a nonzero gradient
with one pass over the gradient; a sparse gradient names its rows itself.

Rows are a superset of the elements with a nonzero gradient, never a subset: every element
outside them has a zero gradient.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

#: Parameters with fewer elements than this are updated whole: indexing their rows costs more
#: than it saves.
MIN_ROW_SPARSE_NUMEL = 4096

_DENSE = None  # an access that used the whole parameter


def subsample_rows(p: Tensor) -> Tensor | None:
    """The rows of ``p`` Pyro recorded for its last subsampled access, if along the first dim."""
    record = getattr(p, "_pyro_subsample", None)
    if not record or p.dim() == 0:
        return None
    for dim, index in record.items():
        if dim % p.dim() == 0:
            return index
    return None


def nonzero_rows(grad: Tensor) -> Tensor:
    """The rows of ``grad`` with a nonzero (or NaN) element: one pass over the gradient."""
    flat = grad.reshape(grad.shape[0], -1)
    hit = flat.ne(0).any(1) if flat.shape[1] > 1 else flat[:, 0].ne(0)
    return hit.nonzero().squeeze(1)


def forget(params: Any) -> None:
    """Drop Pyro's row records of ``params`` (after their step: the next step records its own)."""
    for p in params:
        if "_pyro_subsample" in p.__dict__:
            del p._pyro_subsample


class TouchedRows:
    """The union of the rows each parameter was accessed with during one step.

    :meth:`record` takes each ``pyro.param`` message (after Pyro's plates processed it);
    :meth:`publish` then leaves ``param._pyro_subsample`` as the union of the step's records (or
    removes it where a parameter was also accessed whole this step).
    """

    def __init__(self) -> None:
        self._records: dict[Tensor, list[dict[int, Tensor]] | None] = {}

    def record(self, msg: dict) -> None:
        value = msg["value"]
        param = getattr(value, "_pyro_unconstrained_param", None)
        if param is None:
            unconstrained = getattr(value, "unconstrained", None)
            if unconstrained is not None:
                self._records[unconstrained()] = _DENSE
            return
        records = self._records.setdefault(param, [])
        if records is not _DENSE:
            records.append(dict(getattr(param, "_pyro_subsample", {})))

    def update(self, other: TouchedRows) -> None:
        for p, records in other._records.items():
            mine = self._records.setdefault(p, [])
            if records is _DENSE or mine is _DENSE:
                self._records[p] = _DENSE
            else:
                mine.extend(records)

    def publish(self) -> None:
        for p, records in self._records.items():
            if records is _DENSE or not records:
                forget([p])
            elif len(records) > 1:
                dims = set.intersection(*(set(r) for r in records))
                union = {d: torch.cat([r[d] for r in records]).unique() for d in dims}
                if union:
                    p._pyro_subsample = union  # type: ignore[attr-defined]
                else:
                    forget([p])


def coalesced(grad: Tensor) -> Tensor:
    """``grad`` (sparse) with its rows unique and sorted. Autograd drops the flag that says a
    gradient already is (a lookup of a plate's sorted ids gives one); one pass checks it."""
    if grad.is_coalesced():
        return grad
    index = grad._indices()
    if index.shape[0] == 1 and bool((index[0, 1:] > index[0, :-1]).all()):
        return grad._coalesced_(True)
    return grad.coalesce()


def densify(params: Any) -> None:
    """Make the sparse gradients of ``params`` dense (for optimizers that take dense ones)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()


class RowFinder:
    """Each row-tracked parameter's touched rows and their gradient, found once per gradient
    (the stack's checks, its clipping and the optimizer ask for the same rows).

    The rows are, first found first: those of a sparse gradient (``torch.sparse_coo``, one
    sparse dim: what a lookup with a sparse backward gives, as ``nn.Embedding(sparse=True)``),
    those Pyro recorded (``_pyro_subsample``, see :class:`TouchedRows`), those with a nonzero
    gradient.
    """

    def __init__(self, min_numel: int = MIN_ROW_SPARSE_NUMEL, records: bool = True):
        self.min_numel = min_numel
        #: whether Pyro's records cover the gradient: not where gradients were summed over
        #: ranks, each of which recorded its own rows (the rows are then found in the gradient)
        self.records = records
        # p -> (its gradient, the gradient's version, rows, gradient rows)
        self._cache: dict[Tensor, tuple[weakref.ref, int, Tensor, Tensor]] = {}

    def tracked(self, p: Tensor) -> bool:
        """Whether ``p`` is updated by rows (by its shape, so it stays so)."""
        return p.dim() >= 1 and p.numel() >= self.min_numel and not p.is_complex()

    def take(self, p: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(rows, gradient of those rows)`` of a tracked ``p`` with a gradient, else None.

        For a sparse gradient the gradient rows are its own values (changes to them are
        changes to ``p.grad``); for a dense one a copy: write changes back with :meth:`put`.
        """
        grad: Tensor | None = p.grad
        if grad is None or not self.tracked(p):
            return None
        hit = self._cache.get(p)
        version: int = grad._version  # type: ignore[union-attr]
        if hit is not None and hit[0]() is grad and hit[1] == version:
            return hit[2], hit[3]
        if grad.is_sparse and grad.sparse_dim() != 1:
            grad = grad.to_dense()
            p.grad = grad
        if grad.is_sparse:
            if not grad.is_coalesced():  # rows repeated (minibatches, particles): summed
                grad = coalesced(grad)
                p.grad = grad
            index, values = grad._indices()[0], grad._values()
        else:
            recorded = subsample_rows(p) if self.records else None
            index = (recorded if recorded is not None else nonzero_rows(grad)).to(grad.device)
            values = grad.index_select(0, index)
        self._cache[p] = (weakref.ref(grad), grad._version, index, values)
        return index, values

    def put(self, p: Tensor, index: Tensor, values: Tensor) -> None:
        """Write changed gradient rows (from :meth:`take`) back into ``p.grad``."""
        assert p.grad is not None
        if not p.grad.is_sparse:
            p.grad.index_copy_(0, index, values)
            hit = self._cache.get(p)
            if hit is not None and hit[3] is values:  # the cached rows are these
                self._cache[p] = (hit[0], p.grad._version, index, values)

    def grads(self, params: Any) -> list[Tensor]:
        """The gradients of ``params``, the touched rows only of tracked ones (and the values of
        sparse ones: the same norms, the same non-finite elements)."""
        out = []
        for p in params:
            if p.grad is None or not p.grad.numel():
                continue
            taken = self.take(p)
            if taken is not None:
                out.append(taken[1])
            elif p.grad.is_sparse:
                out.append(coalesced(p.grad)._values())
            else:
                out.append(p.grad)
        return out

    def prepare(self, params: Any) -> None:
        """Before the step: parameters updated whole get dense gradients."""
        densify(p for p in params if not self.tracked(p))

    def done(self, params: Any) -> None:
        """The step is over: forget the rows of ``params``."""
        for p in params:
            self._cache.pop(p, None)
        forget(params)


class RowSparse:
    """Mixin for a :class:`~pyrotrain.optim._buckets.MultiTensorOptimizer` that updates the
    touched rows of its large parameters (those :meth:`RowFinder.tracked` accepts) and the
    others whole, with its parent class's update.

    Row-tracked parameters take the per-parameter path (``_bucket_key`` None), where
    :meth:`_step_rows` updates the rows ``self.rows.take(p)`` gives; the parent packs the rest
    into buckets (their sparse gradients, if any, are made dense first).
    """

    rows: RowFinder
    state: Any

    def _init_rows(self, min_row_numel: int) -> None:
        self.rows = RowFinder(min_row_numel)

    def _bucket_key(self, p: Tensor, attr: Any) -> tuple | None:
        if self.rows.tracked(p):
            return None
        return super()._bucket_key(p, attr)  # type: ignore[misc]

    def _step_group(self, index: int, group: dict) -> None:
        self.rows.prepare(group["params"])
        super()._step_group(index, group)  # type: ignore[misc]

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        taken = self.rows.take(p)
        if taken is None:
            super()._step_fallback(group, p)  # type: ignore[misc]
        else:
            self._step_rows(group, p, *taken)

    def _step_rows(self, group: dict, p: Tensor, index: Tensor, grad: Tensor) -> None:
        """Update rows ``index`` of ``p``, whose gradient is ``grad``."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        state: dict = super().__getstate__()  # type: ignore[misc,assignment]
        state.pop("rows", None)  # its cache holds weak references
        state["_row_settings"] = (self.rows.min_numel, self.rows.records)
        return state

    def __setstate__(self, state: dict) -> None:
        # torch's load_state_dict calls this too, with the state only: keep the settings then
        current = self.__dict__.get("rows")
        settings = (current.min_numel, current.records) if current else (MIN_ROW_SPARSE_NUMEL, True)
        min_numel, records = state.pop("_row_settings", settings)
        super().__setstate__(state)  # type: ignore[misc]
        self.rows = RowFinder(min_numel, records)
