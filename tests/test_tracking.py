"""logger=mlflow on a real MLflow SQLite store, read back through MlflowClient; several loggers at
once; the store that cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import QUICK, metrics_rows

from pyrotrain.config import LoggerConfig, MlflowConfig, parse_loggers
from pyrotrain.errors import PyrotrainError


def test_logger_takes_a_name_a_list_or_the_composed_mapping():
    assert parse_loggers("csv") == LoggerConfig(names=("csv",))
    assert parse_loggers({"name": "tensorboard"}) == LoggerConfig(names=("tensorboard",))
    both = parse_loggers({"csv": {}, "mlflow": {"experiment_name": "e"}})
    assert both.names == ("csv", "mlflow")
    assert both.mlflow == MlflowConfig(experiment_name="e")
    assert parse_loggers(["csv", "mlflow"]).mlflow == MlflowConfig()
    with pytest.raises(PyrotrainError, match="wandb.*Valid choices: jsonl, csv, tensorboard"):
        parse_loggers(["csv", "wandb"])
    with pytest.raises(PyrotrainError, match="logger.mlflow.uri"):
        parse_loggers({"mlflow": {"uri": "x"}})


@pytest.mark.slow
def test_mlflow_records_runs_and_a_sweep_as_parent_and_children(cli, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    r = cli(
        "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri={uri}",
        "trainer.steps=20",
        "optim.lr=0.02",
        f"hydra.run.dir={run_dir}",
        *QUICK,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (run_dir / "metrics.csv").exists() and len(metrics_rows(run_dir)) == 4
    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.02"
    assert run.data.params["trainer.steps"] == "20"
    assert run.data.tags["model"] == "regression"
    assert run.data.tags["optimizer_stack"] == "all:adam"
    history = client.get_metric_history(run_id, "smoothed_loss")
    rows = metrics_rows(run_dir)
    assert [(m.step, m.value) for m in history] == [
        (row["step"], pytest.approx(row["smoothed_loss"])) for row in rows
    ]
    assert [m.step for m in client.get_metric_history(run_id, "lr/all")] == [5, 10, 15, 20]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["summary/eval/rmse"] == pytest.approx(summary["eval"]["rmse"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "config.yaml", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
        "plots/loss.png",
        "plots/lr.png",
        "plots/grad_norm.png",
    }

    sweep = tmp_path / "sweep"
    r = cli(
        "-m",
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={uri}",
        "optim.lr=0.01,0.02",
        "trainer.steps=10",
        f"hydra.sweep.dir={sweep}",
        *QUICK,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    experiment = client.get_experiment_by_name("pyrotrain")
    runs = client.search_runs([experiment.experiment_id])
    parent = [x for x in runs if x.data.tags.get("sweep_dir") == str(sweep)]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(x.data.params["optim.lr"] for x in children) == ["0.01", "0.02"]
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id)} == {"sweep_summary.csv"}
    assert f"mlflow: sweep run {parent[0].info.run_id} in {uri}" in r.stdout


@pytest.mark.slow
def test_an_unusable_tracking_store_is_refused_before_training(cli, tmp_path):
    pytest.importorskip("mlflow")
    (tmp_path / "a_file").write_text("")
    run_dir = tmp_path / "run"
    r = cli(
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}",
        "trainer.steps=5",
        f"hydra.run.dir={run_dir}",
        *QUICK,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "logger.mlflow.tracking_uri" in r.stderr and "Traceback" not in r.stderr
    assert not run_dir.exists() or not any(Path(run_dir).iterdir())
