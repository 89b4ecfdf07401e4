"""The command: ``pyrotrain-predict RUN_DIR [data.KEY=VALUE ...] [options]`` parsed into
:class:`Options`, and :func:`predict`, which writes predictions.csv (and forecast.csv,
forecast.png with ``--horizon``)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from ..errors import PyrotrainError
from .inputs import future_labels, input_rows
from .outputs import (
    BAND,
    DEFAULT_QUANTILES,
    plot_forecast,
    quantile_name,
    scores,
    summarize,
    table_text,
)
from .run import load_run
from .sampling import obs_site, predictive_samples, target_name, unstandardize


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
    from ..build import torch_defaults
    from ..io import write_text

    if console is None:
        from ..console import screen

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
        samples = unstandardize(predictive_samples(run, rows, opts.num_samples), run.data.info)
        stats = summarize(samples, every_q)
        truth = rows.tensors.get(target)
        truth = unstandardize(truth, run.data.info) if truth is not None else None
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
    from ..io import write_text

    horizon = opts.horizon
    assert horizon is not None
    samples = run.model.forecast(run.guide, run.data, horizon, num_samples=opts.num_samples)
    future = summarize(unstandardize(samples, run.data.info), every_q)
    label, labels = future_labels(run, horizon)
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
    """The command line as :class:`Options`; a bad argument is a PyrotrainError naming it."""
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
    """The ``pyrotrain-predict`` entry point: a user's mistake exits 2 with one paragraph."""
    from ..console import exit_with, screen

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
