"""A variational autoencoder on the 8x8 digits: network weights beside Bayesian latents."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyrotrain.data import sklearn_data_file, split
from pyrotrain.errors import PyrotrainError

PIXELS = 64
LEVELS = 16  # pixel values are counts 0..16


def load_digits(eval_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's bundled digits: 1797 8x8 images, ``x`` the 64 pixel counts 0..16.

    ``y`` is the digit (int64). Read from scikit-learn's data file without importing it (slow).
    Source: the UCI "Optical Recognition of Handwritten Digits" data set (Alpaydin & Kaynak).
    """
    table = np.loadtxt(sklearn_data_file("digits.csv.gz"), delimiter=",")
    x = torch.as_tensor(table[:, :PIXELS])
    y = torch.as_tensor(table[:, PIXELS].astype(np.int64))
    info = {"source": "scikit-learn digits (UCI optdigits)", "pixels": PIXELS, "levels": LEVELS}
    return split({"x": x, "y": y}, eval_fraction, seed, info)


class Encoder(nn.Module):
    """x -> (loc, scale) of q(z | x): an MLP on the pixel intensities."""

    def __init__(self, hidden: int, latent: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(PIXELS, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(x / LEVELS).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3


class DigitsVAE:
    """A VAE whose decoder's output bias is Bayesian: network weights and latents together.

    For image ``n`` with pixel counts ``x_n`` in 0..16::

        z_n ~ N(0, I_latent)                                   (local, amortised)
        b   ~ N(0, 3^2 I_64)                                   (global pixel bias)
        x_nj ~ Binomial(16, sigmoid(decoder(z_n)_j + b_j))     for the 64 pixels j

    ``decoder`` is an MLP (``pyro.module("decoder")``), fitted by maximum likelihood as in any
    VAE. The guide (``guide=model``) is ``q(z_n | x_n) = N(encoder(x_n))`` with an amortised MLP
    encoder (``pyro.module("encoder")``) and an AutoNormal for ``b``: so the network weights, the
    variational locs and the variational scales are three kinds of parameters (``optim=multi``
    gives each its optimizer). The images are a ``data`` plate subsampled by the minibatch, with
    the same plate in the guide, so ``z``'s terms and the likelihood are scaled by ``N / B``.
    :meth:`evaluate` reports held-out ELBO and importance-weighted bounds per image, in nats,
    against independent per-pixel Binomials fitted to the training images.

    :param latent: dimension of ``z``.
    :param hidden: width of the encoder's and decoder's hidden layer.
    """

    parallel_predict = True  # pyrotrain-predict may draw all samples at once (vectorized)

    target = "x"  # what the observation site observes (pyrotrain-predict): the images

    def __init__(self, data, latent: int = 8, hidden: int = 128):
        x = data.train.get("x")
        if x is None or x.dim() != 2 or x.shape[-1] != PIXELS:
            raise PyrotrainError(
                f"the neural model needs x with {PIXELS} pixel columns (8x8 images)",
                key="data",
                hint="Use data=digits",
            )
        for key, value in [("model.latent", latent), ("model.hidden", hidden)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PyrotrainError("must be a positive integer", key=key, value=value)
        self.latent = latent
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.Softplus(), nn.Linear(hidden, PIXELS, bias=False)
        )
        self.encoder = Encoder(hidden, latent)
        self.guide = VAEGuide(self)

    def __call__(self, x, index=None, size=None):
        n = x.shape[0] if size is None else size
        pyro.module("decoder", self.decoder)
        zero = torch.zeros(())
        bias = pyro.sample("pixel_bias", dist.Normal(zero, 3.0).expand([PIXELS]).to_event(1))
        with pyro.plate("data", n, subsample=index, dim=-1):
            z = pyro.sample("z", dist.Normal(zero, 1.0).expand([self.latent]).to_event(1))
            if z.shape[-2] != x.shape[-2]:
                raise PyrotrainError(
                    "the neural model's latent codes follow the minibatch, which autoguides "
                    "cannot do",
                    key="guide",
                    hint="Use guide=model (its config's default)",
                )
            logits = self.decoder(z) + bias
            return pyro.sample("obs", dist.Binomial(LEVELS, logits=logits).to_event(1), obs=x)

    def evaluate(self, guide, data, num_samples: int = 100) -> dict:
        """Held-out ELBO and IWAE bound per image (nats), and a per-pixel Binomial baseline."""
        x, x_train = data.eval["x"], data.train["x"]
        n = x.shape[0]
        rows = torch.arange(n)
        log_ws = []
        for _ in range(num_samples):
            g = poutine.trace(guide).get_trace(x, index=rows, size=n)
            m = poutine.trace(poutine.replay(self, trace=g)).get_trace(x, index=rows, size=n)
            # One importance weight per image (b drawn from its posterior: the predictive).
            log_ws.append(_log_prob(m, "obs") + _log_prob(m, "z") - _log_prob(g, "z"))
        log_w = torch.stack(log_ws)  # (num_samples, n)
        iwae = log_w.logsumexp(0) - math.log(num_samples)
        p = (x_train.sum(0) + 0.5) / (LEVELS * x_train.shape[0] + 1)
        baseline = dist.Binomial(LEVELS, probs=p).log_prob(x).sum(-1)
        return {
            "n": int(n),
            "elbo_per_image": log_w.mean().item(),
            "iwae_per_image": iwae.mean().item(),
            "baseline_ll_per_image": baseline.mean().item(),
        }


def _log_prob(trace, name: str) -> torch.Tensor:
    site = trace.nodes[name]
    return site["fn"].log_prob(site["value"])


class VAEGuide:
    """q(b) q(z | x): an AutoNormal for the pixel bias, the amortised encoder for each z_n."""

    def __init__(self, model: DigitsVAE):
        self.model = model
        self.globals = AutoNormal(poutine.block(model, expose=["pixel_bias"]))

    def __call__(self, x, index=None, size=None):
        n = x.shape[0] if size is None else size
        self.globals(x, index=index, size=size)
        pyro.module("encoder", self.model.encoder)
        with pyro.plate("data", n, subsample=index, dim=-1):
            loc, scale = self.model.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
