"""The Horovod backend: N processes started by ``horovodrun``, one optimizer step in lockstep.

Every rank builds the same run from the same config and seed, trains on its own shard of the rows
(:class:`~pyrotrain.data.BatchOrder`), and after each backward pass the ranks agree on one gradient
per parameter, so every rank takes the same optimizer step and the parameters never drift apart.

Gradients travel as ONE buffer per dtype per step (``allreduce: fused``, the default): the
gradients of the step's parameters, in the order of their Pyro names, are copied into a flat buffer,
reduced with a single Horovod allreduce and handed back to the parameters as views of the result.
The same buffer carries the step's loss, one "has a gradient" flag per parameter and a fingerprint
of the parameter layout, so the reported loss (which plateau schedulers see) is the ranks' mean
without a collective of its own, a parameter whose gradient is None on some ranks gets the mean of
the others' with zeros from those (as in ``hvd.DistributedOptimizer``) while one with no gradient
anywhere stays None, and ranks whose traces hold different parameters fail loudly instead of
mixing up gradients. With fp16 compression or Adasum those values travel in a second, float64
allreduce submitted in the same Horovod cycle. ``allreduce: grouped`` (``hvd.grouped_allreduce``)
and ``allreduce: per_tensor`` (one allreduce per parameter, as ``hvd.DistributedOptimizer`` and
``pyro.optim.HorovodOptimizer`` do) hand the tensors to Horovod's own fusion buffer instead;
``scripts/bench_scaling.py`` measures the three.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

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

NAME = "horovod"
# horovodrun with Gloo, and mpirun (Open MPI; MPICH and Intel MPI) when horovodrun uses MPI or is
# bypassed.
LAUNCH_VARS = (
    ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)
POLL_INTERVAL_S = float(os.environ.get("PYROTRAIN_HOROVOD_POLL_US", "50")) * 1e-6


@dataclass(frozen=True)
class Settings:
    """The keys of ``conf/distributed/horovod.yaml`` (and ``auto.yaml``)."""

    MOVED: ClassVar[dict[str, str]] = {
        "backward_passes_per_step": "trainer.accumulate_grad_batches"
    }

    name: str = setting("auto (Horovod under horovodrun) or horovod", default="horovod")
    compression: Literal["none", "fp16"] = setting(
        "how gradients travel: as they are, or rounded to float16 (half the bytes)",
        default="none",
    )
    op: Literal["average", "sum", "adasum"] = setting(
        "how the ranks' gradients combine; adasum needs Horovod built with MPI", default="average"
    )
    gradient_predivide_factor: float = predivide_setting()
    lr_scaling: Literal["none", "linear", "sqrt"] = lr_scaling_setting()
    allreduce: Literal["fused", "grouped", "per_tensor"] = setting(
        "fused: one flat buffer per dtype per step, the loss and stop flag included; grouped: "
        "hvd.grouped_allreduce; per_tensor: one allreduce per parameter, as "
        "hvd.DistributedOptimizer and pyro.optim.HorovodOptimizer do",
        default="fused",
    )

    def check(self, key: str) -> None:
        check_predivide(self, key)


def create(settings: Settings) -> HorovodBackend:
    return HorovodBackend(settings)


def import_horovod(reason: str) -> Any:
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise PyrotrainError(
            f"{reason}, but horovod.torch cannot be imported ({e})",
            key="distributed",
            hint="Install it with `make install` (scripts/install_horovod.sh), or run with "
            "distributed=none outside horovodrun",
        ) from e
    return hvd


def initialise(reason: str = "Horovod was requested") -> Any:
    """Import and initialise Horovod once per process; return ``horovod.torch``."""
    hvd = import_horovod(reason)
    if not hvd.is_initialized():
        hvd.init()
    return hvd


def share_start_time(start: float) -> float:
    """Rank 0's start time on every rank (collective: every rank must call it)."""
    hvd = initialise("this process was started by horovodrun")
    with _collective(hvd.rank()):
        return float(hvd.broadcast_object(start, root_rank=0, name="pyrotrain.start_time"))


@contextlib.contextmanager
def _collective(rank: int) -> Iterator[None]:
    """Turn Horovod's "has been shut down" into a one-line PeerFailure."""
    try:
        yield
    except Exception as e:  # HorovodInternalError, or RuntimeError raised from the C++ side
        if "shut down" in str(e) or "shutdown" in str(e):
            raise PeerFailure(
                f"rank {rank} stopped: another rank failed, so Horovod shut down "
                "(the failing rank's message is above)"
            ) from e
        raise


class HorovodBackend:
    """Horovod over Gloo, MPI or NCCL; one instance per job, Horovod initialised once per process.

    :param settings: the validated ``distributed`` section.
    """

    name = "horovod"

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        hvd = self.hvd = initialise()
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self.is_main = self.rank == 0
        s = self.settings
        if s.op == "adasum" and not hvd.mpi_enabled():
            raise PyrotrainError(
                "Horovod's Adasum needs Horovod built with MPI; this one uses Gloo",
                key="distributed.op",
                value=s.op,
                choices=["average", "sum"],
                hint="Rebuild with HOROVOD_WITH_MPI=1 scripts/install_horovod.sh "
                "(see its header), or use op=average",
            )
        self.lr_scale = lr_factor(s.lr_scaling, self.size)
        self._op = {"average": hvd.Average, "sum": hvd.Sum, "adasum": hvd.Adasum}[s.op]
        self._compression = hvd.Compression.fp16 if s.compression == "fp16" else None
        # gradient_predivide_factor f splits an average into x 1/f before the sum and x f/size
        # after it, as hvd.DistributedOptimizer does; Adasum takes no scale factors.
        self._pre, self._post = 1.0 / s.gradient_predivide_factor, s.gradient_predivide_factor
        if s.op == "adasum":
            self._prescale, self._postscale = 1.0, 1.0
        else:
            self._prescale, self._postscale = self._pre, self._post
        # The usual case (fused; average or sum; no compression) takes ONE allreduce per step:
        # the loss and the flags ride at the end of the gradient buffer.
        self._packed = s.allreduce == "fused" and s.op != "adasum" and s.compression == "none"
        self._reducer = Reducer(self.rank, self.size, self._travel)
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        if "OMP_NUM_THREADS" not in os.environ:
            # N ranks on one host share its cores; torch's default of one thread per core each
            # would oversubscribe them N times.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_size))
        if not self.is_main:
            tag_rank_output(self.rank)

    # -- the backend interface ------------------------------------------------------------------

    @torch.no_grad()
    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Overwrite every rank's parameters with rank 0's, in name order."""
        if self.size == 1:
            return
        layout = layout_of(params)
        hvd = self.hvd
        with _collective(self.rank):
            handles = [
                hvd.broadcast_async_(p.data, root_rank=0, name=f"pyrotrain.param.{name}")
                for name, p in zip(layout.names, layout.params, strict=True)
            ]
            for h in handles:
                self._wait(h)

    def reduce(
        self, params: Iterable[torch.Tensor], loss: float = 0.0, stop: int = 0
    ) -> tuple[float, int]:
        """See :meth:`~pyrotrain.distributed.base.Backend.reduce` (:class:`~.base.Reducer`)."""
        return self._reducer(params, loss, stop)

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        with _collective(self.rank):
            return self.hvd.allgather_object(obj, name="pyrotrain.gather")

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        with _collective(self.rank):
            return self.hvd.broadcast_object(obj, root_rank=0, name="pyrotrain.bcast_object")

    def barrier(self) -> None:
        with _collective(self.rank):
            self.hvd.barrier()

    def params_in_sync(self) -> bool:
        """Whether every rank holds bitwise the same Pyro parameters (one small allgather)."""
        with _collective(self.rank):
            digests = self.hvd.allgather_object(param_digest(), name="pyrotrain.digest")
        return len(set(digests)) == 1

    # -- the three ways to hand gradients to Horovod ----------------------------------------------

    def _travel(
        self, layout: Layout, grads: list[torch.Tensor], meta: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The :data:`~.base.Travel` of this engine: ``allreduce``, ``op`` and ``compression``
        pick the way."""
        hvd = self.hvd
        with _collective(self.rank):
            if self._packed:
                return self._fused_packed(layout, grads, meta)
            reduce = {
                "fused": self._fused,
                "grouped": self._grouped,
                "per_tensor": self._per_tensor,
            }[self.settings.allreduce]
            pending = reduce(layout, grads)
            meta_handle = hvd.allreduce_async_(meta, name="pyrotrain.meta", op=hvd.Sum)
            reduced = pending()
            return reduced, self._wait(meta_handle) / self.size

    def _wait(self, handle: Any) -> Any:
        """``hvd.synchronize``, without its 1 ms sleeps between polls (most of a small step's
        communication time): poll every ~50 µs instead."""
        poll = self.hvd.poll
        while not poll(handle):
            time.sleep(POLL_INTERVAL_S)
        return self.hvd.synchronize(handle)

    def _compress(self, t: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self._compression is None:
            return t, None
        return self._compression.compress(t)

    def _decompress(self, t: torch.Tensor, ctx: Any) -> torch.Tensor:
        return t if self._compression is None else self._compression.decompress(t, ctx)

    def _allreduce_async(self, t: torch.Tensor, name: str) -> Any:
        return self.hvd.allreduce_async_(
            t, name=name, op=self._op, prescale_factor=self._prescale,
            postscale_factor=self._postscale,
        )  # fmt: skip

    def _fused_packed(
        self, layout: Layout, grads: list[torch.Tensor], meta: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One allreduce per dtype, the loss and flags riding at the end of the first buffer.

        Horovod's scale factors would scale them too, so the gradients are scaled here instead.
        """
        started = []
        for j, (dtype, idx) in enumerate(layout.by_dtype):
            parts = [grads[i].reshape(-1) for i in idx]
            n_grad = sum(t.numel() for t in parts)
            flat = torch.cat(parts + ([meta.to(parts[0].dtype)] if j == 0 else []))
            if self._pre != 1.0:
                flat[:n_grad].mul_(self._pre)
            handle = self.hvd.allreduce_async_(flat, name=f"pyrotrain.grads.{dtype}", op=self._op)
            started.append((idx, n_grad, handle))
        out: list[Any] = [None] * len(grads)
        mean = meta
        for j, (idx, n_grad, handle) in enumerate(started):
            flat = self._wait(handle)
            if self._post != 1.0:
                flat[:n_grad].mul_(self._post)
            for i, g in zip(idx, flat[:n_grad].split([grads[i].numel() for i in idx]), strict=True):
                out[i] = g
            if j == 0:
                mean = flat[n_grad:].to(torch.float64)
                if self.settings.op == "sum":
                    mean /= self.size
        return out, mean

    def _fused(self, layout: Layout, grads: list[torch.Tensor]):
        started = []
        for dtype, idx in layout.by_dtype:
            flat = torch.cat([grads[i].reshape(-1) for i in idx])
            buf, ctx = self._compress(flat)
            started.append((idx, buf, ctx, self._allreduce_async(buf, f"pyrotrain.grads.{dtype}")))

        def finish() -> list[torch.Tensor]:
            out: list[Any] = [None] * len(grads)
            for idx, _buf, ctx, handle in started:
                flat = self._decompress(self._wait(handle), ctx)
                for i, g in zip(idx, flat.split([grads[i].numel() for i in idx]), strict=True):
                    out[i] = g
            return out

        return finish

    def _grouped(self, layout: Layout, grads: list[torch.Tensor]):
        started = []
        for dtype, idx in layout.by_dtype:
            packed = [self._compress(grads[i]) for i in idx]
            handle = self.hvd.grouped_allreduce_async_(
                [t for t, _ in packed], name=f"pyrotrain.grads.{dtype}", op=self._op,
                prescale_factor=self._prescale, postscale_factor=self._postscale,
            )  # fmt: skip
            started.append((idx, [c for _, c in packed], handle))

        def finish() -> list[torch.Tensor]:
            out: list[Any] = [None] * len(grads)
            for idx, ctxs, handle in started:
                for i, t, ctx in zip(idx, self._wait(handle), ctxs, strict=True):
                    out[i] = self._decompress(t, ctx)
            return out

        return finish

    def _per_tensor(self, layout: Layout, grads: list[torch.Tensor]):
        started = []
        for name, g in zip(layout.names, grads, strict=True):
            t, ctx = self._compress(g)
            started.append((ctx, self._allreduce_async(t, f"pyrotrain.grad.{name}")))

        def finish() -> list[torch.Tensor]:
            return [self._decompress(self._wait(h), ctx) for ctx, h in started]

        return finish
