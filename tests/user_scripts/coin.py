"""A coin's fairness, as in Pyro's SVI tutorial: model(data) and a pyro.param guide(data)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def make_data(heads=6, tails=4):
    return torch.cat([torch.ones(heads), torch.zeros(tails)])


if __name__ == "__main__":
    raise SystemExit("this block must not run when pyrotrain imports the file")
