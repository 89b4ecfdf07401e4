"""Sweeps (basic, Optuna, joblib), sweep summaries, plots and metrics sinks: all for real."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import BIN

from pyrotrain.plots import plot_run, plot_sweep, run_title

pytestmark = pytest.mark.slow


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_multirun_ranks_jobs_and_writes_summary_and_plots(cli, tmp_path):
    sweep = tmp_path / "sweep"
    r = cli(
        "--multirun",
        "optim=adam,clipped_adam",
        "optim.lr=1e-3,1e-2",
        "trainer.steps=40",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr
    rows = _csv_rows(sweep / "sweep_summary.csv")
    assert len(rows) == 4
    losses = [float(row["smoothed_loss"]) for row in rows]
    assert losses == sorted(losses)
    assert {row["overrides"] for row in rows} == {
        f"optim={o} optim.lr={lr}" for o in ("adam", "clipped_adam") for lr in ("0.001", "0.01")
    }
    assert {"eval.rmse", "steps_per_s", "run_dir", "final_loss"} <= set(rows[0])
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [s["job"] for s in summary] == [row["job"] for row in rows]
    assert "Sweep" in r.stdout and "best first" in r.stdout
    assert (sweep / "comparison.png").stat().st_size > 10_000
    for job in range(4):
        for name in ("loss.png", "lr.png", "grad_norm.png", "summary.json"):
            assert (sweep / str(job) / name).exists(), (job, name)


def test_sweep_records_jobs_that_diverge_or_fail_and_runs_them_all(cli, tmp_path):
    sweep = tmp_path / "sweep"
    r = cli(
        "--multirun",
        "model=custom",
        "model.target=bad_models:Flaky",
        "+model.mode=diverge,fail,ok",
        "trainer.steps=20",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr  # one job finished
    rows = {row["job"]: row for row in _csv_rows(sweep / "sweep_summary.csv")}
    assert {j: rows[j]["status"] for j in rows} == {"0": "diverged", "1": "failed", "2": "finished"}
    assert rows["2"]["rank"] == "1" and rows["0"]["rank"] == rows["1"]["rank"] == ""
    assert "not finite" in rows["0"]["reason"]
    assert rows["1"]["reason"].startswith("ValueError: a bug in the user's model (")
    assert rows["1"]["reason"].endswith("bad_models.py, line 26)")
    assert "a bug in the user's model" in (sweep / "1" / "error.txt").read_text()
    assert "[job 0] diverged:" in r.stderr and "[job 1] failed:" in r.stderr
    assert "[job 2] step 20/20" in r.stdout  # parallel jobs' lines say which job they are
    # Piped, the table is one line per job, overrides first and whole.
    assert "#1 job 2: +model.mode=ok  smoothed loss" in r.stdout
    assert "-- job 0: +model.mode=diverge  diverged" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert (sweep / "comparison.png").exists()
    # Plot titles say what the run is: model, data, optimizer, then the overrides.
    title = run_title(sweep / "2")
    assert title.startswith("custom on diabetes, adam\n") and "+model.mode=ok" in title

    r = cli(
        "--multirun",
        "model=custom",
        "model.target=bad_models:Flaky",
        "+model.mode=diverge,fail",
        "trainer.steps=20",
        f"hydra.sweep.dir={tmp_path / 'none'}",
    )
    assert r.returncode == 1, r.stderr
    assert "no job of the sweep finished" in r.stderr
    assert len(_csv_rows(tmp_path / "none" / "sweep_summary.csv")) == 2


def test_sweep_settings_are_checked_before_the_first_job(cli, tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("--multirun", "optim.lr=1e-3,-1", "trainer.steps=20", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 2
    assert "'optim.groups.all.optimizer.lr': -1" in r.stderr
    assert "job with optim.lr=-1" in r.stderr and "no job was run" in r.stderr
    assert not sweep.exists()
    # A metric that only the evaluation knows: found after job 0's first step.
    r = cli(
        "--multirun",
        "optim.lr=1e-3,1e-2",
        "trainer.steps=200",
        "trainer.objective=eval.nope",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 2
    assert "'trainer.objective': 'eval.nope'" in r.stderr and "eval.rmse" in r.stderr
    assert "step 10/" not in r.stdout and not sweep.exists()


def test_optuna_search_reports_best_trial(cli, tmp_path):
    sweep = tmp_path / "optuna"
    r = cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "trainer.steps=50",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,  # the study's optuna.db
    )
    assert r.returncode == 0, r.stderr
    assert "Best parameters" in r.stdout + r.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optim", "optim.lr"}
    rows = _csv_rows(sweep / "sweep_summary.csv")
    assert len(rows) == 4
    assert float(rows[0]["smoothed_loss"]) == pytest.approx(best["best_value"])


def test_optuna_objective_can_be_an_eval_metric(cli, tmp_path):
    sweep = tmp_path / "optuna"
    r = cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "trainer.steps=20",
        "trainer.objective=eval.rmse",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,  # the study's optuna.db
    )
    assert r.returncode == 0, r.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rmses = [float(row["eval.rmse"]) for row in _csv_rows(sweep / "sweep_summary.csv")]
    assert best["best_value"] == pytest.approx(min(rmses))
    r = cli("trainer.steps=2", "trainer.objective=eval.nope", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2 and "eval.rmse" in r.stderr
    r = cli("trainer.steps=2", "trainer.objective=loss", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2 and "eval.<metric>" in r.stderr


def test_joblib_launcher_runs_jobs_in_parallel_processes(cli, tmp_path):
    sweep = tmp_path / "joblib"
    r = cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optim.lr=1e-3,1e-2",
        "trainer.steps=20",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr
    assert len(_csv_rows(sweep / "sweep_summary.csv")) == 2


def test_metrics_sinks_csv_and_tensorboard(cli, tmp_path):
    r = cli("logger=csv", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'csv'}")
    assert r.returncode == 0, r.stderr
    rows = _csv_rows(tmp_path / "csv" / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [10, 20]
    assert "lr/all" in rows[0]
    r = cli("logger=tensorboard", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'tb'}")
    assert r.returncode == 0, r.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("smoothed_loss")] == [10, 20]
    assert "lr/all" in acc.Tags()["scalars"]


def test_plot_command_on_run_and_sweep(tmp_path):
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    rows = [
        {
            "step": s,
            "loss": 100.0 / s,
            "smoothed_loss": 110.0 / s,
            "lr/a": 0.1,
            "lr/b": 0.01 / s,
            "grad_norm/a": 1.0 / s,
        }
        for s in range(1, 50)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{trunc")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- optim.lr=0.1\n")
    written = plot_run(run)
    assert [p.name for p in written] == ["loss.png", "lr.png", "grad_norm.png"]
    assert plot_sweep(tmp_path / "sweep").name == "comparison.png"
    exe = BIN / "pyrotrain-plot"
    r = subprocess.run([str(exe), str(tmp_path / "sweep"), "--log"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "comparison.png" in r.stdout
    r = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr


@pytest.mark.parametrize("mode,order", [("min", ["1", "2", "0"]), ("max", ["0", "2", "1"])])
def test_objective_best_ranks_jobs_by_their_best_monitored_value(tmp_path, mode, order):
    from pyrotrain.sweep import collect

    for job, (loss, best) in enumerate([(1.0, 3.0), (3.0, 1.0), (2.0, 2.0)]):
        d = tmp_path / str(job)
        d.mkdir()
        (d / "metrics.jsonl").write_text("")
        summary = {"smoothed_loss": loss, "best": {"monitor": "eval/x", "value": best, "step": 5}}
        (d / "summary.json").write_text(json.dumps(summary))
    assert [r["job"] for r in collect(tmp_path)] == ["0", "2", "1"]  # by smoothed loss
    assert [r["job"] for r in collect(tmp_path, mode)] == order
