"""pyrotrain-predict: predictions on every built-in model, forecasts from a CSV with dates, and
the refusals (exit 2, one paragraph); and the date time columns it relies on."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from helpers import SMALL_CSV
from omegaconf import OmegaConf

import pyrotrain
from pyrotrain.data import load_csv
from pyrotrain.errors import PyrotrainError
from pyrotrain.predict import main as predict_main

QUIET = ["trainer.progress=none", "trainer.eval_num_samples=300"]
SAMPLES = ["--num-samples", "300"]
# Each model on small data, trained briefly; its eval score that predictions must reproduce.
MODELS = {
    "regression": (["trainer.steps=150"], "rmse"),
    "timeseries": (["trainer.steps=150"], "mae"),
    "sparse": (
        [
            "model=sparse",
            "data.users=100",
            "data.items=60",
            "data.observations=3000",
            "trainer.batch_size=300",
            "trainer.steps=100",
        ],
        "rmse",
    ),
    "neural": (
        ["model=neural", "model.hidden=32", "trainer.steps=20", "trainer.eval_num_samples=5"],
        None,
    ),
    "hierarchical": (
        [
            "model=hierarchical",
            "data.groups=20",
            "data.rows=600",
            "trainer.batch_size=120",
            "trainer.steps=100",
        ],
        "rmse",
    ),
}


def train_run(run_dir: Path, *overrides: str) -> dict:
    """Train as the pyrotrain command does, writing the run's .hydra/config.yaml as Hydra does."""
    cfg = pyrotrain.compose([*QUIET, *overrides])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return pyrotrain.train(cfg, run_dir)


def predict(*argv: str, capsys=None) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        predict_main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return exited.value.code, (out.out + out.err if out else "")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_on_every_builtin_model(name, tmp_path, capsys):
    overrides, score = MODELS[name]
    if name == "timeseries":
        overrides = ["model=timeseries", *overrides]
    summary = train_run(tmp_path, *overrides)
    samples = ["--num-samples", "30"] if name == "neural" else SAMPLES
    code, out = predict(tmp_path, *samples, capsys=capsys)
    assert code == 0, out
    rows = read_rows(tmp_path / "predictions.csv")
    n = summary["eval"]["horizon" if name == "timeseries" else "n"]
    assert len(rows) == n and f"{n} rows" in out
    target = {"neural": "x", "timeseries": "co2"}.get(name, "y")
    suffix = "_0" if name == "neural" else ""
    first = "time" if name == "timeseries" else "index"
    expected = [first, target + suffix, "mean" + suffix, "std" + suffix, "q05" + suffix]
    assert list(rows[0])[: 2 if suffix else 5] == expected[: 2 if suffix else 5]
    cols = [c for c in rows[0] if c.startswith("q")]
    assert len(cols) == 3 * (64 if name == "neural" else 1)
    for row in rows:
        for j in range(64 if name == "neural" else 1):
            s = f"_{j}" if suffix else ""
            q05, q50, q95 = (float(row[f"q{p}{s}"]) for p in ("05", "50", "95"))
            assert q05 <= q50 <= q95, row
    if score is not None:
        # The predictions' own score against the run's evaluation: the same posterior, drawn anew.
        y = torch.tensor([float(r[target]) for r in rows])
        center = torch.tensor([float(r["q50" if score == "mae" else "mean"]) for r in rows])
        mine = (
            (center - y).abs().mean() if score == "mae" else (center - y).pow(2).mean().sqrt()
        ).item()
        assert mine == pytest.approx(summary["eval"][score], rel=0.08), (mine, summary["eval"])


def _monthly_csv(path: Path, months: int, start_year: int = 1990, skip=(), repeat=()) -> Path:
    lines = ["month,sales"]
    for i in range(months):
        if i in skip:
            continue
        value = 100 + 0.2 * i + 10 * torch.sin(torch.tensor(2 * torch.pi * i / 12)).item()
        label = f"{start_year + i // 12}-{i % 12 + 1:02d}"
        lines.append(f"{label},{value:.3f}")
        if i in repeat:
            lines.append(f"{label},{value:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_forecast_on_a_csv_with_dates_continues_its_dates(tmp_path, capsys):
    data = _monthly_csv(tmp_path / "sales.csv", 96)
    run = tmp_path / "run"
    csv_args = ["data=csv", f"data.path={data}", "data.target=sales", "data.time=month"]
    summary = train_run(
        run, "model=timeseries", *csv_args, "data.eval_fraction=0.125", "trainer.steps=150"
    )
    assert summary["eval"]["horizon"] == 12
    code, out = predict(run, "--horizon", 5, "--num-samples", 200, capsys=capsys)
    assert code == 0, out
    held_out = read_rows(run / "predictions.csv")
    assert [r["month"] for r in held_out] == [f"1997-{m:02d}" for m in range(1, 13)]
    forecast = read_rows(run / "forecast.csv")
    assert list(forecast[0]) == ["month", "mean", "std", "q05", "q50", "q95"]
    assert [r["month"] for r in forecast] == [f"1998-{m:02d}" for m in range(1, 6)]
    assert "1998-01 to 1998-05" in out
    assert (run / "forecast.png").stat().st_size > 10_000
    # The forecast follows the season: January's rise to April's peak.
    medians = [float(r["q50"]) for r in forecast]
    assert medians[3] > medians[0]
    # In-sample predictions are in the series' units, close to it.
    code, out = predict(run, "--split", "train", "--out", tmp_path / "fit.csv", capsys=capsys)
    assert code == 0 and "training-row scores" in out, out
    fit = read_rows(tmp_path / "fit.csv")
    assert len(fit) == 84 and fit[0]["month"] == "1990-01"
    assert all(abs(float(r["mean"]) - float(r["sales"])) < 3 for r in fit)


@pytest.mark.parametrize(
    "cells,period,labels",
    [
        (["2004-01", "2004-02", "2004-03"], 12, "2004-04"),
        (["2004-01-01", "2004-04-01", "2004-07-01"], 4, "2004-10-01"),
        (["2004-01-05", "2004-01-12", "2004-01-19"], 52, "2004-01-26"),
        (["2004-12-30", "2004-12-31", "2005-01-01"], 7, "2005-01-02"),
        (["2004-12-31T06:00", "2004-12-31T07:00", "2004-12-31T08:00"], 24, "2004-12-31T09:00"),
        (["2002", "2003", "2004"], 0, "2005"),
    ],
)
def test_date_columns_give_steps_and_the_season_of_their_spacing(tmp_path, cells, period, labels):
    from pyrotrain.data import Calendar

    path = tmp_path / "d.csv"
    # Shuffled rows: sorted by date.
    path.write_text(
        "when,y\n" + "".join(f"{c},{i}\n" for i, c in [(2, cells[2]), (0, cells[0]), (1, cells[1])])
    )
    data = load_csv(str(path), target="y", time="when", eval_fraction=0)
    assert data.train["t"].tolist() == [0, 1, 2] and data.train["y"].tolist() == [0, 1, 2]
    assert data.info["period"] == period
    assert Calendar.from_info(data.info["calendar"]).label(3) == labels


@pytest.mark.parametrize(
    "skip,repeat,match",
    [
        (
            (5,),
            (),
            r"jumps from 1990-05 \(line 6\) to 1990-07 \(line 7\): 1 monthly step is missing",
        ),
        ((), (5,), r"(?i)line 8 of d.csv repeats the date 1990-06 of line 7"),
    ],
)
def test_dates_with_gaps_or_repeats_are_refused_naming_the_line(tmp_path, skip, repeat, match):
    path = _monthly_csv(tmp_path / "d.csv", 12, skip=skip, repeat=repeat)
    with pytest.raises(PyrotrainError, match=match) as caught:
        load_csv(str(path), target="sales", time="month")
    assert caught.value.key == "data.time"


def test_timeseries_without_a_time_column_is_refused(tmp_path):
    cfg = pyrotrain.compose(
        ["model=timeseries", "data=csv", f"data.path={SMALL_CSV}", "data.target=y", *QUIET]
    )
    with pytest.raises(PyrotrainError, match="data.time.*has an order"):
        pyrotrain.train(cfg)


def test_predict_new_rows_without_the_target(tmp_path, capsys):
    run = tmp_path / "run"
    train_run(run, "data=csv", f"data.path={SMALL_CSV}", "data.target=y", "trainer.steps=50")
    features = ["x1", "x2"]  # the file's 'name' column is text, not a feature
    new = tmp_path / "new.csv"
    new.write_text(",".join(features) + "\n" + ",".join("0.5" for _ in features) + "\n")
    out_file = tmp_path / "p.csv"
    code, out = predict(run, f"data.path={new}", "--out", out_file, capsys=capsys)
    assert code == 0, out
    rows = read_rows(out_file)
    assert len(rows) == 1 and list(rows[0]) == ["index", "mean", "std", "q05", "q50", "q95"]
    # A file without one of the run's feature columns.
    new.write_text(",".join(features[1:]) + "\n" + ",".join("0.5" for _ in features[1:]) + "\n")
    code, out = predict(run, f"data.path={new}", capsys=capsys)
    assert code == 2 and f"no column '{features[0]}'" in out and "Traceback" not in out


def test_predict_refuses_bad_input_with_one_paragraph(tmp_path, capsys):
    run = tmp_path / "run"
    train_run(run, "trainer.steps=5")
    for argv, match in [
        ((run, "--horizon", 3), "--horizon.*cannot forecast"),
        ((run, "--num-samples", 0), "--num-samples.*at least one"),
        ((run, "--quantiles", "0.5,2"), "--quantiles"),
        ((run, "model.kind=logistic"), "data overrides only"),
        ((tmp_path / "nothing",), "RUN_DIR.*does not exist"),
    ]:
        code, out = predict(*argv, capsys=capsys)
        assert code == 2, (argv, out)
        assert len(out.strip().splitlines()) == 1 and out.startswith("error:"), out
        assert re.search(f"(?i){match}", out), (match, out)
    (run / "params.pt").unlink()
    code, out = predict(run, capsys=capsys)
    assert code == 2 and "no params.pt" in out


@pytest.mark.slow
def test_timeseries_defaults_beat_seasonal_naive_on_a_monthly_csv_with_dates(tmp_path):
    """The Mauna Loa series (44 years) as a user's CSV with ISO months: the defaults infer the
    period and forecast the last 10% better than repeating the last season."""
    from pyrotrain.models.timeseries import CO2_CSV

    with CO2_CSV.open() as f:
        rows = list(csv.DictReader(f))
    path = tmp_path / "co2.csv"
    lines = [f"{int(r['year'])}-{int(r['month']):02d},{r['co2']}" for r in rows]
    path.write_text("month,co2\n" + "\n".join(lines) + "\n")
    args = ["data=csv", f"data.path={path}", "data.target=co2", "data.time=month"]
    cfg = pyrotrain.compose(["model=timeseries", *args, "data.eval_fraction=0.1", *QUIET])
    assert cfg.model.period is None and cfg.trainer.steps == 1000  # the defaults
    ev = pyrotrain.train(cfg)["eval"]
    assert ev["horizon"] == 53
    assert ev["mae"] < ev["seasonal_naive_mae"] and ev["mae"] < ev["naive_mae"], ev
