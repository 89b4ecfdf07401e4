"""Checkpoints written before the architecture change still load and resume exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyro
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
