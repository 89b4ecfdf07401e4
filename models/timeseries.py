"""A structural time-series model (level, trend, seasonality) and the Mauna Loa CO2 series."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.ops.stats import crps_empirical

from pyrotrain.data import Dataset, load_csv
from pyrotrain.errors import PyrotrainError

CO2_CSV = Path(__file__).parent / "data" / "co2_mauna_loa_monthly.csv"
COEF_SCALE = 10.0  # prior std of the trend and season coefficients around least squares (%)


def load_co2(eval_fraction: float = 0.1):
    """Monthly mean CO2 at Mauna Loa, March 1958 - December 2001 (526 months, ppm).

    ``y`` is the CO2 concentration and ``t`` the time in decimal years (mid-month), in time
    order: the first ``1 - eval_fraction`` of the months are for training and the rest are held
    out for a forecast. ``x`` has no columns (there are no covariates). Source: see
    ``models/data/SOURCES.md``.
    """
    data = load_csv(
        str(CO2_CSV),
        target="co2",
        features=[],
        time="time",
        dtype="float64",
        eval_fraction=eval_fraction,
    )
    data.info.update(
        source="Mauna Loa CO2, Keeling & Whorf (Scripps/CDIAC), monthly means of weekly data",
        units="ppm",
        period=12,
    )
    return data


def _shift(x: torch.Tensor) -> torch.Tensor:
    """``x`` moved one step later along the last dim, with 0 first: x_{t-1} at position t."""
    return torch.cat([torch.zeros_like(x[..., :1]), x[..., :-1]], -1)


class TimeSeries:
    """A structural time-series model: polynomial trend + Fourier seasonality + an AR(1) process.

    On the series in percent of its standard deviation, ``z_t = 100 (y_t - m) / s`` (``m``,
    ``s``: the training mean and std), with ``u_t = t / T`` (the fraction of the ``T`` training
    steps) and ``P`` the season's period::

        z_t      ~ N(trend_t + season_t + ar_t, obs_scale)
        trend_t  = sum_{d=0..D} c_d u_t^d
        season_t = sum_{k=1..K} a_k cos(2 pi k t / P) + b_k sin(2 pi k t / P)
        coef     = (c, a, b) = coef_ls + coef_offset,   coef_offset ~ N(0, 10^2 I)
        ar_t     ~ N(phi ar_{t-1}, ar_scale sqrt(1 - phi^2)),   ar_0 ~ N(0, ar_scale)
        phi ~ Uniform(0, 1),   ar_scale ~ LogNormal(1, 1.5),   obs_scale ~ LogNormal(0, 2)

    (Percent units put every latent's scale near 1, where autoguides start: ``init_to_feasible``
    starts both scales at 1% of the series' spread and the ``ar`` guide at +-0.1%.)

    ``ar_scale`` is the AR process's stationary standard deviation, so short-term variation
    stays in ``ar`` and the long-run movement in the trend, which keeps forecasts sane.

    ``ar`` is the latent process in the ``time`` plate, each step its own latent (a centred
    parametrisation, which a mean-field guide fits well): its site has a flat density and the
    AR(1) chain's joint density enters as a ``pyro.factor``. Its guide parameters live in the
    ``time`` plate too, so ``optim=dct_adam`` updates them in the frequency domain.

    The trend and season coefficients have a prior centred on ``coef_ls``, their least-squares
    fit to the training series (an empirical-Bayes prior: its std, 10% of the series' spread, is
    far wider than their posterior, yet keeps them from wandering off with ``ar``), and are
    sampled as their offset from it, so that every autoguide starts from a fitted trend and
    season instead of letting ``ar`` soak them up first.

    The whole series is every step's batch (set ``trainer.batch_size=null``), so the ELBO needs no
    scaling. :meth:`evaluate` forecasts the held-out steps: the trend and season extrapolated,
    the AR(1) process run forward from each posterior draw.

    :param period: season length in time steps (12 for monthly data); 0 for no seasonality;
        None: the data's (``info["period"]``: inferred from the spacing of a date column).
    :param harmonics: Fourier (cos, sin) pairs ``K`` in the seasonal term, at most ``period // 2``;
        None: 3, or ``period // 2`` when that is smaller.
    :param degree: degree ``D`` of the polynomial trend (0: a constant level, 1: linear, 2: ...).
    """

    def __init__(
        self, data, period: int | None = None, harmonics: int | None = None, degree: int = 2
    ):
        if "t" not in data.train:
            raise PyrotrainError(
                "a time series has an order: the time-series model needs the rows in time "
                "order, and this data has no time column",
                key="data.time",
                value=None,
                hint="Name the column that holds each row's time or date, e.g. data.time=month",
            )
        if period is None:
            period = data.info.get("period")
            if period is None:
                raise PyrotrainError(
                    "the season length cannot be inferred: the time column holds numbers, "
                    "not dates, or dates without a usual season",
                    key="model.period",
                    value=None,
                    hint="Set model.period to the steps in one season (12 for monthly data, 4 "
                    "quarterly, 7 daily, 52 weekly, 24 hourly), or 0 for none",
                )
        if period < 0 or period == 1:
            raise PyrotrainError(
                "the period must be 0 (none) or at least 2", key="model.period", value=period
            )
        if harmonics is None:
            harmonics = min(3, period // 2)
        if period and not 1 <= harmonics <= period // 2:
            raise PyrotrainError(
                f"harmonics must be between 1 and period // 2 = {period // 2}",
                key="model.harmonics",
                value=harmonics,
            )
        if not 0 <= degree <= 5:
            raise PyrotrainError(
                "the trend's degree must be 0 to 5", key="model.degree", value=degree
            )
        y = data.train["y"]
        if y.dim() != 1 or y.shape[0] < 2:
            raise PyrotrainError(
                f"the time-series model needs one series y, but y has shape {tuple(y.shape)}",
                key="data",
            )
        self.length = y.shape[0]
        self.center = float(y.mean())
        self.spread = float(y.std()) / 100  # z is in percent of the std
        self.period = period
        self.harmonics = harmonics if period else 0
        self.degree = degree
        # Least squares, with a tiny ridge so that it is always defined.
        x = self.design(0, self.length).double()
        z = ((y - self.center) / self.spread).double()
        gram = x.T @ x + 1e-6 * torch.eye(x.shape[-1], dtype=x.dtype)
        self.coef_ls = torch.linalg.solve(gram, x.T @ z).to(y.dtype)

    def design(self, start: int, length: int) -> torch.Tensor:
        """Trend powers and seasonal cos/sin of steps ``start .. start + length - 1``."""
        steps = torch.arange(start, start + length, dtype=torch.get_default_dtype())
        columns = [(steps / self.length)[:, None] ** torch.arange(self.degree + 1)]
        if self.harmonics:
            k = torch.arange(1, self.harmonics + 1, dtype=steps.dtype)
            angle = 2 * math.pi * steps[:, None] * k / self.period
            columns += [angle.cos(), angle.sin()]
        return torch.cat(columns, -1)

    def _globals(self) -> dict:
        zero = torch.zeros(())
        offset = pyro.sample(
            "coef_offset", dist.Normal(torch.zeros_like(self.coef_ls), COEF_SCALE).to_event(1)
        )
        g = {"coef": self.coef_ls + offset}
        g["phi"] = pyro.sample("phi", dist.Uniform(zero, 1.0))
        g["ar_scale"] = pyro.sample("ar_scale", dist.LogNormal(zero + 1, 1.5))
        g["obs_scale"] = pyro.sample("obs_scale", dist.LogNormal(zero, 2.0))
        return g

    def __call__(self, y, index=None, size=None):
        T = y.shape[-1]
        if index is not None and (
            index.shape[0] != (size or T) or not torch.equal(index, torch.arange(T))
        ):
            raise PyrotrainError(
                "the time-series model needs the whole series, in order, every step",
                key="trainer.batch_size",
                value=index.shape[0],
                hint="Set trainer.batch_size=null",
            )
        g = self._globals()
        # Global values broadcast against the time dim (and leading particle dims, if any).
        phi, ar_scale = g["phi"], g["ar_scale"]
        first = torch.arange(T) == 0
        with pyro.plate("time", T, dim=-1):
            # A flat site (its density is masked out); the factor gives the AR(1) chain's density.
            ar = pyro.sample("ar", dist.Normal(torch.zeros(()), 1.0).mask(False))
            loc = phi * _shift(ar)
            scale = torch.where(first, ar_scale, ar_scale * (1 - phi**2).clamp_min(1e-6).sqrt())
            pyro.factor("ar_chain", dist.Normal(loc, scale).log_prob(ar))
            z = (y - self.center) / self.spread
            mean = (self.design(0, T) * g["coef"]).sum(-1) + ar
            pyro.sample("obs", dist.Normal(mean, g["obs_scale"]), obs=z)

    def _posterior(self, guide, y: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        """``num_samples`` guide draws of the globals (one row each) and of ``ar`` (S, T)."""
        T = y.shape[0]
        traces = [
            poutine.trace(guide).get_trace(y=y, index=torch.arange(T), size=T)
            for _ in range(num_samples)
        ]
        g = {
            k: torch.stack([tr.nodes[k]["value"].reshape(-1) for tr in traces])
            for k in ("coef_offset", "phi", "ar_scale", "obs_scale", "ar")
        }
        return {k: v if k in ("coef_offset", "ar") else v[:, 0] for k, v in g.items()}

    def forecast(self, guide, data, horizon: int, num_samples: int = 100) -> torch.Tensor:
        """Posterior predictive samples ``(num_samples, horizon)`` of the ``horizon`` steps after
        the training series ``data.train["y"]`` and the steps of ``data.eval["y"]`` that follow it.

        Each posterior draw's trend and season are extrapolated and its AR(1) process run forward
        from its last training value. Observed steps after training (the held-out tail) are
        filtered in (a scalar Kalman filter per draw: the model is linear and Gaussian given the
        globals), so the forecast starts from the end of all the data, without retraining.
        """
        y = data.train["y"]
        seen = data.eval.get("y", y[:0])
        T, K = y.shape[0], seen.shape[0]
        g = self._posterior(guide, y, num_samples)
        coef = self.coef_ls + g["coef_offset"]  # (S, coefficients)
        phi, obs_var = g["phi"], g["obs_scale"] ** 2
        step_scale = g["ar_scale"] * (1 - phi**2).clamp_min(1e-6).sqrt()
        mean, var = g["ar"][:, -1], torch.zeros(num_samples)
        if K:
            base = coef @ self.design(T, K).T  # (S, K)
            z_seen = (seen - self.center) / self.spread
            for k in range(K):
                mean, var = phi * mean, phi**2 * var + step_scale**2
                gain = var / (var + obs_var)
                mean = mean + gain * (z_seen[k] - base[:, k] - mean)
                var = (1 - gain) * var
        ar, path = mean + var.sqrt() * torch.randn(num_samples), []
        for _ in range(horizon):
            ar = phi * ar + step_scale * torch.randn(num_samples)
            path.append(ar)
        z = coef @ self.design(T + K, horizon).T + torch.stack(path, -1)
        z = z + g["obs_scale"][:, None] * torch.randn(num_samples, horizon)
        return self.center + self.spread * z

    def predict(self, guide, rows: dict, num_samples: int = 100) -> torch.Tensor:
        """In-sample posterior predictive ``(num_samples, T)`` of the training series ``rows["y"]``,
        in the series' units (the model observes it in percent of its std)."""
        from pyro.infer import Predictive

        y = rows["y"]
        T = y.shape[0]
        if T != self.length:
            raise PyrotrainError(
                f"the model was trained on {self.length} steps and can predict those (or "
                f"forecast after them), not {T} other rows",
                key="--split",
                hint="Use the held-out split (the default) or --horizon",
            )
        predictive = Predictive(
            poutine.uncondition(self), guide=guide, num_samples=num_samples, return_sites=["obs"]
        )
        z = predictive(y, index=torch.arange(T), size=T)["obs"].reshape(num_samples, T)
        return self.center + self.spread * z

    def evaluate(self, guide, data, num_samples: int = 100) -> dict:
        """Forecast the held-out steps: MAE of the median, CRPS, and naive forecasts' MAE."""
        y, future = data.train["y"], data.eval["y"]
        T, H = y.shape[0], future.shape[0]
        forecast = self.forecast(guide, Dataset(data.train), H, num_samples)  # (S, H)
        mae = (forecast.median(0).values - future).abs().mean()
        crps = crps_empirical(forecast, future).mean()
        out = {
            "horizon": int(H),
            "mae": mae.item(),
            "crps": crps.item(),
            "naive_mae": (y[-1] - future).abs().mean().item(),
        }
        if self.period and T >= self.period:
            # The same step of the last season, repeated for longer horizons.
            seasonal = y[T - self.period :][torch.arange(H) % self.period]
            out["seasonal_naive_mae"] = (seasonal - future).abs().mean().item()
        return out
