"""Small models for tests: each exercises one thing the optimizer stack must handle."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def local_latent_model(x, y=None, index=None, size=None):
    """Regression with a per-row local latent in a subsampled plate (``_pyro_subsample``)."""
    n = x.shape[0] if size is None else size
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", n, subsample=index):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(x @ w + z, sigma), obs=y)


def series_model(y, duration=None):
    """A random walk along a ``time`` plate: its guide's locs/scales are time series (DCT)."""
    T = y.shape[-1]
    level_scale = pyro.sample("level_scale", dist.LogNormal(-2.0, 1.0))
    obs_scale = pyro.sample("obs_scale", dist.LogNormal(-1.0, 1.0))
    with pyro.plate("time", T, dim=-1):
        step = pyro.sample("step", dist.Normal(0.0, level_scale))
    level = step.cumsum(-1)
    with pyro.plate("time_obs", T, dim=-1):
        pyro.sample("obs", dist.Normal(level, obs_scale), obs=y)


def make_series(T: int = 37, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(T, generator=g, dtype=torch.float64)).cumsum(0).to(dtype)


class NetRegression:
    """A network's weights (``net$$$...``) beside Bayesian latents: three kinds of params."""

    def __init__(self, data, hidden: int = 8):
        self.net = nn.Sequential(
            nn.Linear(data.train["x"].shape[-1], hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def __call__(self, x, y=None, index=None, size=None):
        n = x.shape[0] if size is None else size
        pyro.module("net", self.net)
        bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", n, subsample=index):
            pyro.sample("obs", dist.Normal(self.net(x).squeeze(-1) + bias, sigma), obs=y)

    def guide(self, x, y=None, index=None, size=None):
        """Its own guide (guide=model): point masses for the two latents."""
        pyro.sample("bias", dist.Delta(pyro.param("bias_map", torch.zeros(()))))
        sigma = pyro.param("sigma_map", torch.ones(()), constraint=dist.constraints.positive)
        pyro.sample("sigma", dist.Delta(sigma))


class LateParam:
    """Creates a second parameter only after ``start`` calls: lazily created params must work."""

    def __init__(self, data, start: int = 5):
        self.calls = 0
        self.start = start

    def __call__(self, x, y=None, index=None, size=None):
        self.calls += 1
        a = pyro.param("a", torch.zeros(()))
        mean = a + (pyro.param("b", torch.zeros(())) if self.calls > self.start else 0.0)
        with pyro.plate("data", x.shape[0] if size is None else size, subsample=index):
            pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)


def empty_guide(*args, **kwargs):
    pass


def make_empty_guide(model):
    """A guide factory (guide.name=toy_models:make_empty_guide) for models with no latents."""
    return empty_guide


class GoesNonFinite:
    """Two parameters, ``a`` and ``b``; on the calls listed in ``nan_loss_at`` the loss is NaN,
    and on those in ``nan_grad_at`` only b's gradient is (sqrt at 0), the loss staying finite."""

    def __init__(self, data, nan_loss_at=(), nan_grad_at=()):
        self.calls = 0
        self.nan_loss_at = set(nan_loss_at)
        self.nan_grad_at = set(nan_grad_at)

    def __call__(self, x, y=None, index=None, size=None):
        self.calls += 1
        a = pyro.param("a", torch.zeros(()))
        b = pyro.param("b", torch.ones(()))
        mean = a + b
        if self.calls in self.nan_loss_at:
            mean = mean * float("nan")
        if self.calls in self.nan_grad_at:
            mean = mean + torch.sqrt(b * 0.0)
        with pyro.plate("data", x.shape[0] if size is None else size, subsample=index):
            pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)

    def guide(self, *args, **kwargs):
        """No latent variables (guide=model)."""


class BigParameter:
    """One 10M-element parameter (40 MB): writing its checkpoint takes a while."""

    def __init__(self, data, size: int = 10_000_000):
        self.size = size

    def __call__(self, x, y=None, index=None, size=None):
        w = pyro.param("w", torch.zeros(self.size))
        with pyro.plate("data", x.shape[0] if size is None else size, subsample=index):
            pyro.sample("obs", dist.Normal(w[:1].sum(), 1.0), obs=y)

    def guide(self, *args, **kwargs):
        """No latent variables (guide=model)."""


class ScriptedEval:
    """Linear regression whose ``evaluate`` returns the next value of ``script`` as ``score``
    (the last one again when the script runs out): a metric whose course a test decides."""

    def __init__(self, data, script=(1.0,)):
        self.features = data.train["x"].shape[-1]
        self.script = [float(v) for v in script]
        self.calls = 0

    def __call__(self, x, y=None, index=None, size=None):
        n = x.shape[0] if size is None else size
        w = pyro.sample("w", dist.Normal(torch.zeros(self.features), 1.0).to_event(1))
        with pyro.plate("data", n, subsample=index):
            pyro.sample("obs", dist.Normal(x @ w, 1.0), obs=y)

    def evaluate(self, guide, data, num_samples=100):
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"n": int(data.eval["x"].shape[0]), "score": value}
