"""``data=csv``: a numeric table from a CSV file with a header row, read with the csv module.

    pyrotrain data=csv data.path=houses.csv data.target=price
    pyrotrain data=csv data.path=sales.csv data.target=units data.time=week model=timeseries

The loader yields ``x`` (rows x features), ``y`` (the target) and, when ``time`` is given, ``t``
(the time column: numbers, or ISO dates as step numbers, see :mod:`pyrotrain.data.dates`). With
``time`` the rows are sorted by it and the last ``eval_fraction`` of them are held out (a forecast
split); without it the held-out rows are drawn at random with the seed.

Nothing is dropped or replaced quietly: an empty or repeated column name, a row with more or fewer
values than the header, and text or an empty cell in a column that is used are errors naming the
column and the file line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PyrotrainError
from .dataset import Dataset, split
from .dates import parse_dates

DTYPES = ("float32", "float64", "int64")


def _number(text: str) -> float | None:
    """The finite number ``text`` spells, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class Table:
    """A CSV file's column names and data rows as strings, with where each row is in the file."""

    path: Path
    header: list[str]
    header_line: int
    rows: list[list[str]]
    # Blank lines are skipped and a quoted value may span lines, so a row's index is not its line;
    # messages name the file line a user's editor shows.
    lines: list[int]


def read_csv(path: str | Path, key: str = "data.path") -> Table:
    """The header and the data rows of a CSV file; blank lines are skipped.

    A header without names (all numbers), an empty or repeated column name and a row with more or
    fewer values than the header are PyrotrainErrors naming the column or the line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise PyrotrainError(
            f"the CSV file {p} {what}",
            key=key,
            value=str(path),
            hint=f"Relative paths are read from the working directory, {Path.cwd()}",
        )
    records: list[tuple[int, list[str]]] = []
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    records.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise PyrotrainError(
                f"line {reader.line_num + 1} of {p} cannot be read as CSV: {exc}",
                key=key,
                value=str(path),
            ) from None
        except UnicodeDecodeError:
            # Decoding runs ahead in blocks, so the reader's line number would be wrong here.
            raise PyrotrainError(
                f"{p} is not UTF-8 text", key=key, value=str(path), hint="Save it as UTF-8 CSV"
            ) from None
    if not records:
        raise PyrotrainError(f"the CSV file {p} is empty", key=key, value=str(path))
    header_line, raw = records[0]
    header = [name.strip() for name in raw]
    if all(_number(name) is not None for name in header):
        raise PyrotrainError(
            f"the first row of {p} is numbers, not column names",
            key=key,
            value=str(path),
            hint="Add a header row naming the columns",
        )
    first: dict[str, int] = {}
    for j, name in enumerate(header, start=1):
        if not name:
            raise PyrotrainError(
                f"column {j} of {p.name} has no name in the header (line {header_line})",
                key=key,
                value=str(path),
                hint="Name every column; a comma at the end of each line makes an unnamed column",
            )
        if name in first:
            # Reading by name would give both the first column's values: refuse, do not guess.
            raise PyrotrainError(
                f"columns {first[name]} and {j} of {p.name} are both named '{name}' in the header "
                f"(line {header_line})",
                key=key,
                value=str(path),
                hint="Rename one of them; column names must be unique",
            )
        first[name] = j
    for line, row in records[1:]:
        if len(row) != len(header):
            raise PyrotrainError(
                f"line {line} of {p.name} has {len(row)} values but the header (line "
                f"{header_line}) names {len(header)} columns",
                key=key,
                value=str(path),
                hint='A value that contains a comma must be quoted: "1,5"',
            )
    if len(records) < 2:
        raise PyrotrainError(f"the CSV file {p} has a header but no rows", key=key, value=str(path))
    return Table(
        p, header, header_line, [row for _, row in records[1:]], [line for line, _ in records[1:]]
    )


def _cell_problem(table: Table, j: int, i: int) -> str:
    """What is wrong with cell ``i`` of column ``j`` (which is not a finite number), and where."""
    cell = table.rows[i][j]
    where = f"column '{table.header[j]}' of {table.path.name} has"
    if not cell.strip():
        return f"{where} an empty cell (a missing value) on line {table.lines[i]}"
    return f"{where} {cell!r} on line {table.lines[i]}, which is not a finite number"


def _column(table: Table, name: str, key: str) -> int:
    if name not in table.header:
        raise PyrotrainError(
            f"there is no column '{name}' in {table.path.name}",
            key=key,
            value=name,
            choices=table.header,
        )
    return table.header.index(name)


def _as_numbers(table: Table, j: int) -> np.ndarray | None:
    """Column ``j`` as float64 in one conversion when every cell is a finite number, else None
    (numpy parses text as ``float`` does, so the per-cell scan agrees with it)."""
    try:
        values = np.array([row[j] for row in table.rows]).astype(np.float64)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


def numeric_column(table: Table, name: str, key: str) -> np.ndarray:
    """Column ``name`` as float64; a missing column, an empty cell or a non-number is a
    PyrotrainError naming the column and the file line."""
    j = _column(table, name, key)
    values = _as_numbers(table, j)
    if values is not None:
        return values
    out = np.empty(len(table.rows))
    for i, row in enumerate(table.rows):  # names the first bad cell
        value = _number(row[j])
        if value is None:
            raise PyrotrainError(
                _cell_problem(table, j, i),
                key=key,
                value=name,
                hint="Fix or drop that line, or leave the column out",
            )
        out[i] = value
    return out


def default_features(table: Table, skip: set[str | None]) -> tuple[list[str], list[str]]:
    """The feature columns for ``features: null``, and the text columns left out.

    A column whose every cell is a number is a feature; one with no number at all (names, ids) is
    text and left out. A column with both is an error: a typo or a missing value there must not
    decide whether the column is used.
    """
    features, text, mixed = [], [], []
    for j, name in enumerate(table.header):
        if name in skip:
            continue
        if _as_numbers(table, j) is not None:
            features.append(name)
            continue
        numbers = [_number(row[j]) is not None for row in table.rows]
        if all(numbers):
            features.append(name)
        elif not any(numbers):
            text.append(name)
        else:
            mixed.append((j, numbers))
    if mixed:
        j, numbers = mixed[0]
        i, ok = numbers.index(False), numbers.index(True)
        raise PyrotrainError(
            f"{_cell_problem(table, j, i)}, but line {table.lines[ok]} has a number there, so "
            "whether the column is a feature is unclear",
            key="data.features",
            value=None,
            hint="Fix or drop that line, or list the feature columns yourself: "
            f"data.features=[{','.join(features)}]",
        )
    return features, text


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
    :param features: the columns of ``x``; [] for none (``x`` has zero columns); None: every other
        column whose values are all numbers. Columns with no number at all (names, ids) are left
        out and listed in ``info["text_columns"]``; a column with both numbers and text or empty
        cells is an error, so a typo in one row cannot drop a column.
    :param time: a column to sort the rows by (``t``); the split is then by time: the last
        ``eval_fraction`` of the rows are held out. None: a random split with ``seed``.
    :param dtype: of ``y``: float32 | float64 (the trainer casts floats to trainer.dtype anyway),
        or int64 for class labels and counts (left as is), whose values must be whole numbers.
    :param standardize: centre and scale ``x`` (and a floating ``y``) by the training rows' means
        and standard deviations, which ``info`` keeps to map predictions back.
    """
    if not 0 <= eval_fraction < 1:
        raise PyrotrainError(
            "the evaluation fraction must be in [0, 1)",
            key="data.eval_fraction",
            value=eval_fraction,
        )
    tensors, info = read_columns(path, target, features, time, dtype)
    if time is None:
        data = split(tensors, eval_fraction, seed, info)
    else:
        data = split_by_time(tensors, eval_fraction, info)
    if standardize:
        data = _standardize(data)
    return data


def read_columns(
    path: str,
    target: str,
    features: str | Sequence[str] | None = None,
    time: str | None = None,
    dtype: str = "float32",
    target_required: bool = True,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors ``x``, ``y`` and ``t`` of :func:`load_csv`, all rows, sorted by ``time`` when it
    is given (else in the file's order), and the ``info`` describing them.

    With ``target_required=False`` a file without the target column gives no ``y`` (new rows to
    predict). A time column of ISO dates (:mod:`pyrotrain.data.dates`) gives ``t`` = the step number
    from the first date, and ``info["calendar"]`` to write dates back.
    """
    if dtype not in DTYPES:
        raise PyrotrainError(
            "not a valid data type for y", key="data.dtype", value=dtype, choices=DTYPES
        )
    table = read_csv(path)
    has_target = target_required or target in table.header
    names = _as_names(features, "data.features")
    text: list[str] = []
    if names is None:
        names, text = default_features(table, {target, time})
    named = [("data.target", target if has_target else None), ("data.time", time)]
    for key, name in named + [("data.features", n) for n in names]:
        if name is not None:
            _column(table, name, key)
    if target in names or (time is not None and time in names):
        raise PyrotrainError(
            "the target and time columns cannot also be features", key="data.features", value=names
        )
    columns = [numeric_column(table, n, "data.features") for n in names]
    x = np.stack(columns, -1) if columns else np.zeros((len(table.rows), 0))
    tensors = {"x": torch.as_tensor(x)}
    if has_target:
        tensors["y"] = _target(table, target, dtype)
    info: dict = {
        "source": str(path),
        "target": target,
        "features": names,
        "text_columns": text,
        "rows": len(table.rows),
    }
    if time is not None:
        j = _column(table, time, "data.time")
        dated = parse_dates([row[j] for row in table.rows], table.lines, time, table.path.name)
        if dated is not None:
            t = np.asarray(dated[0], dtype=np.float64)
            info["calendar"] = dated[1].to_info()
            if dated[1].period is not None:
                info["period"] = dated[1].period
        else:
            t = numeric_column(table, time, "data.time")
        order = torch.as_tensor(np.argsort(t, kind="stable"))
        tensors = {k: v[order] for k, v in tensors.items()}
        tensors["t"] = torch.as_tensor(t)[order]
        info["time"] = time
    return tensors, info


def _target(table: Table, target: str, dtype: str) -> torch.Tensor:
    y = numeric_column(table, target, "data.target")
    if dtype != "int64":
        return torch.as_tensor(y, dtype=getattr(torch, dtype))
    if not np.all(y == np.round(y)):
        bad = int(np.flatnonzero(y != np.round(y))[0])
        raise PyrotrainError(
            f"data.dtype=int64 needs whole numbers, but column '{target}' has {y[bad]} on line "
            f"{table.lines[bad]}",
            key="data.dtype",
            value=dtype,
        )
    return torch.as_tensor(y.astype(np.int64))


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
