"""``torchrun --nproc-per-node 2 pyrotrain ...`` for real: outputs, equivalence with one process,
exact resume, Ctrl-C, a failing rank, an elastic restart after a SIGKILL, two launchers as two
nodes. (The settings checks, which need no launcher, are in test_distributed.py.)

Every job starts two ranks on this machine over Gloo (a few seconds each). Jobs are shared between
the tests that read them through module-scoped fixtures. A ``sitecustomize`` put on the ranks'
PYTHONPATH records every file that a non-main rank opens for writing under the job's directory, so
"rank 1 writes nothing" is checked, not assumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    BIN,
    PYROTRAIN,
    TESTS,
    assert_same_run,
    cli_env,
    metrics_rows,
    run_summary,
    same,
    saved_params,
)
from launched import (
    COMMON,
    LRS,
    STACK,
    Result,
    failing_model,
    free_port,
    install_write_recorder,
    max_diff,
    recorded_writes,
    stack_optimizers,
    train_one_process,
)

TORCHRUN = BIN / "torchrun"

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside this interpreter"),
]


class Job:
    """A torchrun job: its launcher process(es), output and what rank 1 wrote."""

    def __init__(self, tmp: Path, cwd: Path, args: list[str], launcher: list[str] | None = None):
        assert cwd not in (tmp, *tmp.parents), "the write recorder's files stay outside cwd"
        self.tmp, self.cwd = tmp, cwd
        cwd.mkdir(parents=True, exist_ok=True)
        hook = install_write_recorder(tmp, "RANK")
        self.writes_at = tmp / "writes"
        path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        self.env = cli_env(
            {
                "PATH": path,
                "OMP_NUM_THREADS": "1",
                "PYROTRAIN_TEST_WATCH": str(cwd),
                "PYROTRAIN_TEST_WRITES": str(self.writes_at),
            },
            pythonpath=[hook, TESTS, cwd],
        )
        launcher = launcher or ["--standalone", "--nproc-per-node", "2"]
        self.cmd = [str(TORCHRUN), *launcher, str(PYROTRAIN), *args]

    def start(self) -> subprocess.Popen:
        """The launcher in a session of its own, so that a test can signal or kill the job."""
        return subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def writes(self) -> dict[str, list[str]]:
        """Files rank 1 (any attempt) opened for writing; the records are consumed."""
        return recorded_writes(self.writes_at)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """The launcher's exit code and output once it exits; a hang fails the test (and ends the
    job)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def torchrun(
    tmp: Path, *args: str, cwd: Path, launcher: list[str] | None = None, timeout: float = 120
) -> Result:
    """``torchrun --standalone --nproc-per-node 2 pyrotrain ARGS`` (or ``launcher``) in ``cwd``."""
    job = Job(tmp, cwd, list(args), launcher)
    start = time.perf_counter()
    rc, out = finish(job.start(), timeout)
    return Result(rc, out, time.perf_counter() - start, job.writes())


# -- equivalence with one process ------------------------------------------------------------------

SGD = [*COMMON, "optim=sgd", "optim.lr=1e-4", "trainer.steps=30", "seed=3"]


@pytest.fixture(scope="module")
def sgd_job(tmp_path_factory) -> tuple[Result, Path]:
    tmp = tmp_path_factory.mktemp("sgd")
    cwd = tmp / "job"
    cwd.mkdir()
    # microseconds in the dir name: ranks that disagreed on the start time would make two dirs
    r = torchrun(
        tmp,
        *SGD,
        "trainer.batch_size=50",
        "hydra.run.dir=outputs/${pyrotrain_start:%Y-%m-%d_%H-%M-%S-%f}",
        cwd=cwd,
    )
    return r, cwd


def test_one_job_one_run_dir_written_by_rank_0(sgd_job):
    r, cwd = sgd_job
    assert r.returncode == 0, r.output
    runs = list((cwd / "outputs").iterdir())
    assert len(runs) == 1 and [p.name for p in cwd.iterdir()] == ["outputs"], runs
    run = runs[0]
    for name in ("metrics.jsonl", "params.pt", "summary.json", "pyrotrain.log", ".hydra"):
        assert (run / name).exists(), name
    assert r.writes == {"1.0": []}, r.writes  # rank 1 opened no file for writing
    assert r.output.count("final loss") == 1 and "run dir: " in r.output  # rank 0 speaks
    summary = run_summary(run)
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True
    assert summary["samples_per_s"] == pytest.approx(2 * summary["samples_per_s_per_rank"])
    assert [row["step"] for row in metrics_rows(run)] == [10, 20, 30]


def test_two_ranks_train_like_one_process_with_twice_the_batch(sgd_job):
    """SGD: 2 ranks x 50 rows = 1 process x 100 rows (the union of the shards). Fails if the
    gradients were not averaged, if the shards overlapped, or if the ranks started apart."""
    r, cwd = sgd_job
    assert r.returncode == 0, r.output
    (run,) = list((cwd / "outputs").iterdir())
    distributed = saved_params(run)
    big_batch = train_one_process([*SGD, "trainer.batch_size=100"])
    small_batch = train_one_process([*SGD, "trainer.batch_size=50"])
    assert max_diff(distributed, big_batch) < 1e-9
    assert max_diff(distributed, small_batch) > 1e-3  # the check above can tell them apart


def test_multi_group_stack_with_dct_adam_matches_one_process(tmp_path):
    """Three groups (DCTAdam on a DCT-marked weight, AdagradRMSProp with clipping, Adam), a
    plateau scheduler, lr_scaling=linear and accumulate_grad_batches=2 (explicit
    distributed=torch, allreduce=per_tensor over Gloo: one allreduce per
    parameter, 0-dim ones included), against one process with the doubled rates and all 100 rows
    of each step: equal to rounding only if clipping follows averaging, the scheduler sees the
    same loss, and the lrs are scaled."""
    cwd = tmp_path / "job"
    cwd.mkdir()
    r = torchrun(
        tmp_path,
        *STACK,
        *stack_optimizers(1),
        "distributed=torch",
        "distributed.allreduce=per_tensor",
        "distributed.lr_scaling=linear",
        "trainer.accumulate_grad_batches=2",
        "trainer.batch_size=25",
        "hydra.run.dir=run",
        cwd=cwd,
    )
    assert r.returncode == 0, r.output
    assert r.writes == {"1.0": []}, r.writes
    summary = run_summary(cwd / "run")
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True
    rows = metrics_rows(cwd / "run")
    assert rows[0]["lr/scales"] == pytest.approx(2 * LRS["eta"])  # lr_scaling=linear
    assert rows[-1]["lr/locs"] < 2 * LRS["dct"] / 3  # the plateau scheduler acted
    assert rows[-1]["samples_per_s"] == pytest.approx(100 * rows[-1]["steps_per_s"])

    reference = train_one_process([*STACK, *stack_optimizers(2), "trainer.batch_size=100"])
    assert max_diff(saved_params(cwd / "run"), reference) < 1e-9


# -- stopping, resuming, restarting ----------------------------------------------------------------

LONG = [
    *COMMON,
    "trainer.batch_size=50",
    "trainer.checkpoint_every=10",
    "trainer.log_every=1",
    "trainer.progress=plain",
    "trainer.steps=100",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 100-step job: what the stopped and restarted ones must end at."""
    tmp = tmp_path_factory.mktemp("straight")
    r = torchrun(tmp, *LONG, "hydra.run.dir=straight", cwd=tmp / "job")
    assert r.returncode == 0, r.output
    return tmp / "job" / "straight"


def test_ctrl_c_stops_every_rank_after_the_same_step_and_resume_is_exact(tmp_path, straight):
    """torchrun passes Ctrl-C on to its workers (SIGINT); they agree (through the gradient
    allreduce) on the step to stop after, rank 0 checkpoints, and the job resumed under torchrun
    ends bitwise where an uninterrupted one does."""
    job = Job(tmp_path, tmp_path / "job", [*LONG, "hydra.run.dir=run"])
    proc = job.start()
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 20/"):
            break
    proc.send_signal(signal.SIGINT)
    rc, out = finish(proc, 60)
    out = "".join(lines) + out
    assert rc != 0
    # both ranks got SIGINT and asked to stop; rank 0 stopped after the step they agreed on
    assert out.count("SIGINT: stopping after this step") == 2, out[-3000:]
    assert "SIGINT: training stopped after step" in out and "trainer.resume=" in out
    assert "error: rank" not in out, out[-3000:]  # a clean stop, not a failure
    assert job.writes() == {"1.0": []}
    from pyrotrain.checkpoint import list_checkpoints, load_checkpoint

    stopped = load_checkpoint(list_checkpoints(tmp_path / "job" / "run")[0])
    assert 20 <= stopped["step"] < 100 and len(stopped["rng"]) == 2

    r = torchrun(tmp_path, *LONG, "trainer.resume=auto", "hydra.run.dir=run", cwd=tmp_path / "job")
    assert r.returncode == 0, r.output
    assert r.writes == {"1.0": []}, r.writes
    summary = run_summary(tmp_path / "job" / "run")
    assert summary["resumed_from_step"] == stopped["step"] and summary["params_in_sync"] is True
    assert_same_run(straight, tmp_path / "job" / "run", 100, ranks=2)


_STOP_REDUCE = """
import os, signal
import pyro, torch
from pyrotrain.distributed.torch import Settings, TorchBackend

backend = TorchBackend(Settings())
p = pyro.param("w", torch.zeros(3)).unconstrained()
got = []
for last in (signal.SIGINT, signal.SIGTERM, 0):
    p.grad = torch.ones(3)
    stop = last if backend.rank == backend.size - 1 else (0 if last == 0 else signal.SIGINT)
    got.append(backend.reduce([p], 1.0, stop)[1])
if backend.is_main:
    print("STOPS", *got)
"""


def test_eight_ranks_stopped_by_sigint_stop_for_sigint_not_sigterm(tmp_path):
    """The stop flag counts each signal apart: eight ranks' SIGINTs (whose signal numbers sum to
    16, past SIGTERM's 15) decode as SIGINT; seven SIGINTs and one SIGTERM as SIGTERM; none as
    0. Eight real ranks, each calling the backend's reduce."""
    (tmp_path / "stop_reduce.py").write_text(_STOP_REDUCE)
    r = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "8", "stop_reduce.py"],
        cwd=tmp_path,
        env=cli_env({"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"STOPS {int(signal.SIGINT)} {int(signal.SIGTERM)} 0" in r.stdout, r.stdout


def test_a_two_rank_checkpoint_resumes_in_one_process_resharded(tmp_path, straight):
    """A job that lost a rank for good goes on with fewer: the parameters, the optimizer state and
    the step carry over, the rows are re-dealt from the saved epoch on."""
    import shutil

    import pyrotrain
    from pyrotrain.checkpoint import list_checkpoints

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    oldest = list_checkpoints(straight)[-1]
    shutil.copy(oldest, run / "checkpoints")
    step = int(oldest.stem.split("-")[1])
    assert step < 100
    cfg = pyrotrain.compose([*LONG, "trainer.progress=none", "trainer.resume=auto"])
    summary = pyrotrain.train(cfg, run)
    assert summary["resumed_from_step"] == step and summary["world_size"] == 1
    assert summary["steps"] == 100
    straight_params, params = saved_params(straight), saved_params(run)
    assert not same(params, straight_params)  # other shards after step 50: not bitwise
    assert max_diff(params, straight_params) < 0.1  # but the same fit (0.03 measured)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _worker(launcher_pid: int, rank: int) -> int | None:
    """The pid of the launcher's worker process with ``RANK=rank`` (Linux /proc)."""
    for pid in _children(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers through /proc")
def test_elastic_restart_after_a_sigkilled_worker_ends_bitwise_like_an_uninterrupted_run(
    tmp_path, straight
):
    """``torchrun --max-restarts=1 ... trainer.resume=auto``: rank 1 is SIGKILLed once a
    checkpoint exists; torchrun stops rank 0, restarts both, they resume from the newest
    checkpoint and finish; the job exits 0 with the uninterrupted run's parameters, bit for bit."""
    launcher = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    job = Job(
        tmp_path, tmp_path / "job", [*LONG, "trainer.resume=auto", "hydra.run.dir=run"], launcher
    )
    proc = job.start()
    checkpoints = tmp_path / "job" / "run" / "checkpoints"
    deadline = time.monotonic() + 60
    while not (checkpoints / "step-00000010.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint at step 10"
        time.sleep(0.01)
    victim = _worker(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed_after = max(int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.pt"))
    rc, out = finish(proc, 120)
    assert rc == 0, out[-4000:]
    assert killed_after < 100, "the job had finished before the kill"
    summary = run_summary(tmp_path / "job" / "run")
    assert summary["params_in_sync"] is True and summary["world_size"] == 2
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= 10
    writes = job.writes()
    assert writes.get("1.1") == [], writes  # the restarted rank 1 wrote nothing either
    assert_same_run(straight, tmp_path / "job" / "run", 100, ranks=2)


def test_a_failing_rank_ends_the_job_quickly_and_is_named(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "failing_model.py").write_text(failing_model("RANK"))
    r = torchrun(
        tmp_path,
        "model=custom",
        "model.target=failing_model:Model",
        "trainer.steps=100000",  # hours, unless the failure ends the job
        "trainer.progress=none",
        "hydra.run.dir=run",
        cwd=tmp_path / "job",
        timeout=90,
    )
    assert r.returncode != 0
    assert "error: rank 1 failed: ValueError: bad row in this rank's shard" in r.output, r.output
    assert "rank 0 stopped: another rank failed" in r.output or "exitcode  : -15" in r.output
    assert r.wall < 60, r.wall
    assert not (tmp_path / "job" / "run" / "summary.json").exists()


# -- two launchers, two nodes ---------------------------------------------------------------------


def test_two_launchers_act_as_two_nodes_of_one_job(tmp_path, sgd_job):
    """Two torchrun launchers, ``--nnodes=2 --nproc-per-node=1``, meet through a c10d rendezvous
    on 127.0.0.1: one job of two ranks, one run directory, parameters in sync. It reduces with
    ``allreduce=per_tensor``, and ends with the same bits as the fused single-launcher job."""
    port = free_port()
    args = [
        *SGD,
        "trainer.batch_size=50",
        "distributed=torch",
        "distributed.allreduce=per_tensor",
        "hydra.run.dir=run",
    ]
    jobs = []
    for node in range(2):
        launcher = [
            "--nnodes=2",
            f"--node-rank={node}",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=pyrotrain-test-{port}",
        ]
        job = Job(tmp_path, tmp_path / "job", args, launcher)
        jobs.append((job, job.start()))
    results = [finish(proc, 120) for _, proc in jobs]
    for rc, out in results:
        assert rc == 0, out[-4000:]
    assert sum(out.count("final loss") for _, out in results) == 1  # rank 0 only, on one node
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["run"]
    summary = run_summary(tmp_path / "job" / "run")
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True
    assert jobs[0][0].writes() == {"1.0": []}
    (fused,) = list((sgd_job[1] / "outputs").iterdir())
    assert same(saved_params(tmp_path / "job" / "run"), saved_params(fused))


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="NCCL needs a CUDA device per rank (two here)",
)
def test_nccl_on_two_gpus_trains_like_one_process(tmp_path):
    args = [*SGD, "trainer.device=cuda", "distributed=torch", "distributed.backend=nccl"]
    r = torchrun(
        tmp_path, *args, "trainer.batch_size=50", "hydra.run.dir=run", cwd=tmp_path / "job"
    )
    assert r.returncode == 0, r.output
    assert run_summary(tmp_path / "job" / "run")["params_in_sync"] is True
    reference = train_one_process([*args[:-2], "trainer.batch_size=100"])
    distributed = {
        k: v.to(reference[k].device) for k, v in saved_params(tmp_path / "job" / "run").items()
    }
    assert max_diff(distributed, reference) < 1e-9
