"""Every file in conf/ composes and builds; the Python API runs a job from a DictConfig."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch
from helpers import SMALL_CSV, TESTS, metrics_rows, run_summary

import pyrotrain
from pyrotrain.build import build
from pyrotrain.errors import PyrotrainError

CONF = Path(pyrotrain.__file__).parent.parent / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
# Options that need more than their own file to run.
EXTRA = {
    ("model", "custom"): ["model.target=toy_models:NetRegression", "+model.hidden=4"],
    ("data", "csv"): [f"data.path={SMALL_CSV}", "data.target=y"],
    ("guide", "model"): ["model=custom", "model.target=toy_models:NetRegression"],
    ("data", "python"): [
        "model=custom",
        f"model.target={TESTS}/user_scripts/coin.py:model",
        f"data.target={TESTS}/user_scripts/coin.py:make_data",
    ],
    ("guide", "custom"): ["guide.target=pyro.infer.autoguide:AutoDelta"],
}


def test_conf_tree_has_every_group():
    assert {
        "model",
        "data",
        "optim",
        "scheduler",
        "distributed",
        "trainer",
        "guide",
        "elbo",
    } <= set(GROUPS)


def test_every_guide_and_elbo_that_pyrotrain_list_offers_is_a_config_option():
    import pyrotrain.conf
    from pyrotrain.registry import ELBOS, GUIDES

    conf = Path(pyrotrain.conf.__file__).parent
    for group, registry in (("guide", GUIDES), ("elbo", ELBOS)):
        options = {p.stem for p in (conf / group).glob("*.yaml")}
        assert set(registry.names()) <= options, (group, set(registry.names()) - options)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_option_composes_builds_and_steps(group, option):
    overrides = [
        f"{group}={option}",
        *EXTRA.get((group, option), []),
        "trainer.steps=3",
        "trainer.progress=none",
        "trainer.eval_num_samples=5",
    ]
    cfg = pyrotrain.compose(overrides)
    run = build(cfg)
    assert run.stack.total_steps == 3
    summary = pyrotrain.train(cfg)
    assert summary["steps"] == 3
    assert torch.isfinite(torch.tensor(summary["final_loss"]))


def test_python_api_trains_writes_and_returns_summary(tmp_path):
    cfg = pyrotrain.compose(["trainer.steps=20", "trainer.progress=none"])
    summary = pyrotrain.train(cfg, run_dir=tmp_path)
    assert summary["steps"] == 20
    assert run_summary(tmp_path)["steps"] == 20
    assert len(metrics_rows(tmp_path)) == 2
    # The trained parameters stay in Pyro's param store for the caller.
    assert "AutoNormal.locs.weight" in pyro.get_param_store().keys()


def test_python_api_without_run_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyrotrain.train(pyrotrain.compose(["trainer.steps=2", "trainer.progress=none"]))
    assert list(tmp_path.iterdir()) == []


def test_epochs_override_steps_and_float64():
    cfg = pyrotrain.compose(
        [
            "trainer.epochs=2",
            "trainer.batch_size=100",
            "trainer.dtype=float64",
            "trainer.progress=none",
        ]
    )
    summary = pyrotrain.train(cfg)
    assert summary["steps"] == 2 * 4  # 354 training rows in batches of 100
    assert pyro.param("AutoNormal.locs.weight").dtype == torch.float64
    assert torch.get_default_dtype() == torch.float32  # restored after the run


@pytest.mark.parametrize("elbo", ["trace_meanfield", "jit_trace", "renyi"])
def test_elbos_with_particles(elbo):
    cfg = pyrotrain.compose(
        [f"elbo={elbo}", "elbo.num_particles=2", "trainer.steps=4", "trainer.progress=none"]
    )
    assert torch.isfinite(torch.tensor(pyrotrain.train(cfg)["final_loss"]))


def test_vectorized_particles():
    cfg = pyrotrain.compose(
        [
            "elbo.num_particles=4",
            "elbo.vectorize_particles=true",
            "+elbo.max_plate_nesting=1",
            "trainer.steps=4",
            "trainer.progress=none",
        ]
    )
    assert torch.isfinite(torch.tensor(pyrotrain.train(cfg)["final_loss"]))


def test_unknown_top_level_and_trainer_keys_are_rejected():
    cfg = pyrotrain.compose(["+trainer.stepz=3"])
    with pytest.raises(PyrotrainError, match="trainer.stepz"):
        build(cfg)
    cfg = pyrotrain.compose(["+guide.init_scal=0.1"])
    with pytest.raises(PyrotrainError, match="init_scal.*Valid choices: .*init_scale"):
        build(cfg)
