"""Posterior predictive samples of the model's observation site for the input rows: Pyro's
``Predictive``, or the model's own ``predict`` / ``forecast``."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from ..errors import PyrotrainError
from .inputs import Rows


class _Unobserved(Messenger):
    """Sample the site ``name`` even where the model observes it (the posterior predictive of a
    model whose target is also its input, like an autoencoder's images)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name and msg["is_observed"]:
            msg["is_observed"] = False
            msg["value"] = None
            msg["done"] = False


def obs_site(model: Any) -> str:
    """The model's observation site: ``obs``, or the model's ``obs_site`` attribute."""
    return getattr(model, "obs_site", "obs")


def target_name(model: Any) -> str:
    """The data tensor the observation observes: ``y``, or the model's ``target`` attribute."""
    return getattr(model, "target", "y")


def _accepted(fn: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return tensors
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return tensors
    return {k: v for k, v in tensors.items() if k in params}


def predictive_samples(run: Any, rows: Rows, num_samples: int) -> torch.Tensor:
    """Samples ``(num_samples, rows, ...)`` of the observation for ``rows``."""
    model, guide = run.model, run.guide
    n = next(iter(rows.tensors.values())).shape[0]
    forecast = getattr(model, "forecast", None)
    if forecast is not None and rows.split == "eval":  # the held-out tail: forecast it
        return forecast(guide, _train_only(run), n, num_samples=num_samples)
    if hasattr(model, "predict"):
        return model.predict(guide, rows.tensors, num_samples=num_samples)
    from pyro.infer import Predictive

    site = obs_site(model)
    kwargs = _accepted(model, rows.tensors)
    # All draws at once in an outer plate, for a model that declares it broadcasts over one.
    parallel = bool(getattr(model, "parallel_predict", False))
    predictive = Predictive(
        _Unobserved(site)(model),
        guide=guide,
        num_samples=num_samples,
        return_sites=[site],
        parallel=parallel,
    )
    with torch.no_grad():
        samples = predictive(**kwargs)
    if site not in samples:
        raise PyrotrainError(
            f"the model has no sample site '{site}' to predict",
            key="model",
            value=run.config.model.name,
            hint="Name the observation site 'obs', or give the model an attribute "
            "obs_site = 'NAME'",
        )
    value = samples[site]
    while value.dim() > 2 and value.shape[1] == 1 and n != 1:  # a plate's leading singleton dim
        value = value.squeeze(1)
    if value.dim() < 2 or value.shape[1] != n:
        raise PyrotrainError(
            f"the observation site '{site}' has shape {tuple(value.shape[1:])} per draw, which "
            f"does not start with the {n} input rows",
            key="model",
            value=run.config.model.name,
            hint="Put the observation in a plate over the rows, or give the model a "
            "predict(guide, rows, num_samples) method",
        )
    return value


def unstandardize(t: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """Values of the target in the data's own units, where the run standardized it
    (``data.standardize``; ``info`` holds the training rows' mean and std)."""
    y = info.get("standardized", {}).get("y")
    if y is None:
        return t
    return t.to(torch.float64) * y["std"] + y["mean"]


def _train_only(run: Any) -> Any:
    from ..data import Dataset

    return Dataset(dict(run.data.train))
