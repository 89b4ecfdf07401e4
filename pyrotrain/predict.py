"""``pyrotrain-predict RUN_DIR``: posterior predictions and forecasts from a trained run.

The run's model and guide are rebuilt from ``RUN_DIR/.hydra/config.yaml`` and their parameters
loaded from ``params.pt`` (or a checkpoint); Pyro's ``Predictive`` then draws samples of the
model's observation site for the input rows: the run's held-out split, or new rows given as data
overrides (``data.path=new.csv``), whose target column may be missing. A model with a
``forecast`` method (``model=timeseries``) forecasts instead, and ``--horizon H`` forecasts H steps
past the end of the data.

The contract for a user's model (docs/models.md): the observation is the sample site ``obs`` (or
the model's ``obs_site`` attribute), and it observes the data tensor ``y`` (or the model's
``target`` attribute); an optional ``predict(guide, rows, num_samples)`` replaces ``Predictive``;
an optional ``forecast(guide, data, horizon, num_samples)`` makes ``--horizon`` work.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from omegaconf import OmegaConf
from pyro.poutine.messenger import Messenger

from .errors import PyrotrainError

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
BAND = (0.05, 0.95)  # the band forecast.png draws, whatever --quantiles says


# -- the run, rebuilt -----------------------------------------------------------------------------


def _hydra_cwd(run_dir: Path) -> Path | None:
    """The working directory the run was started from (Hydra records it), if known."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd", default=None)
    return Path(cwd) if cwd else None


def parameter_file(run_dir: Path, checkpoint: str | None) -> tuple[Path, dict[str, Any]]:
    """The file holding the parameters to use and the param store state in it."""
    from .checkpoint import DIRNAME, list_checkpoints, load_checkpoint

    if checkpoint is None:
        path = run_dir / "params.pt"
        if not path.is_file():
            raise PyrotrainError(
                f"{run_dir} has no params.pt: the run did not finish",
                key="RUN_DIR",
                value=str(run_dir),
                hint="Use one of its checkpoints with --checkpoint last (or best, or a file)",
            )
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise PyrotrainError(
                f"{path} cannot be read ({type(e).__name__})", key="RUN_DIR", value=str(run_dir)
            ) from e
    if checkpoint == "best":
        path = run_dir / DIRNAME / "best.pt"
        if not path.is_file():
            raise PyrotrainError(
                f"{run_dir} has no {DIRNAME}/best.pt: it is written when "
                "trainer.early_stopping.monitor is set",
                key="--checkpoint",
                value=checkpoint,
                choices=["last", "a checkpoint file"],
            )
    elif checkpoint == "last":
        found = list_checkpoints(run_dir)
        if not found:
            raise PyrotrainError(
                f"{run_dir} has no checkpoint", key="--checkpoint", value=checkpoint
            )
        path = found[0]
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise PyrotrainError(
                "no such checkpoint file",
                key="--checkpoint",
                value=checkpoint,
                choices=["best", "last", "a checkpoint file"],
            )
    return path, load_checkpoint(path)["param_store"]


def load_run(run_dir: str | Path, checkpoint: str | None = None) -> Any:
    """The run in ``run_dir`` rebuilt in this process, its parameters in the Pyro param store."""
    from .build import build, torch_defaults
    from .config import parse_config
    from .loop import create_params, load_param_values

    run_dir = Path(run_dir).expanduser()
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        what = "does not exist" if not run_dir.exists() else "has no .hydra/config.yaml"
        raise PyrotrainError(
            f"{run_dir} {what}: it is not a pyrotrain run directory",
            key="RUN_DIR",
            value=str(run_dir),
            hint="Give the directory a pyrotrain run printed at its end ('run dir: ...')",
        )
    plain: dict[str, Any] = OmegaConf.to_container(  # type: ignore[assignment]
        OmegaConf.load(config_file), resolve=True
    )
    cwd = _hydra_cwd(run_dir)
    if cwd is not None:  # relative paths of the run's own data and code are the run's
        path = plain.get("data", {}).get("path")
        if isinstance(path, str) and not Path(path).expanduser().is_absolute():
            plain["data"]["path"] = str(cwd / path)
        if str(cwd) not in sys.path:
            sys.path.append(str(cwd))
    plain["distributed"] = {"name": "none"}
    config = parse_config(plain)
    config = replace(config, trainer=replace(config.trainer, resume=None))
    source, saved = parameter_file(run_dir, checkpoint)
    pyro.clear_param_store()
    run = build(config)
    with torch_defaults(run.dtype, run.device):
        pyro.set_rng_seed(config.seed)
        first = next(iter(run.order))[1]
        create_params(run, first)
        load_param_values(saved, "--checkpoint", str(source))
    return run


# -- the rows to predict --------------------------------------------------------------------------


@dataclass
class Rows:
    """The input rows: the model's tensors, and what names each row in the output."""

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]
    label: str = "index"  # the first output column: time or index
    labels: list[str] = field(default_factory=list)
    split: str = "new"  # eval, train: the run's own rows; new: rows from data overrides


def _time_labels(t: torch.Tensor, info: dict[str, Any]) -> list[str]:
    from .data import Calendar

    cal = Calendar.from_info(info.get("calendar"))
    if cal is not None:
        return [cal.label(int(round(float(v)))) for v in t]
    return [_number(float(v), t.dtype) for v in t]


def _number(v: float, dtype: torch.dtype) -> str:
    """A time as its dtype holds it: float32 keeps about 7 significant digits."""
    return f"{v:.7g}" if dtype == torch.float32 else f"{v:.12g}"


def _labelled(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Rows:
    n = next(iter(tensors.values())).shape[0]
    if "t" in tensors:
        return Rows(tensors, info, info.get("time") or "time", _time_labels(tensors["t"], info))
    return Rows(tensors, info, "index", [str(i) for i in range(n)])


def input_rows(run: Any, overrides: list[str], split: str) -> Rows:
    """The held-out rows (``split``: eval, train) or, with data overrides, the new data's rows."""
    data = run.data
    if not overrides:
        tensors = data.eval if split == "eval" else data.train
        if not tensors:
            raise PyrotrainError(
                "the run held out no rows (data.eval_fraction=0)",
                key="--split",
                value=split,
                hint="Predict the training rows with --split train, or new rows with "
                "data.path=FILE",
            )
        rows = _labelled(dict(tensors), data.info)
        rows.split = split
        return rows
    return _new_rows(run, overrides)


def _new_rows(run: Any, overrides: list[str]) -> Rows:
    from .build import _build_data
    from .data import read_columns
    from .schema import Named

    for item in overrides:
        key = item.partition("=")[0]
        if key in ("data.name", "data"):
            raise PyrotrainError(
                "the rows to predict come from the run's dataset with other settings; another "
                "dataset would not match what the model was built for",
                key=key,
                value=item.partition("=")[2],
                hint="Change the dataset's settings instead, e.g. data.path=new.csv",
            )
        if "=" not in item or not key.startswith("data."):
            raise PyrotrainError(
                "pyrotrain-predict takes data overrides only (the rows to predict); the model, "
                "guide and parameters are the run's",
                key=key,
                value=item,
                hint="Write data.KEY=VALUE, e.g. data.path=new.csv",
            )
    if hasattr(run.model, "forecast"):
        raise PyrotrainError(
            "a forecasting model predicts the steps after the series it was trained on, so it "
            "takes no new rows",
            key=overrides[0].partition("=")[0],
            value=overrides[0].partition("=")[2],
            hint="Forecast past the end with --horizon H, or train on the longer series",
        )
    node = OmegaConf.merge(
        OmegaConf.create(copy.deepcopy(run.config.plain["data"])),
        OmegaConf.from_dotlist([item[len("data.") :] for item in overrides]),
    )
    kwargs: dict[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
    name = kwargs.pop("name")
    if name == "csv":
        features = run.data.info.get("features")  # the columns the model was trained on
        tensors, info = read_columns(
            kwargs["path"],
            kwargs["target"],
            features if features is not None else kwargs.get("features"),
            kwargs.get("time"),
            kwargs.get("dtype", "float32"),
            target_required=False,
        )
        # The run's standardization, with its training rows' statistics (data.standardize).
        for name, stats in run.data.info.get("standardized", {}).items():
            if name in tensors:
                mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
                tensors[name] = (tensors[name] - mean) / std
        info = {**run.data.info, **{k: v for k, v in info.items() if k != "standardized"}}
    else:
        if "eval_fraction" in kwargs:
            kwargs["eval_fraction"] = 0.0
        data = _build_data(Named(name, kwargs), run.config.seed)
        tensors, info = dict(data.train), data.info
    tensors = {
        k: v.to(run.device, run.dtype if v.is_floating_point() else v.dtype)
        for k, v in tensors.items()
    }
    return _labelled(tensors, info)


# -- samples --------------------------------------------------------------------------------------


class _Unobserved(Messenger):
    """Sample the site ``name`` even where the model observes it (the posterior predictive of a
    model whose target is also its input, like an autoencoder's images)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name and msg["is_observed"]:
            msg["is_observed"] = False
            msg["value"] = None
            msg["done"] = False


def obs_site(model: Any) -> str:
    return getattr(model, "obs_site", "obs")


def target_name(model: Any) -> str:
    return getattr(model, "target", "y")


def _accepted(fn: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return tensors
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return tensors
    return {k: v for k, v in tensors.items() if k in params}


def predictive_samples(run: Any, rows: Rows, num_samples: int) -> torch.Tensor:
    """Samples ``(num_samples, rows, ...)`` of the observation for ``rows``."""
    model, guide = run.model, run.guide
    n = next(iter(rows.tensors.values())).shape[0]
    forecast = getattr(model, "forecast", None)
    if forecast is not None and rows.split == "eval":  # the held-out tail: forecast it
        return forecast(guide, _train_only(run), n, num_samples=num_samples)
    if hasattr(model, "predict"):
        return model.predict(guide, rows.tensors, num_samples=num_samples)
    from pyro.infer import Predictive

    site = obs_site(model)
    kwargs = _accepted(model, rows.tensors)
    # All draws at once in an outer plate, for a model that declares it broadcasts over one.
    parallel = bool(getattr(model, "parallel_predict", False))
    predictive = Predictive(
        _Unobserved(site)(model),
        guide=guide,
        num_samples=num_samples,
        return_sites=[site],
        parallel=parallel,
    )
    with torch.no_grad():
        samples = predictive(**kwargs)
    if site not in samples:
        raise PyrotrainError(
            f"the model has no sample site '{site}' to predict",
            key="model",
            value=run.config.model.name,
            hint="Name the observation site 'obs', or give the model an attribute "
            "obs_site = 'NAME'",
        )
    value = samples[site]
    while value.dim() > 2 and value.shape[1] == 1 and n != 1:  # a plate's leading singleton dim
        value = value.squeeze(1)
    if value.dim() < 2 or value.shape[1] != n:
        raise PyrotrainError(
            f"the observation site '{site}' has shape {tuple(value.shape[1:])} per draw, which "
            f"does not start with the {n} input rows",
            key="model",
            value=run.config.model.name,
            hint="Put the observation in a plate over the rows, or give the model a "
            "predict(guide, rows, num_samples) method",
        )
    return value


def _unstandardize(t: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    y = info.get("standardized", {}).get("y")
    if y is None:
        return t
    return t.to(torch.float64) * y["std"] + y["mean"]


# -- the outputs ----------------------------------------------------------------------------------


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


def _future_labels(run: Any, horizon: int) -> tuple[str, list[str]]:
    """The time labels of the ``horizon`` steps after the data's last one."""
    from .data import Calendar

    info = run.data.info
    last = run.data.eval.get("t", run.data.train.get("t"))
    name = info.get("time") or "time"
    if last is None:  # a forecasting model without a time column: number the steps
        n = run.data.size + (next(iter(run.data.eval.values())).shape[0] if run.data.eval else 0)
        return "step", [str(n + k) for k in range(horizon)]
    cal = Calendar.from_info(info.get("calendar"))
    t_end = float(last[-1])
    if cal is not None:
        return name, [cal.label(int(round(t_end)) + k + 1) for k in range(horizon)]
    t_all = torch.cat([run.data.train["t"], run.data.eval.get("t", run.data.train["t"][:0])])
    step = float(t_all.diff().median()) if t_all.shape[0] > 1 else 1.0
    return name, [_number(t_end + step * (k + 1), last.dtype) for k in range(horizon)]


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
    from .plots import _pyplot, _save

    plt = _pyplot()
    data = run.data
    y_train = _unstandardize(data.train["y"], data.info).tolist()
    y_eval = _unstandardize(data.eval["y"], data.info).tolist() if data.eval else []
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
        _labelled(
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
    return _save(fig, path)


@dataclass
class Options:
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    num_samples: int = 1000
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    horizon: int | None = None
    split: str = "eval"
    out: Path | None = None
    seed: int | None = None


def predict(opts: Options, console: Any = None) -> dict[str, Any]:
    """Write predictions.csv (and forecast.csv, forecast.png with a horizon); return a summary."""
    from .build import torch_defaults
    from .io import write_text

    if console is None:
        from .console import screen

        console = screen()
    run = load_run(opts.run_dir, opts.checkpoint)
    if opts.horizon is not None and not hasattr(run.model, "forecast"):
        raise PyrotrainError(
            f"model '{run.config.model.name}' cannot forecast: it has no forecast method",
            key="--horizon",
            value=opts.horizon,
            hint="Forecasting needs a time-series model (model=timeseries) or a model with "
            "forecast(guide, data, horizon, num_samples); see docs/models.md",
        )
    rows = input_rows(run, opts.overrides, opts.split)
    out = opts.out or Path(opts.run_dir) / "predictions.csv"
    summary: dict[str, Any] = {
        "rows": len(rows.labels),
        "predictions": str(out),
        "split": rows.split,
    }
    target = target_name(run.model)
    band = (quantile_name(min(opts.quantiles)), quantile_name(max(opts.quantiles)))
    every_q = tuple(sorted(set(opts.quantiles) | {*BAND, 0.5}))
    shown = {"mean", "std", *(quantile_name(q) for q in opts.quantiles)}
    with torch_defaults(run.dtype, run.device), torch.no_grad():
        pyro.set_rng_seed(run.config.seed if opts.seed is None else opts.seed)
        samples = _unstandardize(predictive_samples(run, rows, opts.num_samples), run.data.info)
        stats = summarize(samples, every_q)
        truth = rows.tensors.get(target)
        truth = _unstandardize(truth, run.data.info) if truth is not None else None
        if truth is not None and truth.shape != stats["mean"].shape:
            raise PyrotrainError(
                f"the observation site '{obs_site(run.model)}' has shape "
                f"{tuple(stats['mean'].shape)} per draw, but the target '{target}' has shape "
                f"{tuple(truth.shape)}",
                key="model",
                value=run.config.model.name,
                hint="Give the model an attribute target = 'NAME' naming the data tensor that "
                "its observation site observes",
            )
        columns = {k: v for k, v in stats.items() if k in shown}
        # The target's column is named as the data names it (data.target), else by its tensor.
        shown_target = rows.info.get("target", target) if target == "y" else target
        write_text(out, table_text(rows.label, rows.labels, columns, shown_target, truth))
        if truth is not None:
            summary["scores"] = scores(truth, stats, band if len(opts.quantiles) > 1 else None)
        if opts.horizon is not None:
            held_out = stats if rows.split == "eval" and hasattr(run.model, "forecast") else None
            summary.update(_forecast(run, opts, out.parent, held_out, every_q, shown))
    return summary


def _forecast(
    run: Any, opts: Options, where: Path, held_out: dict | None, every_q: tuple, shown: set[str]
) -> dict[str, Any]:
    """forecast.csv and forecast.png: ``opts.horizon`` steps after the run's data."""
    from .io import write_text

    horizon = opts.horizon
    assert horizon is not None
    samples = run.model.forecast(run.guide, run.data, horizon, num_samples=opts.num_samples)
    future = summarize(_unstandardize(samples, run.data.info), every_q)
    label, labels = _future_labels(run, horizon)
    columns = {k: v for k, v in future.items() if k in shown}
    csv_path = write_text(where / "forecast.csv", table_text(label, labels, columns))
    png = plot_forecast(where / "forecast.png", run, held_out, future, labels)
    return {
        "forecast": str(csv_path),
        "plot": str(png),
        "horizon": horizon,
        "forecast_from": labels[0],
        "forecast_to": labels[-1],
    }


def _train_only(run: Any) -> Any:
    from .data import Dataset

    return Dataset(dict(run.data.train))


# -- the command ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise PyrotrainError(f"{message} (usage: {self.format_usage().strip()[7:]})")


def _quantiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or not all(0 < v < 1 for v in values):
        raise PyrotrainError(
            "quantiles are numbers between 0 and 1, separated by commas",
            key="--quantiles",
            value=text,
            hint="e.g. --quantiles 0.05,0.5,0.95",
        )
    return tuple(sorted(set(values)))


def parse_args(argv: list[str]) -> Options:
    parser = _Parser(
        prog="pyrotrain-predict",
        description="Posterior predictions (predictions.csv) and forecasts (forecast.csv, "
        "forecast.png) from a trained pyrotrain run.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory that pyrotrain wrote")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE: new rows to predict")
    parser.add_argument("--checkpoint", help="best | last | a checkpoint file (default: params.pt)")
    parser.add_argument("--num-samples", type=int, default=1000, help="posterior samples (1000)")
    parser.add_argument("--quantiles", default="0.05,0.5,0.95", help="default 0.05,0.5,0.95")
    parser.add_argument("--horizon", type=int, help="forecast this many steps past the data")
    parser.add_argument(
        "--split",
        choices=["eval", "train"],
        default="eval",
        help="the run's rows to predict without data overrides (eval)",
    )
    parser.add_argument("--out", type=Path, help="the predictions file (RUN_DIR/predictions.csv)")
    parser.add_argument("--seed", type=int, help="seed of the draws (default: the run's seed)")
    args = parser.parse_intermixed_args(argv)
    if args.num_samples < 1:
        raise PyrotrainError(
            "at least one posterior sample is needed (1000 gives stable quantiles)",
            key="--num-samples",
            value=args.num_samples,
        )
    if args.horizon is not None and args.horizon < 1:
        raise PyrotrainError(
            "the horizon must be at least 1 step", key="--horizon", value=args.horizon
        )
    if args.out is not None and not args.out.parent.is_dir():
        raise PyrotrainError(
            "the directory of the output file does not exist", key="--out", value=str(args.out)
        )
    return Options(
        run_dir=args.run_dir,
        overrides=list(args.overrides),
        checkpoint=args.checkpoint,
        num_samples=args.num_samples,
        quantiles=_quantiles(args.quantiles),
        horizon=args.horizon,
        split=args.split,
        out=args.out,
        seed=args.seed,
    )


def _print_summary(summary: dict[str, Any], console: Any) -> None:
    console.print(f"{summary['rows']} rows -> {summary['predictions']}", highlight=False)
    if "scores" in summary:
        s = summary["scores"]
        parts = [f"{k} {v:.4g}" for k, v in s.items() if k != "rows"]
        what = {"eval": "held-out", "train": "training-row"}.get(
            summary.get("split", ""), "new-row"
        )
        console.print(f"{what} scores: " + "  ".join(parts))
    if "forecast" in summary:
        console.print(
            f"forecast of {summary['horizon']} steps, {summary['forecast_from']} to "
            f"{summary['forecast_to']} -> {summary['forecast']}, {summary['plot']}"
        )


def main(argv: list[str] | None = None) -> None:
    from .console import exit_with, screen

    if os.getcwd() not in sys.path:  # the user's model (model.target) imports from here
        sys.path.insert(0, os.getcwd())
    show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    console = screen()
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        summary = predict(opts, console)
    except PyrotrainError as exc:
        if show_traceback:
            raise
        exit_with(str(exc), exc.exit_code)
    _print_summary(summary, console)
    sys.exit(0)


if __name__ == "__main__":
    main()
