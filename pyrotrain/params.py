"""The Pyro param store as training, resume and ``pyrotrain-predict`` use it: which parameters a
step touches (:class:`CollectParams`), creating a run's parameters as its first step does
(:func:`create_params`), and copying saved values into them (:func:`load_param_values`).
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.poutine.messenger import Messenger

from .errors import PyrotrainError
from .optim.rows import TouchedRows


class CollectParams(Messenger):
    """The unconstrained tensor of every ``pyro.param`` a step touches: what ``SVI.step`` gets
    from ``poutine.trace(param_only=True)``, without building a trace (a dict copy per access).

    As in a trace, the last value seen under a name wins: a PyroModule setting up its parameters
    replaces the store's first tensor for a name with an ``nn.Parameter``. ``rows`` notes the
    rows of each parameter that subsampled plates took (for sparse groups).
    """

    def __enter__(self) -> CollectParams:
        self._values: dict[str, torch.Tensor] = {}
        self.rows = TouchedRows()
        return super().__enter__()

    def _pyro_post_param(self, msg: dict) -> None:
        self._values[msg["name"]] = msg["value"]
        # A plate inside this messenger subsamples the value after this point; the message's
        # continuation runs after every messenger, and sees the rows it took.
        then = msg["continuation"]

        def record(msg: dict) -> None:
            if then is not None:
                then(msg)
            self.rows.record(msg)

        msg["continuation"] = record

    @property
    def params(self) -> set[torch.Tensor]:
        # the param store's constrained values carry their unconstrained tensor (set by Pyro)
        return {v.unconstrained() for v in self._values.values()}  # type: ignore[attr-defined]


def create_params(run: Any, batch: Any) -> set[torch.Tensor]:
    """Create the run's parameters as a fresh run's first step does, and return them.

    Models and guides create their parameters lazily (autoguides drawing random numbers as they
    do, ``pyro.module`` registering the module's own tensors), so one ELBO evaluation on
    ``batch`` (the first minibatch as the model's arguments, a :class:`pyrotrain.calls.Call` from
    :func:`pyrotrain.loop.batch_of`)
    creates them; saved values are then copied into those very tensors.
    """
    with CollectParams() as capture, torch.no_grad():
        batch.apply(run.elbo.loss, run.model, run.guide)
    return capture.params


def load_param_values(saved: dict[str, Any], key: str, source: str | None) -> None:
    """Copy a saved param store state (``get_state()``) into the current store's tensors; names
    the store does not hold yet are added. A shape that differs is a PyrotrainError on ``key``."""
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    with torch.no_grad():
        for name, value in saved["params"].items():
            if name in current:
                if current[name].shape != value.shape:
                    raise PyrotrainError(
                        f"parameter '{name}' has shape {tuple(current[name].shape)} in this "
                        f"run and {tuple(value.shape)} in {source}",
                        key=key,
                        value=source,
                    )
                current[name].copy_(value)
    later = {n: v for n, v in saved["params"].items() if n not in current}
    if later:  # created after the first step in the saved run: they come from the store
        store.set_state(
            {"params": later, "constraints": {n: saved["constraints"][n] for n in later}}
        )
