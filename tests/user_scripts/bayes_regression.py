"""Bayesian linear regression as a PyroModule with constructor arguments (Pyro's tutorial style)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features=1):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def make_data(rows=200, features=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, features, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])[:features] + 0.3 + 0.1 * torch.randn(rows, generator=g)
    return x, y
