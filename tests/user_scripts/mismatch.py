"""A guide for coin.py's model that names its latent site wrongly (a typo)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def guide(data):
    a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
    pyro.sample("latent_fairnes", dist.Beta(a, 2.0))
