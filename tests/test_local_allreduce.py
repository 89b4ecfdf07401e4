"""The socket allreduce between the ranks of one host (``distributed.transport: socket``), in real
processes: every rank ends with the same bits, equal to the rank-order sum and to Gloo's own
allreduce on the same tensors; a rank that dies fails the others at once, not at the timeout.

(Under torchrun it is the default transport: tests/test_torch_distributed.py's equivalence, resume
and failure tests run over it, and its two-launcher job, which reduces over Gloo, ends bitwise
equal to the one-launcher job.)"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from pyrotrain.distributed import _local
from pyrotrain.errors import PyrotrainError

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not _local.available(), reason="abstract Unix sockets are Linux's"),
]

DTYPES = (torch.float32, torch.float64, torch.float16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensor(rank: int, dtype: torch.dtype, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    t = torch.randn(max(n, 1), generator=g, dtype=torch.float64) * 10 ** (rank - 1)
    return (t if n else t[0]).to(dtype)


def _worker(rank: int, size: int, port: int, mode: str, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=timedelta(seconds=60))
    group = _local.LocalGroup(dist.PrefixStore("socket", store), rank, size, timeout=60.0)
    if mode == "mismatch":  # rank 1's model made a parameter rank 0's did not
        try:
            group.all_reduce_(torch.ones(10 if rank == 0 else 12))
            out.put((rank, "no error", 0.0))
        except (RuntimeError, ValueError) as e:
            out.put((rank, f"{type(e).__name__}: {e}", 0.0))
        group.close()
        return
    if mode == "die":
        if rank == size - 1:
            os._exit(3)  # connected, then gone without a word
        start = time.perf_counter()
        try:
            group.all_reduce_(torch.ones(10))
            out.put((rank, "no error", 0.0))
        except RuntimeError as e:
            out.put((rank, str(e), time.perf_counter() - start))
        return
    dist.init_process_group("gloo", store=dist.PrefixStore("gloo", store), rank=rank,
                            world_size=size)  # fmt: skip
    results = {}
    for dtype in DTYPES:
        for n in (0, 1, 1000, 300_000):  # 300k floats: more than a socket buffer holds
            t = _tensor(rank, dtype, n)  # n=0: a 0-dim tensor
            gloo = t.clone()
            group.all_reduce_(t)
            dist.all_reduce(gloo)
            expected = _tensor(0, dtype, n)
            for r in range(1, size):
                expected += _tensor(r, dtype, n)
            # numpy arrays travel by value (torch tensors would travel as shared memory)
            results[(str(dtype), n)] = (t.numpy(), gloo.numpy(), expected.numpy())
    dist.destroy_process_group()
    group.close()
    out.put((rank, results, 0.0))


def _run(size: int, mode: str) -> dict[int, tuple]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, size, port, mode, out)) for r in range(size)]
    for p in procs:
        p.start()
    got = {}
    for _ in range(size - (mode == "die")):
        rank, value, seconds = out.get(timeout=120)
        got[rank] = (value, seconds)
    for p in procs:
        p.join(timeout=30)
    return got


@pytest.mark.parametrize("size", [2, 3])
def test_every_rank_gets_the_rank_order_sum_and_what_gloo_gives(size):
    got = _run(size, "sum")
    assert sorted(got) == list(range(size))
    for key in got[0][0]:
        ours = [torch.from_numpy(got[r][0][key][0]) for r in range(size)]
        gloo, expected = (torch.from_numpy(a) for a in got[0][0][key][1:])
        for t in ours[1:]:
            assert torch.equal(t, ours[0]), key  # the same bits on every rank
        assert torch.equal(ours[0], expected), key  # rank 0 + rank 1 (+ rank 2), in that order
        if size == 2:  # a + b == b + a: Gloo's order cannot differ
            assert torch.equal(ours[0], gloo), key
        else:
            tol = 1e-2 if key[0] == "torch.float16" else 1e-5
            torch.testing.assert_close(ours[0], gloo, rtol=tol, atol=tol)


def test_a_rank_that_dies_fails_the_others_at_once():
    got = _run(3, "die")  # the timeout is 60 s
    assert sorted(got) == [0, 1]
    for rank, (message, seconds) in got.items():
        assert "another rank closed its connection" in message or "reset" in message, message
        assert seconds < 10, (rank, seconds)


def test_transport_socket_is_refused_when_ranks_span_hosts(monkeypatch):
    """Two launchers of one rank each (``--nnodes=2``): LOCAL_WORLD_SIZE is 1 of 2."""
    from pyrotrain.distributed import torch as engine

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    backend = engine.TorchBackend.__new__(engine.TorchBackend)
    backend.size, backend.rank = 2, 0
    backend.settings = engine.Settings(transport="socket")
    with pytest.raises(PyrotrainError) as e:
        backend._socket_group()
    text = str(e.value)
    assert "distributed.transport" in text and "other hosts" in text and "auto, backend" in text
    backend.settings = engine.Settings(transport="auto")
    assert backend._socket_group() is None  # auto: the backend


def test_buffers_of_different_sizes_are_refused_not_summed():
    got = _run(2, "mismatch")
    assert got[0][0].startswith("SizeMismatch: rank 1 reduces 48 bytes and rank 0 40"), got
    assert "another rank closed its connection" in got[1][0] or "reset" in got[1][0], got
