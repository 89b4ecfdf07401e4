"""``data=csv``: a numeric table from a CSV file with a header row, read with the csv module.

    pyrotrain data=csv data.path=houses.csv data.target=price
    pyrotrain data=csv data.path=sales.csv data.target=units data.time=week model=timeseries

The loader yields ``x`` (rows x features), ``y`` (the target) and, when ``time`` is given, ``t``
(the time column). With ``time`` the rows are sorted by it and the last ``eval_fraction`` of them
are held out (a forecast split); without it the held-out rows are drawn at random with the seed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import Dataset, split
from .errors import PyrotrainError

DTYPES = ("float32", "float64", "int64")


def _number(text: str) -> float | None:
    """The finite number ``text`` spells, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_csv(path: str | Path, key: str = "data.path") -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of a CSV file, as strings; blank lines are skipped."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise PyrotrainError(
            f"the CSV file {p} {what}",
            key=key,
            value=str(path),
            hint=f"Relative paths are read from the working directory, {Path.cwd()}",
        )
    with p.open(newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if not rows:
        raise PyrotrainError(f"the CSV file {p} is empty", key=key, value=str(path))
    header = [name.strip() for name in rows[0]]
    if all(_number(name) is not None for name in header):
        raise PyrotrainError(
            f"the first row of {p} is numbers, not column names",
            key=key,
            value=str(path),
            hint="Add a header row naming the columns",
        )
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise PyrotrainError(
                f"row {i} of {p} has {len(row)} values but the header names {len(header)} columns",
                key=key,
                value=str(path),
            )
    if len(rows) < 2:
        raise PyrotrainError(f"the CSV file {p} has a header but no rows", key=key, value=str(path))
    return header, rows[1:]


def numeric_column(
    header: list[str], rows: list[list[str]], name: str, key: str, path: str | Path
) -> np.ndarray:
    """Column ``name`` as float64; a missing column or a non-number is a PyrotrainError."""
    if name not in header:
        raise PyrotrainError(
            f"there is no column '{name}' in {Path(path).name}", key=key, value=name, choices=header
        )
    j = header.index(name)
    out = np.empty(len(rows))
    for i, row in enumerate(rows):
        value = _number(row[j])
        if value is None:
            raise PyrotrainError(
                f"column '{name}' of {Path(path).name} has {row[j]!r} in row {i + 2} "
                "(counting the header as row 1), which is not a finite number",
                key=key,
                value=name,
                hint="Fix or drop that row, or leave the column out",
            )
        out[i] = value
    return out


def _as_names(value: str | Sequence[str] | None, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise PyrotrainError("expected a column name or a list of them", key=key, value=value)
    return list(value)


def load_csv(
    path: str,
    target: str,
    features: str | Sequence[str] | None = None,
    time: str | None = None,
    dtype: str = "float32",
    eval_fraction: float = 0.2,
    standardize: bool = False,
    seed: int = 0,
) -> Dataset:
    """A CSV file with a header row: ``x`` (the feature columns), ``y`` (the target), ``t``.

    :param path: the file; relative paths are read from the working directory.
    :param target: the column to predict (``y``).
    :param features: the columns of ``x``; None: every other column whose first value is a number
        (so text columns such as names are left out), [] for none (``x`` has zero columns).
    :param time: a column to sort the rows by (``t``); the split is then by time: the last
        ``eval_fraction`` of the rows are held out. None: a random split with ``seed``.
    :param dtype: of ``y``: float32 | float64 (the trainer casts floats to trainer.dtype anyway),
        or int64 for class labels and counts (left as is), whose values must be whole numbers.
    :param standardize: centre and scale ``x`` (and a floating ``y``) by the training rows' means
        and standard deviations, which ``info`` keeps to map predictions back.
    """
    if dtype not in DTYPES:
        raise PyrotrainError(
            "not a valid data type for y", key="data.dtype", value=dtype, choices=DTYPES
        )
    if not 0 <= eval_fraction < 1:
        raise PyrotrainError(
            "the evaluation fraction must be in [0, 1)",
            key="data.eval_fraction",
            value=eval_fraction,
        )
    header, rows = read_csv(path)
    names = _as_names(features, "data.features")
    if names is None:
        skip = {target, time}
        names = [
            h for h in header if h not in skip and _number(rows[0][header.index(h)]) is not None
        ]
    named = [("data.target", target), ("data.time", time)] + [("data.features", n) for n in names]
    for key, name in named:
        if name is not None and name not in header:
            raise PyrotrainError(
                f"there is no column '{name}' in {Path(path).name}",
                key=key,
                value=name,
                choices=header,
            )
    if target in names or (time is not None and time in names):
        raise PyrotrainError(
            "the target and time columns cannot also be features", key="data.features", value=names
        )
    y = numeric_column(header, rows, target, "data.target", path)
    columns = [numeric_column(header, rows, n, "data.features", path) for n in names]
    x = np.stack(columns, -1) if columns else np.zeros((len(rows), 0))
    if dtype == "int64":
        if not np.all(y == np.round(y)):
            bad = int(np.flatnonzero(y != np.round(y))[0])
            raise PyrotrainError(
                f"data.dtype=int64 needs whole numbers, but column '{target}' has {y[bad]} in row "
                f"{bad + 2}",
                key="data.dtype",
                value=dtype,
            )
        y_t = torch.as_tensor(y.astype(np.int64))
    else:
        y_t = torch.as_tensor(y, dtype=getattr(torch, dtype))
    tensors = {"x": torch.as_tensor(x), "y": y_t}
    info = {"source": str(path), "target": target, "features": names, "rows": len(rows)}
    if time is None:
        data = split(tensors, eval_fraction, seed, info)
    else:
        t = numeric_column(header, rows, time, "data.time", path)
        order = torch.as_tensor(np.argsort(t, kind="stable"))
        tensors = {k: v[order] for k, v in tensors.items()}
        tensors["t"] = torch.as_tensor(t)[order]
        info["time"] = time
        data = split_by_time(tensors, eval_fraction, info)
    if standardize:
        data = _standardize(data)
    return data


def split_by_time(tensors: dict[str, torch.Tensor], eval_fraction: float, info: dict) -> Dataset:
    """Train on the first rows (in order), hold out the last ``eval_fraction`` of them."""
    n = next(iter(tensors.values())).shape[0]
    n_eval = int(round(n * eval_fraction))
    if n - n_eval < 2:
        raise PyrotrainError(
            f"only {n - n_eval} of the {n} rows would be left for training",
            key="data.eval_fraction",
            value=eval_fraction,
        )
    cut = n - n_eval
    return Dataset(
        {k: v[:cut] for k, v in tensors.items()},
        {k: v[cut:] for k, v in tensors.items()} if n_eval else {},
        info,
    )


def _standardize(data: Dataset) -> Dataset:
    """Centre and scale x and a floating y by the training rows' statistics (no leakage)."""
    stats = {}
    for name in ("x", "y"):
        v = data.train[name]
        if not v.is_floating_point() or v.numel() == 0:
            continue
        mean = v.mean(0)
        std = v.std(0).clamp_min(1e-12) if v.shape[0] > 1 else torch.ones_like(mean)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist()}
        data.train[name] = (v - mean) / std
        if name in data.eval:
            data.eval[name] = (data.eval[name] - mean) / std
    data.info["standardized"] = stats
    return data
