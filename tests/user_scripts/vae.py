"""A small VAE: an amortized guide whose encoder is registered with pyro.module."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 6))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.loc = nn.Linear(16, 2)
        self.scale = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3


encoder = Encoder()


def model(x):
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, scale = encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def make_data(rows=64):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(rows, 2, generator=g)
    return torch.cat([z, z**2, z.sum(-1, keepdim=True), z[:, :1] * 2], -1)
