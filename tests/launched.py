"""What the tests that launch real ranks (tests/test_horovod.py under horovodrun,
tests/test_torch_distributed.py under torchrun) share: the job's common overrides, the recorder
of the files non-main ranks open for writing, a launch's result, a free port, and training the
same run in this process to compare with.
"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import torch
from helpers import unconstrained_params

COMMON = [
    "data=synthetic_regression",
    "data.size=1000",  # 800 training rows: 400 per rank
    "trainer.dtype=float64",
    "trainer.progress=none",
    "trainer.eval_num_samples=5",
]

# Put on the ranks' PYTHONPATH as sitecustomize.py: records, per non-main rank (and per torchrun
# restart attempt), the files it opens for writing under PYROTRAIN_TEST_WATCH, in
# PYROTRAIN_TEST_WRITES.RANK.ATTEMPT when it exits.
_RECORDER = """
import os, sys
_rank = os.environ.get("{rank_var}")
_watch = os.environ.get("PYROTRAIN_TEST_WATCH")
if _watch and _rank not in (None, "0"):
    _writes = []
    _flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def _hook(event, args):
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _flags
        )
        if writing and os.path.abspath(os.fsdecode(path)).startswith(_watch):
            _writes.append(os.fsdecode(path))

    sys.addaudithook(_hook)

    import atexit

    @atexit.register
    def _dump():
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        with open(f"{{os.environ['PYROTRAIN_TEST_WRITES']}}.{{_rank}}.{{attempt}}", "w") as f:
            f.write("\\n".join(_writes))
"""


def install_write_recorder(tmp: Path, rank_var: str) -> Path:
    """A directory holding the recorder as ``sitecustomize.py`` (put it first on the ranks'
    PYTHONPATH); ``rank_var`` is the launcher's rank variable."""
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_RECORDER.format(rank_var=rank_var))
    return hook


def recorded_writes(writes: Path) -> dict[str, list[str]]:
    """The files each non-main rank opened for writing, by ``"RANK.ATTEMPT"`` (the records are
    consumed, so a later job of the same test starts empty)."""
    out = {}
    for path in writes.parent.glob(f"{writes.name}.*"):
        out[path.name.split(".", 1)[1]] = [w for w in path.read_text().splitlines() if w]
        path.unlink()
    return out


def train_one_process(overrides: list[str]) -> dict[str, torch.Tensor]:
    """The same run in this process; its unconstrained parameters."""
    import pyrotrain

    summary = pyrotrain.train(pyrotrain.compose(overrides))
    assert summary["world_size"] == 1
    return unconstrained_params()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# Three groups (DCTAdam on a DCT-marked weight, AdagradRMSProp with clipping, Adam) and a plateau
# scheduler: the stack both launchers' suites check against one process.
STACK = [
    "guide=auto_delta",
    "optim=multi",
    "optim.groups.locs.params=[AutoDelta.weight]",
    "optim.groups.scales.params=[AutoDelta.sigma]",
    "+optim.groups.scales.clip.norm=0.5",
    "optim.groups.weights.params=[AutoDelta.bias]",
    "+optim.dct=[{params: [AutoDelta.weight], dim: -1}]",
    "scheduler=plateau",
    "scheduler.patience=1",
    "scheduler.threshold=0.05",  # halves the lrs a few times in 24 steps
    "+optim.groups.scales.scheduler=none",  # torch's plateau needs an lr; this group has eta
    "trainer.steps=24",
    *COMMON,
]
LRS = {"dct": 0.01, "eta": 0.02, "adam": 0.003}


def stack_optimizers(factor: float) -> list[str]:
    """The three groups' optimizers, their step sizes times ``factor``."""
    return [
        "optim.groups.locs.optimizer.name=dct_adam",
        f"optim.groups.locs.optimizer.lr={LRS['dct'] * factor}",
        "+optim.groups.locs.optimizer.clip_norm=1.0",
        "optim.groups.scales.optimizer.name=adagrad_rmsprop",
        "~optim.groups.scales.optimizer.lr",
        f"+optim.groups.scales.optimizer.eta={LRS['eta'] * factor}",
        f"optim.groups.weights.optimizer.lr={LRS['adam'] * factor}",
    ]


class Result:
    """A finished launch: the launcher's exit code, its output, the wall time and the files each
    non-main rank opened for writing (see :func:`recorded_writes`)."""

    def __init__(self, rc: int, out: str, wall: float, writes: dict[str, list[str]]):
        self.returncode, self.output, self.wall, self.writes = rc, out, wall, writes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_FAILING_MODEL = """
import os
import pyro, pyro.distributions as dist, torch


class Model:
    def __init__(self, data):
        self.features = data.train["x"].shape[-1]
        self.calls = 0

    def __call__(self, x, y=None, index=None, size=None):
        self.calls += 1
        if self.calls == 3 and os.environ.get("{rank_var}") == "1":
            raise ValueError("bad row in this rank's shard")
        w = pyro.sample("w", dist.Normal(torch.zeros(self.features), 1.0).to_event(1))
        with pyro.plate("data", size, subsample=index):
            pyro.sample("obs", dist.Normal(x @ w, 1.0), obs=y)
"""


def failing_model(rank_var: str) -> str:
    """A model module (write it as failing_model.py) whose rank 1 raises at its third call;
    ``rank_var`` is the launcher's rank variable."""
    return textwrap.dedent(_FAILING_MODEL).replace("{rank_var}", rank_var)
