"""One RNG state (pyrotrain/rng.py) for checkpoints and evaluations: it round-trips every
generator a step draws from, and an evaluation leaves the training's draws as they were."""

from __future__ import annotations

import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import QUICK

import pyrotrain
from pyrotrain.build import build, torch_defaults
from pyrotrain.loop import Trainer
from pyrotrain.rng import get_rng_state, rng_kept, set_rng_state

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def draws(device: str = "cpu") -> list:
    """A draw from each generator: torch (on ``device``), numpy, python, and a Pyro sample."""
    return [
        torch.rand(4, device=device).tolist(),
        np.random.rand(4).tolist(),
        random.random(),
        pyro.sample("x", dist.Normal(torch.zeros(3, device=device), 1.0)).tolist(),
    ]


def test_the_state_round_trips_torch_numpy_python_and_pyro():
    pyro.set_rng_seed(3)
    state = get_rng_state()
    assert set(state) >= {"torch", "random", "numpy"}
    first = draws()
    assert draws() != first  # the generators moved on
    set_rng_state(state)
    assert draws() == first


def test_rng_kept_puts_every_generator_back_even_when_the_block_raises():
    pyro.set_rng_seed(4)
    state = get_rng_state()
    expected = draws()
    set_rng_state(state)
    with pytest.raises(RuntimeError), rng_kept():
        draws()
        raise RuntimeError("the evaluation failed")
    assert draws() == expected


def _trained(*overrides: str) -> Trainer:
    cfg = pyrotrain.compose(
        [*QUICK, "trainer.steps=5", "trainer.eval_num_samples=20", "trainer.objective=eval.rmse"]
        + list(overrides)
    )
    pyro.clear_param_store()
    trainer = Trainer(build(cfg))
    trainer.fit()
    return trainer


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_evaluation_leaves_the_training_rng_stream_untouched(device):
    """check_objective (after the first step) and during_training (eval_every) both draw from
    the run's seed; the training's next draws are those it would make without them."""
    trainer = _trained(f"trainer.device={device}")
    evaluation = trainer.evaluation
    with torch_defaults(trainer.run.dtype, trainer.run.device):
        pyro.set_rng_seed(11)
        expected = draws(device)
        pyro.set_rng_seed(11)
        evaluation.check_objective()
        assert draws(device) == expected
        pyro.set_rng_seed(11)
        assert "eval/rmse" in evaluation.during_training()
        assert draws(device) == expected
        pyro.set_rng_seed(11)
        evaluation.final()  # unguarded, the same evaluation moves the stream: the test can fail
        assert draws(device) != expected


@needs_cuda
def test_the_state_holds_and_restores_every_cuda_device():
    torch.rand(1, device="cuda")  # CUDA initialised: its generators are part of the state
    pyro.set_rng_seed(5)
    state = get_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = draws("cuda")
    set_rng_state(state)
    assert draws("cuda") == first
