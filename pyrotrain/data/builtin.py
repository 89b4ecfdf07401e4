"""The built-in data sets: scikit-learn's diabetes data and synthetic regression data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import PyrotrainError
from .dataset import Dataset, split


def _standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-12)


def sklearn_data_file(name: str) -> Path:
    """A data file bundled with scikit-learn, found without importing scikit-learn (slow)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise PyrotrainError("this dataset needs scikit-learn: pip install scikit-learn")
    return Path(spec.origin).parent / "datasets" / "data" / name


def load_diabetes(eval_fraction: float = 0.2, standardize: bool = True, seed: int = 0) -> Dataset:
    """scikit-learn's bundled diabetes data: 442 patients, 10 features, disease progression."""
    x = torch.as_tensor(np.loadtxt(sklearn_data_file("diabetes_data_raw.csv.gz")))
    y = torch.as_tensor(np.loadtxt(sklearn_data_file("diabetes_target.csv.gz")))
    if standardize:
        x, y = _standardize(x), _standardize(y)
    features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    info = {"source": "scikit-learn diabetes (Efron et al. 2004)", "features": features}
    return split({"x": x, "y": y}, eval_fraction, seed, info)


def make_regression(
    size: int = 10000,
    features: int = 10,
    noise: float = 0.5,
    logistic: bool = False,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Synthetic linear (or logistic) regression data with known weights, for scaling work."""
    if size < 2 or features < 1:
        raise PyrotrainError(
            "data.size must be at least 2 and data.features at least 1",
            key="data",
            value={"size": size, "features": features},
        )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, features, generator=g, dtype=torch.float64)
    w = torch.randn(features, generator=g, dtype=torch.float64)
    logits = x @ w + 0.5
    if logistic:
        y = torch.bernoulli(torch.sigmoid(logits), generator=g)
    else:
        y = logits + noise * torch.randn(size, generator=g, dtype=torch.float64)
    info = {"source": "synthetic", "true_weight": w.tolist()}
    return split({"x": x, "y": y}, eval_fraction, seed, info)
