"""Compatibility: checkpoints written before the architecture change still load and resume
exactly; the library APIs our shims (``pyrotrain/_compat_*.py``) rely on still behave."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pyro
import pytest
import torch

from pyrotrain.api import compose
from pyrotrain.loop import train

FIXTURE = Path(__file__).parent / "data" / "pre_refactor"
BASE = [
    "trainer.progress=none",
    "trainer.checkpoint_every=5",
    "trainer.batch_size=50",
    "optim=multi",
    "scheduler=step",
    "scheduler.step_size=5",
    "scheduler.gamma=0.5",
]


def test_a_checkpoint_from_before_the_split_resumes_to_the_same_parameters(tmp_path):
    first = tmp_path / "first" / "checkpoints"
    first.mkdir(parents=True)
    shutil.copy(FIXTURE / "step-00000010.pt", first)
    summary = train(
        compose([*BASE, "trainer.steps=20", f"trainer.resume={tmp_path / 'first'}"]),
        tmp_path / "second",
    )
    assert summary["resumed_from_step"] == 10
    resumed = torch.load(tmp_path / "second" / "params.pt", weights_only=False)["params"]
    straight = torch.load(FIXTURE / "straight-20-params.pt", weights_only=False)["params"]
    assert sorted(resumed) == sorted(straight)
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    assert len(pyro.get_param_store().keys()) == len(straight)


def test_optuna_trial_can_still_be_attached_from_another_process_by_storage_id(tmp_path):
    """``_compat_optuna.running_trial``: Optuna's Trial(study, trial_id), which it does not
    recommend, finds the trial another study object asked for, reports to it and asks the
    pruner."""
    optuna = pytest.importorskip("optuna")
    from pyrotrain import search
    from pyrotrain._compat_optuna import running_trial

    parameters = list(inspect.signature(optuna.trial.Trial).parameters)
    assert parameters == ["study", "trial_id"], parameters
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweeper = optuna.create_study(study_name="s", storage=search.open_storage(url))
    asked = sweeper.ask()
    asked.suggest_float("lr", 0.01, 0.1, log=True)
    storage = search.open_storage(url)
    trial_id = search.trial_id(storage, "s", asked.number)
    job_study = optuna.load_study(
        study_name="s", storage=storage, pruner=optuna.pruners.ThresholdPruner(upper=1.0)
    )
    trial = running_trial(job_study, trial_id)
    assert isinstance(trial, optuna.trial.Trial) and trial.number == asked.number
    assert trial.params == asked.params
    trial.report(0.5, 3)
    assert not trial.should_prune()
    trial.report(2.0, 4)
    assert trial.should_prune()
    (frozen,) = optuna.load_study(study_name="s", storage=url).get_trials()
    assert frozen.intermediate_values == {3: 0.5, 4: 2.0}
