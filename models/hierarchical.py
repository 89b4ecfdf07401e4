"""A hierarchical regression with one sample site per group: hundreds of small parameters."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyrotrain.data import split
from pyrotrain.errors import PyrotrainError


def make_grouped(
    groups: int = 100,
    rows: int = 3000,
    features: int = 1,
    noise: float = 1.0,
    eval_fraction: float = 0.2,
    seed: int = 0,
):
    """Synthetic grouped regression data: ``y = alpha_g + x beta_g + noise e`` for row's group g.

    Group sizes are log-normal (a few big groups, many with a handful of rows), so pooling
    matters. The truth, drawn with ``seed``: ``(alpha_g, beta_g) ~ N(mu, tau)`` with
    ``mu ~ N(0, 1)`` and ``tau = (1, 0.5, ...)``; ``x ~ N(0, 1)``. ``group`` is int64.
    """
    for key, value, least in [
        ("data.groups", groups, 1),
        ("data.rows", rows, 2),
        ("data.features", features, 0),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise PyrotrainError(f"must be an integer of at least {least}", key=key, value=value)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    mu = randn(features + 1)
    tau = torch.tensor([1.0] + [0.5] * features, dtype=torch.float64)
    theta = mu + tau * randn(groups, features + 1)
    weights = (1.0 * randn(groups)).exp()
    group = torch.multinomial(weights, rows, replacement=True, generator=g)
    x = randn(rows, features)
    y = theta[group, 0] + (x * theta[group, 1:]).sum(-1) + noise * randn(rows)
    info = {
        "source": "synthetic grouped regression",
        "groups": groups,
        "noise": noise,
        "true_mu": mu.tolist(),
    }
    return split({"group": group, "x": x, "y": y}, eval_fraction, seed, info)


class Hierarchical:
    """Hierarchical (partially pooled) linear regression, one latent sample site per group.

    For row ``n`` in group ``g_n`` with features ``x_n``::

        y_n     ~ N(theta_{g_n, 0} + x_n theta_{g_n, 1:}, sigma)
        theta_g = mu + tau * eta_g,        eta_g ~ N(0, I)   (site "theta_{g}", g = 0..G-1)
        mu ~ N(0, 5),   tau ~ LogNormal(-1, 1),   sigma ~ LogNormal(0, 1)   (per coefficient)

    The group offsets are non-centred (``theta_{g}`` samples the standardized ``eta_g``), which
    suits the many small groups. Each group is its own ``pyro.sample`` site, sampled in a Python
    loop, so an autoguide has two parameters per group and the optimizer hundreds of small
    tensors: per-parameter overhead shows. The rows are a ``data`` plate subsampled by the
    minibatch (the likelihood is scaled by ``N / B``); the group sites are global, so every step
    samples them all and the ELBO is unbiased. :meth:`evaluate` scores held-out rows against
    complete pooling (one regression) and no pooling (one per group).

    :param centered: sample ``theta_g ~ N(mu, tau)`` directly instead (suits big groups).
    """

    parallel_predict = True  # pyrotrain-predict may draw all samples at once (vectorized)

    def __init__(self, data, centered: bool = False):
        for name in ("group", "x", "y"):
            if name not in data.train:
                raise PyrotrainError(
                    f"the hierarchical model needs data with '{name}'",
                    key="data",
                    value=sorted(data.train),
                    hint="Use data=grouped, or a loader that yields group, x and y",
                )
        # Ids run from 0; without a count in info, the largest id seen anywhere sets it.
        every = torch.cat([data.train["group"], data.eval.get("group", data.train["group"][:0])])
        self.groups = int(data.info.get("groups", int(every.max()) + 1))
        self.coefs = data.train["x"].shape[-1] + 1
        self.centered = centered

    def _thetas(self, mu, tau) -> torch.Tensor:
        """One site per group; returns the (..., G, coefs) matrix of group coefficients."""
        if self.centered:
            prior = dist.Normal(mu, tau).to_event(1)
            theta = torch.stack([pyro.sample(f"theta_{g}", prior) for g in range(self.groups)], -2)
        else:
            prior = dist.Normal(torch.zeros(self.coefs), 1.0).to_event(1)
            eta = torch.stack([pyro.sample(f"theta_{g}", prior) for g in range(self.groups)], -2)
            theta = mu[..., None, :] + tau[..., None, :] * eta
        if theta.dim() > 2:
            # Vectorized particles: globals are (particles, 1, coefs), the 1 being the data
            # plate's dim; drop it so that indexing by group puts the rows there.
            theta = theta.squeeze(-3)
        return theta

    def __call__(self, group, x, y=None, index=None, size=None):
        n = group.shape[0] if size is None else size
        zero = torch.zeros(self.coefs)
        mu = pyro.sample("mu", dist.Normal(zero, 5.0).to_event(1))
        tau = pyro.sample("tau", dist.LogNormal(zero - 1, 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(torch.zeros(()), 1.0))
        theta = self._thetas(mu, tau)[..., group, :]  # (..., B, coefs)
        mean = theta[..., 0] + (x * theta[..., 1:]).sum(-1)
        with pyro.plate("data", n, subsample=index, dim=-1):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)

    def evaluate(self, guide, data, num_samples: int = 100) -> dict:
        """Held-out RMSE and log predictive density; the same for pooled and unpooled fits."""
        tr, ev = data.train, data.eval
        group, x, y = ev["group"], ev["x"], ev["y"]
        n_train = tr["y"].shape[0]
        means, log_liks = [], []
        for _ in range(num_samples):
            g = poutine.trace(guide).get_trace(
                tr["group"][:1], tr["x"][:1], y=tr["y"][:1], index=torch.arange(1), size=n_train
            )
            values = {k: s["value"] for k, s in g.nodes.items() if s["type"] == "sample"}
            mu, tau = values["mu"], values["tau"]
            eta = torch.stack([values[f"theta_{k}"] for k in range(self.groups)])
            theta = eta if self.centered else mu + tau * eta
            mean = theta[group, 0] + (x * theta[group, 1:]).sum(-1)
            means.append(mean)
            log_liks.append(dist.Normal(mean, values["sigma"]).log_prob(y))
        mean = torch.stack(means).mean(0)
        lppd = torch.stack(log_liks).logsumexp(0) - math.log(num_samples)
        out = {
            "n": int(y.shape[0]),
            "rmse": (mean - y).pow(2).mean().sqrt().item(),
            "lppd": lppd.mean().item(),
        }
        for name, ridge in [("pooled", None), ("unpooled", 1e-3)]:
            pred, sd = _least_squares(tr, ev, self.groups, ridge)
            out[f"{name}_rmse"] = (pred - y).pow(2).mean().sqrt().item()
            out[f"{name}_lppd"] = dist.Normal(pred, sd).log_prob(y).mean().item()
        return out


def _least_squares(train: dict, test: dict, groups: int, ridge: float | None):
    """Predictions of one least-squares fit (ridge None) or one per group (tiny ridge)."""

    def design(d):
        return torch.cat([torch.ones_like(d["y"])[:, None], d["x"]], -1)

    xt, yt, xe = design(train), train["y"], design(test)
    if ridge is None:
        coef = torch.linalg.lstsq(xt, yt[:, None]).solution[:, 0]
        resid = yt - xt @ coef
        return xe @ coef, resid.std()
    eye = torch.eye(xt.shape[-1])
    onehot = torch.nn.functional.one_hot(train["group"], groups).to(xt.dtype)  # (N, G)
    gram = torch.einsum("ng,ni,nj->gij", onehot, xt, xt) + ridge * eye
    coef = torch.linalg.solve(gram, torch.einsum("ng,ni,n->gi", onehot, xt, yt))  # (G, coefs)
    resid = yt - (xt * coef[train["group"]]).sum(-1)
    return (xe * coef[test["group"]]).sum(-1), resid.std()
