"""The rows to predict: the run's held-out (or training) rows, or new rows from data overrides,
each named by its time label or its index."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf

from ..errors import PyrotrainError


@dataclass
class Rows:
    """The input rows: the model's tensors, and what names each row in the output."""

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]
    label: str = "index"  # the first output column: time or index
    labels: list[str] = field(default_factory=list)
    split: str = "new"  # eval, train: the run's own rows; new: rows from data overrides


def _time_labels(t: torch.Tensor, info: dict[str, Any]) -> list[str]:
    from ..data import Calendar

    cal = Calendar.from_info(info.get("calendar"))
    if cal is not None:
        return [cal.label(int(round(float(v)))) for v in t]
    return [_number(float(v), t.dtype) for v in t]


def _number(v: float, dtype: torch.dtype) -> str:
    """A time as its dtype holds it: float32 keeps about 7 significant digits."""
    return f"{v:.7g}" if dtype == torch.float32 else f"{v:.12g}"


def labelled(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Rows:
    """``tensors`` as rows named by their time column ``t`` (dates where the data has a
    calendar), or by their index when there is none."""
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
        rows = labelled(dict(tensors), data.info)
        rows.split = split
        return rows
    return _new_rows(run, overrides)


def _new_rows(run: Any, overrides: list[str]) -> Rows:
    from ..build import build_data
    from ..data import read_columns
    from ..schema import Named

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
        data = build_data(Named(name, kwargs), run.config.seed)
        tensors, info = dict(data.train), data.info
    tensors = {
        k: v.to(run.device, run.dtype if v.is_floating_point() else v.dtype)
        for k, v in tensors.items()
    }
    return labelled(tensors, info)


def future_labels(run: Any, horizon: int) -> tuple[str, list[str]]:
    """The time labels of the ``horizon`` steps after the data's last one."""
    from ..data import Calendar

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
