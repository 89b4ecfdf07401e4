"""Evaluation during training, early stopping and checkpoints/best.pt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import QUICK, metrics_rows, same, saved_params

from pyrotrain.api import compose
from pyrotrain.build import build
from pyrotrain.checkpoint import load_checkpoint
from pyrotrain.errors import PyrotrainError
from pyrotrain.loop import train

SCRIPTED = [
    *QUICK,
    "model=custom",
    "model.target=toy_models:ScriptedEval",
    "trainer.log_every=2",
    "trainer.eval_every=2",
    "trainer.early_stopping.monitor=eval/score",
    "trainer.early_stopping.patience=2",
    "trainer.early_stopping.min_delta=0.05",
]
# Evaluations at steps 2, 4, 6, ...: better, better, best (6), too small a gain, worse: stop at 10.
SCRIPT = "+model.script=[5.0,4.0,3.0,2.97,3.5,1.0]"


def test_early_stopping_stops_where_the_metric_says(tmp_path):
    summary = train(compose([*SCRIPTED, SCRIPT, "trainer.steps=40"]), tmp_path / "run")
    assert summary["stopped_early_at"] == 10 and summary["steps"] == 10
    assert summary["best"] == {"monitor": "eval/score", "value": 3.0, "step": 6}
    rows = metrics_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    assert [r["eval/score"] for r in rows] == [5.0, 4.0, 3.0, 2.97, 3.5]
    assert "eval/n" not in rows[0]  # counts are not metrics
    assert (tmp_path / "run" / "checkpoints" / "step-00000010.pt").is_file()
    # best.pt holds the parameters of step 6: those of a run that ends there.
    train(compose([*SCRIPTED[:4], "trainer.steps=6"]), tmp_path / "six")
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["step"] == 6 and best["value"] == 3.0
    six = saved_params(tmp_path / "six")
    assert best["param_store"]["params"].keys() == six.keys()
    assert all(torch.equal(best["param_store"]["params"][k], six[k]) for k in six)


def test_max_mode_and_smoothed_loss_monitor(tmp_path):
    rule = ["trainer.early_stopping.mode=max", "+model.script=[1.0,2.0,1.5,1.2,9.0]"]
    summary = train(compose([*SCRIPTED, *rule, "trainer.steps=40"]), tmp_path / "max")
    assert summary["stopped_early_at"] == 8 and summary["best"]["step"] == 4
    # smoothed_loss is checked on every logging step; it falls steadily here, so no stop.
    summary = train(
        compose([*QUICK, "trainer.steps=30", "trainer.early_stopping.monitor=smoothed_loss"]),
        tmp_path / "loss",
    )
    assert summary["stopped_early_at"] is None
    assert summary["best"]["monitor"] == "smoothed_loss"
    assert (tmp_path / "loss" / "checkpoints" / "best.pt").is_file()


def test_early_stopping_resumes_exactly(tmp_path):
    """The monitor's history is in the checkpoint: interrupted and resumed, a run stops at the
    same step with the same parameters as one that ran straight."""
    base = [
        *QUICK,
        "trainer.eval_every=10",
        "trainer.log_every=10",
        "trainer.checkpoint_every=10",
        "trainer.eval_num_samples=20",
        "trainer.early_stopping.monitor=eval/rmse",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.min_delta=0.002",
        "optim.lr=0.003",
    ]
    straight = train(compose([*base, "trainer.steps=400"]), tmp_path / "straight")
    stop = straight["stopped_early_at"]
    assert stop is not None and 70 < stop < 400, straight
    train(compose([*base, "trainer.steps=70"]), tmp_path / "first")
    resumed = train(
        compose([*base, "trainer.steps=400", f"trainer.resume={tmp_path / 'first'}"]),
        tmp_path / "second",
    )
    assert resumed["stopped_early_at"] == stop and resumed["best"] == straight["best"]
    a, b = saved_params(tmp_path / "straight"), saved_params(tmp_path / "second")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"step-{stop:08d}.pt")
    cb = load_checkpoint(tmp_path / "second" / "checkpoints" / f"step-{stop:08d}.pt")
    assert ca["loop"] == cb["loop"] and same(ca["rng"], cb["rng"])
    # The monitor's state sits in the checkpoint's "loop" under the keys it always had there, so
    # checkpoints of earlier versions resume, and theirs read these.
    best = straight["best"]
    assert (ca["loop"]["best_value"], ca["loop"]["best_step"]) == (best["value"], best["step"])
    assert ca["loop"]["bad_checks"] == 2 and ca["loop"]["stopped_early_at"] == stop


def test_evaluation_during_training_changes_nothing_else(tmp_path):
    """Evaluating saves and restores the RNG: the parameters are those of a run without it."""
    train(compose([*QUICK, "trainer.steps=20"]), tmp_path / "plain")
    train(compose([*QUICK, "trainer.steps=20", "trainer.eval_every=5"]), tmp_path / "evals")
    a, b = saved_params(tmp_path / "plain"), saved_params(tmp_path / "evals")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = metrics_rows(tmp_path / "evals")
    assert [r["step"] for r in rows if "eval/rmse" in r] == [5, 10, 15, 20]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["trainer.early_stopping.monitor=eval/rmse"], "monitor.*needs|eval_every"),
        (["trainer.early_stopping.monitor=rmse"], "smoothed_loss or eval/METRIC"),
        (["trainer.objective=best"], "objective.*monitor"),
        (["trainer.early_stopping.mode=up"], "mode"),
        (["trainer.early_stopping.patience=0"], "patience"),
    ],
)
def test_bad_early_stopping_settings_are_refused(overrides, match):
    with pytest.raises(PyrotrainError, match=f"(?i){match}"):
        build(compose([*QUICK, *overrides]))


def test_a_metric_the_model_does_not_return_is_refused(tmp_path):
    cfg = compose([*QUICK, "trainer.eval_every=5", "trainer.early_stopping.monitor=eval/accuracy"])
    with pytest.raises(PyrotrainError, match="eval/accuracy.*Valid choices: eval/lppd, eval/rmse"):
        train(cfg, tmp_path / "run")


def test_eval_every_needs_an_evaluation(tmp_path):
    with pytest.raises(PyrotrainError, match="eval_every.*holds out no rows"):
        build(compose([*QUICK, "trainer.eval_every=5", "data.eval_fraction=0"]))


def test_best_pt_is_not_a_resume_point(tmp_path: Path):
    train(
        compose([*QUICK, "trainer.steps=10", "trainer.early_stopping.monitor=smoothed_loss"]),
        tmp_path / "run",
    )
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    with pytest.raises(PyrotrainError, match="best parameters only"):
        build(compose([*QUICK, "trainer.steps=20", f"trainer.resume={best}"]))


def test_objective_best_and_predict_from_best(tmp_path, capsys):
    from test_predict import predict, train_run

    from pyrotrain.evaluation import objective_value as objective

    run = tmp_path / "run"
    summary = train_run(
        run,
        "trainer.steps=20",
        "trainer.log_every=5",
        "trainer.early_stopping.monitor=smoothed_loss",
        "trainer.objective=best",
    )
    assert objective(summary, "best") == summary["best"]["value"]
    for which in ("best", "last"):
        code, out = predict(run, "--checkpoint", which, "--num-samples", 50, capsys=capsys)
        assert code == 0, out
    code, out = predict(run, "--checkpoint", tmp_path / "none.pt", capsys=capsys)
    assert code == 2 and "No such checkpoint file" in out
