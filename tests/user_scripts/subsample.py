"""Logistic regression that subsamples inside its own plate, with a hand-written guide."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", len(x), subsample_size=25) as ind:
        pyro.sample("obs", dist.Bernoulli(logits=x[ind] @ w), obs=y[ind])


def guide(x, y):
    loc = pyro.param("w_loc", torch.zeros(x.shape[1]))
    scale = pyro.param("w_scale", torch.ones(x.shape[1]), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))


def make_data(rows=200):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 3, generator=g)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.5, -1.0, 0.5])), generator=g)
    return {"x": x, "y": y}
