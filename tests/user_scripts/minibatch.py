"""Linear regression that scales its plate with size and index, for minibatches."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def model(x, y, size=None, index=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", size, subsample=index):
        pyro.sample("obs", dist.Normal(x @ w, 0.5), obs=y)


def guide(x, y, size=None, index=None):
    loc = pyro.param("w_loc", torch.zeros(x.shape[1]))
    scale = pyro.param("w_scale", torch.ones(x.shape[1]), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))


def make_data(rows=120):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(rows, 2, generator=g)
    return x, x @ torch.tensor([2.0, -1.0]) + 0.5 * torch.randn(rows, generator=g)
