"""The gradient allreduce between ranks on one host, over Unix-domain sockets
(``distributed.transport: socket``; ``auto`` picks it when every rank of a CPU job is on this host).

Why not Gloo here: on the 2-core machine this was built on, one Gloo allreduce of 30 floats
between two local ranks took 0.35-0.45 ms at the median and 1.2-1.7 ms on average (a tail of
4-8 ms: each collective hands work between the caller's thread, a Gloo worker thread and Gloo's TCP
loop thread, and on a busy machine some of those wake-ups wait for a free core), where a ping-pong
over a Unix socket between two processes took 16 µs. No library on PyPI that runs with this torch
offers a CPU shared-memory or socket collective (torch's own are GPU-only, the MPI backend needs a
torch built with MPI, oneCCL's bindings are tied to other torch releases), hence these hundred
lines.

The collective is a star: every other rank sends its buffer to rank 0, which adds them to its own
in rank order and sends the sum back, so every rank gets the same bits. Each buffer travels after
its length: ranks whose buffers differ (their models made different parameters) are refused, not
summed. A rank that dies closes its socket, and the ranks waiting on it fail at once instead of
waiting for a timeout.
"""

from __future__ import annotations

import socket
import sys
import uuid
from typing import Any

import torch

_RANK_BYTES = 4
_LENGTH_BYTES = 8


class SizeMismatch(ValueError):
    """The ranks handed in buffers of different sizes."""


def available() -> bool:
    """Abstract Unix socket addresses (no file to clean up) are Linux's."""
    return sys.platform.startswith("linux")


class LocalGroup:
    """The ranks of one job, all on this host, connected to rank 0 by a Unix socket each.

    :param store: a store every rank reaches (the process group's); rank 0 publishes its address
        there.
    :param rank: this rank.
    :param size: the number of ranks.
    :param timeout: seconds a rank waits for another before the collective fails.
    """

    def __init__(self, store: Any, rank: int, size: int, timeout: float):
        self.rank, self.size = rank, size
        self._peers: list[socket.socket] = []  # rank 0: ranks 1..size-1, in rank order
        self._root: socket.socket | None = None  # the others: the connection to rank 0
        self._scratch: dict[tuple[torch.dtype, int], torch.Tensor] = {}
        key = "pyrotrain/local_allreduce"
        try:
            if rank == 0:
                address = f"\0pyrotrain-{uuid.uuid4().hex}"
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with server:
                    server.bind(address)
                    server.listen(size)
                    server.settimeout(timeout)
                    store.set(key, address[1:])
                    peers: dict[int, socket.socket] = {}
                    while len(peers) < size - 1:
                        conn, _ = server.accept()
                        conn.settimeout(timeout)
                        peers[int.from_bytes(_recv_exactly(conn, _RANK_BYTES), "little")] = conn
                self._peers = [peers[r] for r in range(1, size)]
            else:
                address = "\0" + store.get(key).decode()
                root = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                root.settimeout(timeout)
                root.connect(address)
                root.sendall(rank.to_bytes(_RANK_BYTES, "little"))
                self._root = root
        except OSError as e:
            self.close()
            raise RuntimeError(f"connecting the ranks on this host failed: {e}") from e

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` (contiguous, on the CPU) by its sum over the ranks, in place."""
        tensor = tensor.view(-1)  # the same memory; a 0-dim tensor has no bytes view
        raw = tensor.view(torch.uint8).numpy().data
        try:
            length = len(raw).to_bytes(_LENGTH_BYTES, "little")
            if self._root is not None:
                self._root.sendall(length)
                self._root.sendall(raw)
                _recv_into(self._root, raw)
                return
            if not self._peers:
                return
            other = self._scratch_like(tensor)
            other_raw = other.view(torch.uint8).numpy().data
            for rank, peer in enumerate(self._peers, start=1):
                theirs = int.from_bytes(_recv_exactly(peer, _LENGTH_BYTES), "little")
                if theirs != len(raw):
                    raise SizeMismatch(
                        f"rank {rank} reduces {theirs} bytes and rank 0 {len(raw)}: the ranks' "
                        "traces hold different parameters (every rank must create and use the "
                        "same Pyro parameters)"
                    )
                _recv_into(peer, other_raw)
                tensor.add_(other)
            for peer in self._peers:
                peer.sendall(raw)
        except OSError as e:  # a peer left (reset, broken pipe) or timed out
            raise RuntimeError(f"the allreduce between this host's ranks failed: {e}") from e

    def _scratch_like(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.dtype, tensor.numel())
        if key not in self._scratch:
            self._scratch[key] = torch.empty_like(tensor)
        return self._scratch[key]

    def close(self) -> None:
        for s in [*self._peers, *([self._root] if self._root is not None else [])]:
            s.close()
        self._peers, self._root = [], None


def _recv_into(sock: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = sock.recv_into(buf[got:])
        if n == 0:
            raise ConnectionResetError("another rank closed its connection")
        got += n


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)
