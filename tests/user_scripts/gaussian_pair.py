"""A class with model and guide methods: the mean and noise of some measurements."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


class Measurements:
    def __init__(self, prior_scale=10.0):
        self.prior_scale = prior_scale

    def model(self, data):
        mu = pyro.sample("mu", dist.Normal(0.0, self.prior_scale))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, sigma), obs=data)

    def guide(self, data):
        loc = pyro.param("mu_loc", torch.tensor(0.0))
        scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))
        s_loc = pyro.param("sigma_loc", torch.tensor(0.0))
        pyro.sample("sigma", dist.LogNormal(s_loc, 0.1))


measurements = torch.tensor([2.1, 1.7, 2.6, 2.2, 1.9, 2.4, 2.0, 2.3])
