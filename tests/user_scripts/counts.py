"""A 2-D count matrix (documents x words): Poisson rates with a Gamma prior per word."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def model(counts, prior_rate=1.0):
    docs, words = counts.shape
    with pyro.plate("words", words):
        rate = pyro.sample("rate", dist.Gamma(2.0, prior_rate))
    with pyro.plate("docs", docs, dim=-2):
        pyro.sample("obs", dist.Poisson(rate), obs=counts)


def guide(counts, prior_rate=1.0):
    words = counts.shape[1]
    a = pyro.param("a", torch.full((words,), 2.0), constraint=constraints.positive)
    b = pyro.param("b", torch.ones(words), constraint=constraints.positive)
    with pyro.plate("words", words):
        pyro.sample("rate", dist.Gamma(a, b))


def make_counts(docs=30, words=7):
    g = torch.Generator().manual_seed(4)
    rates = torch.linspace(0.5, 4.0, words)
    return {"counts": torch.poisson(rates.expand(docs, words), generator=g), "prior_rate": 0.5}
