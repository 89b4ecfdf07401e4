"""Optuna searches on a real SQLite study: resumed when run again, pruned, surviving a diverging
trial, killed and resumed, and shared by two processes."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import PYROTRAIN, cli_env

optuna = pytest.importorskip("optuna", minversion="4.0")

pytestmark = pytest.mark.slow

QUICK = ["trainer.progress=none", "trainer.log_every=10", "trainer.checkpoint_every=null"]


def search(db: Path, sweep: Path, n_trials: int, lr: str, *more: str) -> list[str]:
    """A search of adam's learning rate in ``lr`` (an interval) in study s1 of ``db``."""
    return [
        "-m",
        "hparams_search=optuna",
        f"hydra.sweeper.storage=sqlite:///{db}",
        "hydra.sweeper.study_name=s1",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.params={{optim: 'choice(adam)', optim.lr: '{lr}'}}",
        "trainer.steps=30",
        f"hydra.sweep.dir={sweep}",
        *QUICK,
        *more,
    ]


def states(db: Path) -> list[str]:
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{db}")
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def summary_rows(sweep: Path) -> list[dict]:
    with open(sweep / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_resumes_prunes_and_goes_on_past_a_diverging_trial(cli, tmp_path):
    db, sweep = tmp_path / "study.db", tmp_path / "sweep"
    r = cli(*search(db, sweep, 2, "interval(0.04, 0.05)"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert states(db) == ["COMPLETE", "COMPLETE"]
    # The same study again, now with a learning rate far too small: resumed (2 of 3 done), the
    # third trial is worse than the median of the first two at step 10 and is pruned there.
    r = cli(*search(db, sweep, 3, "interval(1.0e-5, 2.0e-5)"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 of 3 trials done (resuming)" in r.stdout
    assert states(db) == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = optuna.load_study(study_name="s1", storage=f"sqlite:///{db}").trials[2]
    assert list(pruned.intermediate_values) == [10]
    # Learning rates that diverge: FAILED trials, and the study goes on to n_trials.
    r = cli(*search(db, sweep, 5, "interval(50.0, 60.0)"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert states(db) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "FAIL"]
    rows = {row["job"]: row for row in summary_rows(sweep)}
    assert [rows[str(n)]["status"] for n in range(5)] == [
        "finished",
        "finished",
        "pruned",
        "diverged",
        "diverged",
    ]
    assert "pruned at step 10" in rows["2"]["reason"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["trials"] == {"complete": 2, "pruned": 1, "fail": 2}
    assert best["best_value"] == pytest.approx(min(float(rows[n]["smoothed_loss"]) for n in "01"))
    assert best["storage"] == f"sqlite:///{db}" and best["study_name"] == "s1"
    assert f"optuna study: s1 in sqlite:///{db}" in r.stdout  # the summary's last line
    # A search space the stored study cannot take is refused in one paragraph.
    r = cli(*search(db, sweep, 6, "choice(0.1, 0.2)"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "hydra.sweeper.study_name=NEW_NAME" in r.stderr and "Traceback" not in r.stderr


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(PYROTRAIN), *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_study_resumes_in_two_processes_that_share_it(tmp_path):
    db = tmp_path / "study.db"

    def args(sweep: str) -> list[str]:  # no pruner: every trial runs to its end
        return search(db, tmp_path / sweep, 4, "interval(0.01, 0.05)", "hydra/sweeper/pruner=nop")

    first = _popen(args("a"), tmp_path)
    deadline = time.monotonic() + 240
    while complete_trials(db) < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no chance to tidy up: its running trial stays RUNNING
    first.communicate()
    # Two processes resume the study at once: between them they run the two trials left.
    both = [_popen(args(sweep), tmp_path) for sweep in ("b", "c")]
    outputs = [p.communicate(timeout=300) for p in both]
    for p, (out, err) in zip(both, outputs, strict=True):
        assert p.returncode == 0, err
        assert "of 4 trials done (resuming)" in out
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{db}")
    complete = [t.number for t in study.trials if t.state.name == "COMPLETE"]
    assert 4 <= len(complete) <= 5  # each process stops at 4; both may start the last one
    # Each trial ran once, in the directory named by its number, in one of the sweeps.
    dirs = [
        int(d.name)
        for sweep in ("a", "b", "c")
        for d in (tmp_path / sweep).iterdir()
        if d.is_dir() and d.name.isdigit()
    ]
    finished = {t.number for t in study.trials if t.state.name != "RUNNING"}
    assert len(dirs) == len(set(dirs)) and finished <= set(dirs)
    for sweep in ("b", "c"):
        for row in json.loads((tmp_path / sweep / "sweep_summary.json").read_text()):
            assert row["status"] == "finished"


def complete_trials(db: Path) -> int:
    """Read without creating anything (optuna.load_study would create the schema, racing the
    process that is creating it)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet, or the database is busy
        return 0
