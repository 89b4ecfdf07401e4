"""``horovodrun -np 2 pyrotrain ...`` for real: outputs, equivalence with one process, errors.
(Sharding and the config checks, which need no Horovod, are in test_distributed.py.)

Every test that launches horovodrun starts two ranks on this machine over Gloo (about 8 s each). A
``sitecustomize`` put on the ranks' PYTHONPATH records every file that a non-main rank opens for
writing under the test's directory, so "rank 1 writes nothing" is checked, not assumed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers import (
    BIN,
    PYROTRAIN,
    REPO,
    TESTS,
    assert_same_run,
    cli_env,
    metrics_rows,
    run_summary,
    saved_params,
)
from launched import (
    COMMON,
    LRS,
    STACK,
    Result,
    failing_model,
    install_write_recorder,
    max_diff,
    recorded_writes,
    stack_optimizers,
    train_one_process,
)

HOROVODRUN = BIN / "horovodrun"

pytestmark = [
    pytest.mark.horovod,
    pytest.mark.skipif(
        importlib.util.find_spec("horovod") is None or not HOROVODRUN.exists(),
        reason="horovod is not installed in this environment (make install builds it)",
    ),
]


def launch(args: list[str], cwd: Path, env: dict[str, str], np: int = 2) -> subprocess.Popen:
    """``horovodrun -np NP -H localhost:NP pyrotrain ARGS``, output merged, in a session of its
    own so that a test can signal or kill the whole job."""
    return subprocess.Popen(
        [str(HOROVODRUN), "-np", str(np), "-H", f"localhost:{np}", str(PYROTRAIN), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def launch_env(
    env: dict[str, str] | None = None, pythonpath: Sequence[Path] = (REPO, TESTS)
) -> dict[str, str]:
    """``cli_env`` for a job's ranks: this interpreter's bin first on PATH, one OpenMP thread."""
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return cli_env({"PATH": path, "OMP_NUM_THREADS": "1", **(env or {})}, pythonpath)


def hvdrun(tmp: Path, *args: str, cwd: Path, np: int = 2, timeout: float = 120) -> Result:
    """``horovodrun -np 2 -H localhost:2 pyrotrain ARGS`` in ``cwd``; a hang fails the test."""
    hook = install_write_recorder(tmp, "HOROVOD_RANK")
    writes = tmp / "writes"
    env = launch_env(
        {"PYROTRAIN_TEST_WATCH": str(cwd), "PYROTRAIN_TEST_WRITES": str(writes)},
        pythonpath=[hook, REPO, TESTS, cwd],
    )
    start = time.perf_counter()
    proc = launch(list(args), cwd, env, np)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # horovodrun stops its workers on SIGTERM (and they die with it in any case)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"horovodrun hung for {timeout} s:\n{out[-4000:]}")
    wall = time.perf_counter() - start
    recorded = recorded_writes(writes)
    return Result(proc.returncode, out, wall, recorded)


# -- horovodrun ----------------------------------------------------------------------------------


def test_two_ranks_train_like_one_process_with_twice_the_batch(tmp_path):
    """SGD with momentum: 2 ranks x 50 rows = 1 process x 100 rows (the union of the shards).

    Fails if gradients were not averaged (or summed instead), if the shards overlapped, or if the
    ranks started from different parameters. Every rank draws the same Monte-Carlo samples of the
    global latents, which is what makes the two runs agree to rounding error.
    """
    cwd = tmp_path / "job"
    cwd.mkdir()
    args = [*COMMON, "optim=sgd", "optim.lr=1e-4", "trainer.steps=30", "seed=3"]
    # microseconds in the dir name: ranks that disagreed on the start time would make two dirs
    r = hvdrun(
        tmp_path,
        *args,
        "trainer.batch_size=50",
        "hydra.run.dir=outputs/${pyrotrain_start:%Y-%m-%d_%H-%M-%S-%f}",
        cwd=cwd,
    )
    assert r.returncode == 0, r.output
    runs = list((cwd / "outputs").iterdir())
    assert len(runs) == 1 and [p.name for p in cwd.iterdir()] == ["outputs"], runs
    run = runs[0]
    for name in ("metrics.jsonl", "params.pt", "summary.json", "pyrotrain.log", ".hydra"):
        assert (run / name).exists(), name
    assert r.writes == {"1.0": []}, r.writes  # rank 1 opened no file for writing
    assert "[1]<stdout>" not in r.output  # nor printed anything
    assert "final loss" in r.output and "run dir: " in r.output

    summary = run_summary(run)
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True
    assert summary["samples_per_s"] == pytest.approx(2 * summary["samples_per_s_per_rank"])
    rows = metrics_rows(run)
    assert [row["step"] for row in rows] == [10, 20, 30]

    distributed = saved_params(run)
    big_batch = train_one_process([*args, "trainer.batch_size=100"])
    small_batch = train_one_process([*args, "trainer.batch_size=50"])
    assert max_diff(distributed, big_batch) < 1e-9
    assert max_diff(distributed, small_batch) > 1e-3  # the check above can tell them apart


def test_a_shard_smaller_than_the_batch_is_the_ranks_batch(tmp_path):
    """The default data (354 rows) on 3 ranks with batch 200: each rank's batch is its shard of
    118 rows, with one warning, and the 3 ranks train like one process on all 354 rows."""
    args = ["optim=sgd", "optim.lr=1e-4", "trainer.steps=10", "trainer.progress=none"]
    args += ["trainer.dtype=float64"]
    r = hvdrun(tmp_path, *args, "trainer.batch_size=200", "hydra.run.dir=run", cwd=tmp_path, np=3)
    assert r.returncode == 0, r.output
    assert r.output.count("warning: trainer.batch_size=200") == 1, r.output
    assert "whole shard of 118 rows" in r.output
    summary = run_summary(tmp_path / "run")
    assert summary["world_size"] == 3 and summary["params_in_sync"] is True
    whole_data = train_one_process([*args, "trainer.batch_size=354"])
    assert max_diff(saved_params(tmp_path / "run"), whole_data) < 1e-9


def test_multi_group_stack_with_dct_adam_matches_one_process(tmp_path):
    """Three groups (DCTAdam on a DCT-marked weight, AdagradRMSProp with clipping, Adam), a
    plateau scheduler, lr_scaling=linear and accumulate_grad_batches=2, against one process that
    has the doubled learning rates and all 100 rows of each step. AutoDelta samples nothing, so
    the two runs agree to rounding error only if clipping follows averaging, the scheduler sees
    the same loss, and the lrs are scaled."""
    cwd = tmp_path / "job"
    cwd.mkdir()
    r = hvdrun(
        tmp_path,
        *STACK,
        *stack_optimizers(1),
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
    assert summary["groups"]["locs"]["optimizer"] == "dct_adam"
    rows = metrics_rows(cwd / "run")
    assert rows[0]["lr/scales"] == pytest.approx(2 * LRS["eta"])  # lr_scaling=linear
    assert rows[-1]["lr/locs"] < 2 * LRS["dct"] / 3  # the plateau scheduler acted
    # each step: 2 ranks x 2 minibatches x 25 rows
    assert rows[-1]["samples_per_s"] == pytest.approx(100 * rows[-1]["steps_per_s"])

    reference = train_one_process([*STACK, *stack_optimizers(2), "trainer.batch_size=100"])
    assert max_diff(saved_params(cwd / "run"), reference) < 1e-9


def test_multirun_sweep_runs_every_job_on_every_rank(tmp_path):
    cwd = tmp_path / "job"
    cwd.mkdir()
    r = hvdrun(
        tmp_path,
        "--multirun",
        "optim.lr=1e-3,1e-2",
        "trainer.steps=20",
        "trainer.progress=none",
        "hydra.sweep.dir=multirun/${pyrotrain_start:%Y-%m-%d_%H-%M-%S-%f}",
        cwd=cwd,
    )
    assert r.returncode == 0, r.output
    sweeps = list((cwd / "multirun").iterdir())
    assert len(sweeps) == 1 and [p.name for p in cwd.iterdir()] == ["multirun"], sweeps
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    for job, lr in zip(jobs, (1e-3, 1e-2), strict=True):
        summary = run_summary(job)
        assert summary["world_size"] == 2 and summary["params_in_sync"] is True
        assert summary["lr"]["all"] == pytest.approx(lr)
        assert (job / ".hydra" / "config.yaml").exists()
    # multirun.yaml is rank 0's (rank 1's would carry its hydra.output_subdir=null)
    assert "output_subdir: .hydra" in (sweeps[0] / "multirun.yaml").read_text()
    assert r.writes == {"1.0": []}, r.writes


def test_distributed_none_refuses_two_ranks(tmp_path):
    r = hvdrun(tmp_path, "distributed=none", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode != 0
    assert "exit with status code 2" in r.output, r.output
    assert "Invalid value for 'distributed': 'none'" in r.output
    assert "rank 1 of 2" in r.output or "rank 0 of 2" in r.output
    assert "Valid choices: auto, horovod" in r.output
    assert "]<stderr>:Traceback" not in r.output  # no rank printed a traceback
    assert not (tmp_path / "run" / "params.pt").exists()


def test_a_failing_rank_ends_the_job_quickly_and_is_named(tmp_path):
    (tmp_path / "failing_model.py").write_text(failing_model("HOROVOD_RANK"))
    r = hvdrun(
        tmp_path,
        "model=custom",
        "model.target=failing_model:Model",
        "trainer.steps=100000",  # hours, unless the failure ends the job
        "trainer.progress=none",
        "hydra.run.dir=run",
        cwd=tmp_path,
        timeout=90,
    )
    assert r.returncode != 0
    assert "rank 1 failed: ValueError: bad row in this rank's shard" in r.output, r.output
    assert "rank 0 stopped: another rank failed" in r.output or "Terminating" in r.output
    assert r.wall < 60, r.wall
    assert not (tmp_path / "run" / "summary.json").exists()


# -- checkpoints and resume ------------------------------------------------------------------------

RESUME = [*COMMON, "trainer.batch_size=50", "trainer.checkpoint_every=5", "trainer.log_every=5"]


def test_two_ranks_ten_steps_then_resume_equal_twenty_straight(tmp_path):
    job = tmp_path / "job"  # the recorder of rank 1's writes keeps its file outside
    job.mkdir()
    r = hvdrun(tmp_path, *RESUME, "trainer.steps=20", "hydra.run.dir=straight", cwd=job)
    assert r.returncode == 0, r.output
    r = hvdrun(tmp_path, *RESUME, "trainer.steps=10", "hydra.run.dir=resumed", cwd=job)
    assert r.returncode == 0, r.output
    r = hvdrun(
        tmp_path,
        *RESUME,
        "trainer.steps=20",
        "trainer.resume=auto",
        "hydra.run.dir=resumed",
        cwd=job,
    )
    assert r.returncode == 0, r.output
    assert r.writes == {"1.0": []}, r.writes
    summary = run_summary(job / "resumed")
    assert summary["resumed_from_step"] == 10 and summary["params_in_sync"] is True
    assert_same_run(job / "straight", job / "resumed", 20, ranks=2)


def test_ctrl_c_to_horovodrun_stops_every_rank_after_the_same_step(tmp_path):
    """horovodrun turns Ctrl-C into SIGTERM for its ranks; they agree (through the gradient
    allreduce) on the step to stop after, rank 0 checkpoints, and the resumed job ends where an
    uninterrupted one does."""
    args = [*RESUME, "trainer.steps=500", "trainer.log_every=1", "trainer.progress=plain"]
    proc = launch([*args, "hydra.run.dir=run"], tmp_path, launch_env())
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "<stdout>:step 20/" in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("horovodrun did not stop after Ctrl-C")
    out = "".join(lines) + out
    # every rank got SIGTERM and asked to stop; rank 0 stopped after the step they agreed on
    for rank in (0, 1):
        assert f"[{rank}]<stderr>:SIGTERM: stopping after this step" in out, out[-3000:]
    assert "exit with status code 143" in out  # horovodrun reports the first rank to exit
    assert "trainer.resume=" in out
    from pyrotrain.checkpoint import list_checkpoints, load_checkpoint

    stopped = load_checkpoint(list_checkpoints(tmp_path / "run")[0])
    assert 20 <= stopped["step"] < 500 and len(stopped["rng"]) == 2

    r = hvdrun(tmp_path, *args, "trainer.resume=auto", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.output
    r = hvdrun(tmp_path, *args, "hydra.run.dir=straight", cwd=tmp_path)
    assert r.returncode == 0, r.output
    assert_same_run(tmp_path / "straight", tmp_path / "run", 500, ranks=2)


def test_two_ranks_stop_early_after_the_same_step(tmp_path):
    """Early stopping on an evaluation metric: rank 0 decides and rank 1 follows, so the job ends
    (a rank still training would wait forever in its next allreduce) after step 10 of 40, with
    the best step's parameters in best.pt."""
    job = tmp_path / "job"
    job.mkdir()
    r = hvdrun(
        tmp_path,
        *COMMON,
        "model=custom",
        "model.target=toy_models:ScriptedEval",
        "+model.script=[5.0,4.0,3.0,2.97,3.5,1.0]",
        "trainer.batch_size=50",
        "trainer.steps=40",
        "trainer.log_every=2",
        "trainer.eval_every=2",
        "trainer.early_stopping.monitor=eval/score",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.min_delta=0.05",
        "hydra.run.dir=run",
        cwd=job,
    )
    assert r.returncode == 0, r.output
    assert r.writes == {"1.0": []}, r.writes
    summary = run_summary(job / "run")
    assert summary["stopped_early_at"] == 10 and summary["best"]["step"] == 6
    assert summary["params_in_sync"] is True
    assert "stopped early at step 10" in r.output
    assert (job / "run" / "checkpoints" / "best.pt").is_file()
