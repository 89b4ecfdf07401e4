"""What a prediction writes: the statistics of the samples (mean, std, quantiles), the CSV table,
the scores against known targets, and forecast.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .inputs import labelled
from .sampling import unstandardize

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
BAND = (0.05, 0.95)  # the band forecast.png draws, whatever --quantiles says


def quantile_name(q: float) -> str:
    """0.05 -> q05, 0.5 -> q50, 0.975 -> q97.5."""
    pct = q * 100
    return f"q{round(pct):02d}" if abs(pct - round(pct)) < 1e-9 else f"q{pct:g}"


def summarize(samples: torch.Tensor, quantiles: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """Per row (and element): mean, std and the quantiles of ``samples`` (S, rows, ...)."""
    s = samples.to(torch.float64)
    out = {"mean": s.mean(0), "std": s.std(0) if s.shape[0] > 1 else torch.zeros_like(s[0])}
    qs = torch.quantile(s, torch.tensor(quantiles, dtype=s.dtype), dim=0)
    for q, values in zip(quantiles, qs, strict=True):
        out[quantile_name(q)] = values
    return out


def _cell(v: float) -> str:
    return f"{v:.6g}"


def table_text(
    label: str,
    labels: list[str],
    columns: dict[str, torch.Tensor],
    target: str | None = None,
    truth: torch.Tensor | None = None,
) -> str:
    """CSV text: the row label, the target when known, then the statistics; a row's vector
    observation gets one column per element (``mean_0``, ``mean_1``, ...)."""
    import csv
    import io

    named: dict[str, torch.Tensor] = {}
    if truth is not None and target is not None:
        named[target] = truth
    named.update(columns)
    header, data = [label], []
    for name, values in named.items():
        flat = values.reshape(values.shape[0], -1)
        if values.dim() == 1:
            header.append(name)
        else:
            header += [f"{name}_{j}" for j in range(flat.shape[1])]
        data.append(flat.tolist())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i, row_label in enumerate(labels):
        writer.writerow([row_label] + [_cell(v) for block in data for v in block[i]])
    return buffer.getvalue()


def scores(truth: torch.Tensor, stats: dict[str, torch.Tensor], band: tuple[str, str] | None):
    """MAE of the median (or mean), RMSE of the mean, and how often the band holds the truth."""
    y = truth.to(torch.float64)
    center = stats.get("q50", stats["mean"])
    out = {
        "rows": int(y.shape[0]),
        "mae": (center - y).abs().mean().item(),
        "rmse": (stats["mean"] - y).pow(2).mean().sqrt().item(),
    }
    if band is not None:
        lo, hi = stats[band[0]], stats[band[1]]
        out[f"coverage_{band[0]}_{band[1]}"] = ((lo <= y) & (y <= hi)).to(y.dtype).mean().item()
    return out


def _band(ax: Any, xs: list, q: dict[str, Any], cols: tuple[str, str], color: str, what: str,
          **median: Any) -> None:  # fmt: skip
    """A forecast's 90% band (the ``cols`` quantiles of ``q``) and its median, drawn over ``xs``."""
    lo, hi = cols
    ax.fill_between(xs, q[lo].tolist(), q[hi].tolist(), color=color, alpha=0.25, lw=0,
                    label=f"{what}, 90% band")  # fmt: skip
    ax.plot(xs, q["q50"].tolist(), color=color, label=f"{what}, median", **median)


def plot_forecast(
    path: Path,
    run: Any,
    held_out: dict[str, torch.Tensor] | None,
    future: dict[str, torch.Tensor],
    future_labels: list[str],
) -> Path:
    """forecast.png: the series, the held-out tail marked, the median and the 90% band."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    data = run.data
    y_train = unstandardize(data.train["y"], data.info).tolist()
    y_eval = unstandardize(data.eval["y"], data.info).tolist() if data.eval else []
    n_train, n_eval, h = len(y_train), len(y_eval), len(future_labels)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = list(range(n_train + n_eval + h))
    ax.plot(xs[:n_train], y_train, color="black", lw=1, label="training data")
    lo, hi = quantile_name(BAND[0]), quantile_name(BAND[1])
    if n_eval:
        ax.axvspan(n_train - 0.5, n_train + n_eval - 0.5, color="0.9", lw=0)
        ax.plot(
            xs[n_train : n_train + n_eval], y_eval, color="tab:red", lw=1, label="held-out data"
        )
        if held_out is not None:
            seg = xs[n_train : n_train + n_eval]
            _band(ax, seg, held_out, (lo, hi), "tab:orange", "held-out forecast", lw=1, ls="--")
    _band(ax, xs[n_train + n_eval :], future, (lo, hi), "tab:blue", "forecast", lw=1.5)
    labels = (
        labelled(
            {"t": torch.cat([data.train["t"], data.eval.get("t", data.train["t"][:0])])}, data.info
        ).labels
        if "t" in data.train
        else [str(i) for i in range(n_train + n_eval)]
    )
    every = labels + future_labels
    ticks = xs[:: max(1, len(xs) // 8)]
    if xs[-1] - ticks[-1] > len(xs) // 16:  # label the forecast's end too
        ticks.append(xs[-1])
    ax.set_xticks(ticks, [every[i] for i in ticks], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(str(data.info.get("target", "y")))
    ax.set_title(f"forecast of {h} steps after {every[n_train + n_eval - 1]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return save_figure(fig, path)
