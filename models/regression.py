"""Bayesian linear and logistic regression with a subsampled data plate."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
from pyro.infer import Predictive


class Regression:
    """Bayesian linear (Normal noise) or logistic (Bernoulli) regression.

    ``weight ~ Normal(0, prior_scale)`` per feature, ``bias ~ Normal(0, 10 prior_scale)``, and for
    linear regression ``sigma ~ HalfNormal(1)``. The data plate is subsampled by the minibatch
    indices, so the likelihood is scaled by ``size / batch`` and the ELBO is unbiased.
    """

    def __init__(self, data, kind: str = "linear", prior_scale: float = 1.0):
        if kind not in ("linear", "logistic"):
            from pyrotrain.errors import PyrotrainError

            raise PyrotrainError(
                "unknown regression kind",
                key="model.kind",
                value=kind,
                choices=["linear", "logistic"],
            )
        self.kind = kind
        self.prior_scale = prior_scale
        self.features = data.train["x"].shape[-1]

    def __call__(self, x, y=None, index=None, size=None):
        n = x.shape[0] if size is None else size
        zero = x.new_zeros(())
        weight = pyro.sample(
            "weight", dist.Normal(zero, self.prior_scale).expand([self.features]).to_event(1)
        )
        bias = pyro.sample("bias", dist.Normal(zero, 10 * self.prior_scale))
        if self.kind == "linear":
            sigma = pyro.sample("sigma", dist.HalfNormal(zero + 1))
        with pyro.plate("data", n, subsample=index):
            # Broadcasts over vectorized particles, whose weight has shape (particles, 1, features).
            mean = (x * weight).sum(-1) + bias
            if self.kind == "linear":
                return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
            return pyro.sample("obs", dist.Bernoulli(logits=mean), obs=y)

    def evaluate(self, guide, data, num_samples: int = 100) -> dict:
        """Posterior predictive fit on the held-out rows: lppd, and rmse or accuracy."""
        x, y = data.eval["x"], data.eval["y"]
        sites = ["weight", "bias"] + (["sigma"] if self.kind == "linear" else [])
        samples = Predictive(self, guide=guide, num_samples=num_samples, return_sites=sites)(x)
        weight = samples["weight"].reshape(num_samples, self.features)
        mean = weight @ x.T + samples["bias"].reshape(num_samples, 1)
        if self.kind == "linear":
            sigma = samples["sigma"].reshape(num_samples, 1)
            log_lik = dist.Normal(mean, sigma).log_prob(y)
            rmse = (mean.mean(0) - y).pow(2).mean().sqrt()
            extra = {"rmse": rmse.item()}
        else:
            log_lik = dist.Bernoulli(logits=mean).log_prob(y)
            accuracy = ((mean.sigmoid().mean(0) > 0.5).to(y.dtype) == y).to(y.dtype).mean()
            extra = {"accuracy": accuracy.item()}
        # log pointwise predictive density, averaged over held-out rows
        lppd = (log_lik.logsumexp(0) - math.log(num_samples)).mean()
        return {"n": int(x.shape[0]), "lppd": lppd.item(), **extra}
