"""The torch.distributed backend: N processes started by ``torchrun``, one optimizer step in
lockstep, over Gloo (CPU tensors) or NCCL (``trainer.device=cuda``).

The semantics are the Horovod backend's (see :mod:`.horovod`): every rank builds the same run from
the same config and seed, trains on its own shard of the rows, rank 0's parameters are broadcast
after the first backward pass, and after each backward pass one allreduce per dtype
(``allreduce: fused``, the default) carries the gradients in the order of their Pyro names, the
step's loss, the stop flag, one "has a gradient" flag per parameter and a fingerprint of the
parameter layout. ``allreduce: per_tensor`` starts one asynchronous allreduce per parameter (what
``DistributedDataParallel`` without buckets, ``hvd.DistributedOptimizer`` and
``pyro.optim.HorovodOptimizer`` do); ``scripts/bench_scaling.py`` measures both.

Every collective is torch.distributed's own (Gloo for CPU tensors, NCCL for CUDA tensors).

The process group is built on the rendezvous store that torchrun's agent hosts (``env://``:
``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), so the job's start time can be agreed
through that store before Hydra runs and before the settings (backend, timeout) are known.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist

from ..errors import PyrotrainError
from ..schema import setting
from .base import (
    Layout,
    PeerFailure,
    Reducer,
    check_predivide,
    layout_of,
    lr_factor,
    lr_scaling_setting,
    param_digest,
    predivide_setting,
    tag_rank_output,
)

NAME = "torch"
# torchrun (and any env:// launch: torch.distributed's own convention).
LAUNCH_VARS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"),)
# How long a rank waits for rank 0's start time before Hydra runs.
START_TIMEOUT = timedelta(seconds=300)


@dataclass(frozen=True)
class Settings:
    """The keys of ``conf/distributed/torch.yaml`` (``auto.yaml`` holds those it shares with
    Horovod)."""

    MOVED: ClassVar[dict[str, str]] = {
        "backward_passes_per_step": "trainer.accumulate_grad_batches"
    }

    name: str = setting("auto (torch.distributed under torchrun) or torch", default="torch")
    backend: Literal["auto", "gloo", "nccl"] = setting(
        "torch.distributed's backend: auto (gloo for CPU tensors, plus nccl for CUDA tensors "
        "when CUDA is available), gloo, or nccl (trainer.device=cuda only)",
        default="auto",
    )
    timeout: float = setting(
        "seconds a collective waits for the other ranks before the job fails (a rank that dies "
        "ends the job sooner: its connections close)",
        default=1800.0,
        minimum=0,
        exclusive=True,
    )
    compression: Literal["none", "fp16"] = setting(
        "how gradients travel: as they are, or rounded to float16 (half the bytes; the loss "
        "and flags travel apart, in float64)",
        default="none",
    )
    op: Literal["average", "sum"] = setting(
        "how the ranks' gradients combine (torch.distributed has no Adasum)", default="average"
    )
    gradient_predivide_factor: float = predivide_setting()
    lr_scaling: Literal["none", "linear", "sqrt"] = lr_scaling_setting()
    allreduce: Literal["fused", "per_tensor"] = setting(
        "fused: one flat buffer per dtype per step, the loss and stop flag included; "
        "per_tensor: one asynchronous allreduce per parameter",
        default="fused",
    )

    def check(self, key: str) -> None:
        check_predivide(self, key)


def create(settings: Settings) -> TorchBackend:
    return TorchBackend(settings)


# -- the rendezvous store, the start time and the process group -------------------------------

_store: Any = None  # torchrun's rendezvous store (a client), once per process
_group_settings: tuple[str, float] | None = None  # (backend, timeout) of the live process group
_groups_made = 0


def _rendezvous_store() -> Any:
    """The store every rank of this launch reaches (torchrun's agent hosts it; without the agent,
    rank 0 does), connected once per process."""
    global _store
    if _store is None:
        try:
            _store, _, _ = next(dist.rendezvous("env://", timeout=START_TIMEOUT))
        except (ValueError, RuntimeError) as e:
            raise PyrotrainError(
                f"this process was started as rank {os.environ.get('RANK')} of "
                f"{os.environ.get('WORLD_SIZE')} (RANK and WORLD_SIZE are set), but the "
                f"torch.distributed rendezvous failed ({e})",
                key="distributed",
                hint="Start the job with torchrun, which sets MASTER_ADDR and MASTER_PORT too",
            ) from e
    return _store


def share_start_time(start: float) -> float:
    """Rank 0's start time on every rank, through the rendezvous store (every rank calls it)."""
    store = _rendezvous_store()
    key = f"pyrotrain/start_time/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if int(os.environ["RANK"]) == 0:
        store.set(key, repr(start))
    return float(store.get(key).decode())


def _backend_name(requested: str) -> str:
    if requested == "nccl" and not torch.cuda.is_available():
        raise PyrotrainError(
            "NCCL reduces CUDA tensors, and this process sees no CUDA device",
            key="distributed.backend",
            value=requested,
            choices=["auto", "gloo"],
            hint="Use backend=auto (gloo on CPU) or run with trainer.device=cuda on GPU hosts",
        )
    if requested == "auto":
        return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    return requested


def process_group(backend: str, timeout: float) -> None:
    """Make the default process group (or keep the one this process already has, when a sweep's
    next job asks for the same backend and timeout)."""
    global _group_settings, _groups_made
    if dist.is_initialized():
        if _group_settings == (backend, timeout):
            return
        close_group()
    if _groups_made == 0:
        atexit.register(close_group)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _groups_made += 1
    # torchrun's store outlives a restart: a fresh prefix per attempt keeps the dead ranks'
    # addresses from being read back
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"pyrotrain/{attempt}/group{_groups_made}", _rendezvous_store())
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout)
    )
    _group_settings = (backend, timeout)


def close_group() -> None:
    """Destroy the process group (before a new one, and at exit: left to the interpreter's
    teardown, Gloo's threads once aborted a rank that had finished, with "terminate called
    without an active exception")."""
    global _group_settings
    if dist.is_initialized():
        dist.destroy_process_group()
    _group_settings = None


@contextlib.contextmanager
def _collective(rank: int) -> Iterator[None]:
    """Turn a collective that failed because a peer went away into a one-line PeerFailure."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        if isinstance(e, PeerFailure):
            raise
        raise PeerFailure(
            f"rank {rank} stopped: another rank failed or left, so a collective failed "
            f"(the failing rank's message is above; here: {str(e).splitlines()[0][:120]})"
        ) from e


class TorchBackend:
    """torch.distributed over Gloo or NCCL; one instance per job, the process group made once
    per process.

    :param settings: the validated ``distributed`` section.
    """

    name = NAME

    def __init__(self, settings: Settings | None = None):
        self.settings = s = settings or Settings()
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            process_group(_backend_name(s.backend), s.timeout)
            self.rank, self.size = dist.get_rank(), dist.get_world_size()
        else:  # distributed=torch without a launcher: one process, no group
            _backend_name(s.backend)
            self.rank, self.size = 0, 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.size))
        self.is_main = self.rank == 0
        self.lr_scale = lr_factor(s.lr_scaling, self.size)
        self._pre = 1.0 / s.gradient_predivide_factor
        # after the sum: back from the predivision, and the mean for op=average (a division, as
        # one process's mean over N*B rows divides)
        self._post_div = self.size / s.gradient_predivide_factor if s.op == "average" else 1.0
        self._packed = s.allreduce == "fused" and s.compression == "none"
        self._reducer = Reducer(self.rank, self.size, self._travel)
        self._plan_of: Layout | None = None
        self._plan: list[list[int]] = []  # that layout's buckets: positions, by dtype and device
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        if "OMP_NUM_THREADS" not in os.environ:
            # N ranks on one host share its cores (torchrun sets OMP_NUM_THREADS=1 itself when
            # it starts more than one; this is for other env:// launches).
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, self.local_size)))
        if not self.is_main:
            tag_rank_output(self.rank)

    def _all_reduce(self, tensor: torch.Tensor) -> Any:
        """Start the sum of ``tensor`` over the ranks, in place; wait() on what it returns."""
        return dist.all_reduce(tensor, async_op=True)

    # -- the backend interface ------------------------------------------------------------------

    @torch.no_grad()
    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Overwrite every rank's parameters with rank 0's: one broadcast per dtype and device,
        in name order."""
        if self.size == 1:
            return
        layout = layout_of(params)
        with _collective(self.rank):
            for idx in _buckets(layout.params, range(len(layout.params))):
                flat = torch.cat([layout.params[i].reshape(-1) for i in idx])
                dist.broadcast(flat, src=0)
                for i, part in zip(
                    idx, flat.split([layout.params[i].numel() for i in idx]), strict=True
                ):
                    layout.params[i].copy_(part.view_as(layout.params[i]))

    def reduce(
        self, params: Iterable[torch.Tensor], loss: float = 0.0, stop: int = 0
    ) -> tuple[float, int]:
        """See :meth:`~pyrotrain.distributed.base.Backend.reduce` (:class:`~.base.Reducer`)."""
        return self._reducer(params, loss, stop)

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        with _collective(self.rank):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        with _collective(self.rank):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            with _collective(self.rank):
                dist.barrier()

    def params_in_sync(self) -> bool:
        """Whether every rank holds bitwise the same Pyro parameters (one small allgather)."""
        return len(set(self.gather_object(param_digest()))) == 1

    # -- the ways to hand gradients to torch.distributed -----------------------------------------

    def _travel(
        self, layout: Layout, grads: list[torch.Tensor], meta: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The :data:`~.base.Travel` of this engine: ``allreduce`` and ``compression`` pick the
        way; every one sums (torch.distributed's op) and divides here."""
        if layout is not self._plan_of:
            self._plan_of, self._plan = layout, _buckets(layout.params, range(len(layout.params)))
        with _collective(self.rank):
            if self._packed:
                reduced, total = self._fused_packed(grads, meta)
            else:
                meta_work = self._all_reduce(meta)
                if self.settings.allreduce == "fused":
                    reduced = self._fused(grads)
                else:
                    reduced = self._per_tensor(grads)
                meta_work.wait()
                total = meta
        return reduced, total / self.size

    def _fused_packed(
        self, grads: list[torch.Tensor], meta: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One allreduce (sum) per dtype and device (the buckets of this layout), the loss and
        flags riding at the end of the first buffer; the division for the mean is done here, on
        the gradients only. Returns the gradients and the summed ``meta``."""
        started = []
        for j, idx in enumerate(self._plan):
            parts = [grads[i].reshape(-1) for i in idx]
            n_grad = sum(t.numel() for t in parts)
            if j == 0:
                parts.append(meta.to(dtype=parts[0].dtype, device=parts[0].device))
            flat = torch.cat(parts)
            if self._pre != 1.0:
                flat[:n_grad].mul_(self._pre)
            started.append((idx, n_grad, flat, self._all_reduce(flat)))
        out: list[Any] = [None] * len(grads)
        total = meta
        for j, (idx, n_grad, flat, work) in enumerate(started):
            work.wait()
            if self._post_div != 1.0:
                flat[:n_grad].div_(self._post_div)
            sizes = [grads[i].numel() for i in idx]
            for i, g in zip(idx, flat[:n_grad].split(sizes), strict=True):
                out[i] = g
            if j == 0:
                total = flat[n_grad:].to(torch.float64)
        return out, total

    def _fused(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """One allreduce per dtype and device, float16 on the wire with compression=fp16."""
        fp16 = self.settings.compression == "fp16"
        started = []
        for idx in _buckets(grads, range(len(grads))):
            flat = torch.cat([grads[i].reshape(-1) for i in idx])
            wire = flat.mul(self._pre) if self._pre != 1.0 else flat
            wire = wire.to(torch.float16) if fp16 else wire
            started.append((idx, flat.dtype, wire, self._all_reduce(wire)))
        out: list[Any] = [None] * len(grads)
        for idx, dtype, wire, work in started:
            work.wait()
            flat = wire.to(dtype).div_(self._post_div)
            for i, g in zip(idx, flat.split([grads[i].numel() for i in idx]), strict=True):
                out[i] = g
        return out

    def _per_tensor(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """One asynchronous allreduce per parameter, all started before the first is awaited."""
        fp16 = self.settings.compression == "fp16"
        started = []
        for g in grads:
            wire = g.mul(self._pre) if self._pre != 1.0 else g.clone()
            wire = wire.to(torch.float16) if fp16 else wire
            started.append((g.dtype, wire, self._all_reduce(wire)))
        out = []
        for dtype, wire, work in started:
            work.wait()
            out.append(wire.to(dtype).div_(self._post_div))
        return out


def _buckets(tensors: list[torch.Tensor], positions: Iterable[int]) -> list[list[int]]:
    """``positions`` grouped by their tensors' dtype and device (one flat buffer each), in a
    fixed order every rank agrees on."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i in positions:
        t = tensors[i]
        groups.setdefault((str(t.dtype), str(t.device)), []).append(i)
    return [groups[k] for k in sorted(groups)]
