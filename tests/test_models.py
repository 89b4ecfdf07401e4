"""The built-in models (timeseries, sparse, neural, hierarchical) and the CSV loader.

Each model trains a few dozen steps on small data through the Python API; the minibatched ones
are checked for unbiased ELBO scaling (an epoch's minibatch ELBOs average to the full-data ELBO
for a fixed guide).
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch
from helpers import SMALL_CSV
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyrotrain
from pyrotrain.build import build, torch_defaults
from pyrotrain.data import load_csv
from pyrotrain.errors import PyrotrainError
from pyrotrain.loop import Trainer

QUIET = ["trainer.progress=none", "trainer.eval_num_samples=10"]
# Small data so that each model trains in about a second.
SMALL = {
    "timeseries": [],
    "sparse": [
        "data.users=100",
        "data.items=60",
        "data.observations=3000",
        "trainer.batch_size=300",
    ],
    "neural": ["model.hidden=32", "trainer.batch_size=100"],
    "hierarchical": ["data.groups=20", "data.rows=600", "trainer.batch_size=120"],
}
EVAL_KEYS = {
    "timeseries": {"horizon", "mae", "crps", "naive_mae", "seasonal_naive_mae"},
    "sparse": {"n", "rmse", "lppd", "baseline_rmse", "baseline_lppd", "true_noise"},
    "neural": {"n", "elbo_per_image", "iwae_per_image", "baseline_ll_per_image"},
    "hierarchical": {"n", "rmse", "lppd", "pooled_rmse", "unpooled_rmse"},
}


def _full_batch(run, index: torch.Tensor) -> dict:
    batch = {k: v[index] for k, v in run.data.train.items()}
    batch.update(index=index, size=run.data.size)
    accepted = run.model_kwargs
    return batch if accepted is None else {k: v for k, v in batch.items() if k in accepted}


def _loss(run, index: torch.Tensor, elbo=None, seed: int = 0, repeats: int = 1) -> float:
    """The ELBO loss on rows ``index``, with the same random numbers for the globals each call."""
    elbo = elbo or Trace_ELBO()
    total = 0.0
    with torch_defaults(run.dtype, run.device), torch.no_grad():
        for r in range(repeats):
            pyro.set_rng_seed(seed + r)
            total += elbo.loss(run.model, run.guide, **_full_batch(run, index))
    return total / repeats


@pytest.mark.parametrize("name", list(SMALL))
def test_model_trains_and_evaluates(name):
    cfg = pyrotrain.compose([f"model={name}", "trainer.steps=40", *SMALL[name], *QUIET])
    run = build(cfg)
    everything = torch.arange(run.data.size)
    before = _loss(run, everything, repeats=3)  # also creates the parameters
    summary = Trainer(run).fit()
    after = _loss(run, everything, repeats=3)
    assert after < before, (name, before, after)
    assert EVAL_KEYS[name] <= set(summary["eval"]), summary["eval"]
    assert all(torch.isfinite(torch.tensor(float(v))) for v in summary["eval"].values())


@pytest.mark.parametrize("name", [*SMALL, "hierarchical,model.centered=true"])
def test_models_take_vectorized_particles(name):
    name, *extra = name.split(",")
    particles = [
        "elbo.num_particles=3",
        "elbo.vectorize_particles=true",
        "+elbo.max_plate_nesting=1",
    ]
    cfg = pyrotrain.compose(
        [f"model={name}", *extra, "trainer.steps=2", *SMALL[name], *QUIET, *particles]
    )
    assert torch.isfinite(torch.tensor(pyrotrain.train(cfg)["final_loss"]))


def test_timeseries_forecast_beats_naive_and_needs_whole_series():
    cfg = pyrotrain.compose(["model=timeseries", "trainer.steps=150", *QUIET])
    summary = pyrotrain.train(cfg)
    ev = summary["eval"]
    assert ev["horizon"] == 53
    assert ev["mae"] < 0.5 * ev["naive_mae"] and ev["mae"] < 0.5 * ev["seasonal_naive_mae"], ev
    with pytest.raises(PyrotrainError, match="trainer.batch_size"):
        pyrotrain.train(pyrotrain.compose(["model=timeseries", "trainer.batch_size=50", *QUIET]))


def test_timeseries_guide_params_are_dct_marked_by_the_time_plate():
    cfg = pyrotrain.compose(["model=timeseries", "optim=dct_adam", "trainer.steps=2", *QUIET])
    run = build(cfg)
    Trainer(run).fit()
    marks = {
        name: getattr(p, "_pyro_dct_dim", None)
        for g in run.stack.groups
        for name, p in zip(g.names, g.params, strict=True)
    }
    assert marks["AutoNormal.locs.ar"] == -1 and marks["AutoNormal.scales.ar"] == -1
    assert marks["AutoNormal.locs.phi"] is None and marks["AutoNormal.locs.coef_offset"] is None
    assert run.stack.describe()["all"]["optimizer"] == "dct_adam"


def test_neural_model_fills_all_three_multi_groups():
    cfg = pyrotrain.compose(["model=neural", "trainer.steps=2", *SMALL["neural"], *QUIET])
    groups = pyrotrain.train(cfg)["groups"]
    assert groups["locs"]["params"] == 1 and groups["scales"]["params"] == 1  # the pixel bias
    assert groups["weights"]["params"] == 7  # encoder and decoder weights and biases
    names = pyro.get_param_store().keys()
    assert "encoder$$$net.0.weight" in names and "decoder$$$0.weight" in names


def _epoch_average(run, batch_size: int, elbo=None, **kwargs) -> tuple[float, float]:
    """(full-data loss, mean of the minibatch losses over one epoch's partition of the rows)."""
    rows = torch.randperm(run.data.size, generator=torch.Generator().manual_seed(1))
    batches = [b for b in rows.split(batch_size) if len(b) == batch_size]
    rows = torch.cat(batches)  # equal batches cover these rows exactly once
    run.data.train = {k: v[rows] for k, v in run.data.train.items()}
    full = _loss(run, torch.arange(len(rows)), elbo, **kwargs)
    start = torch.arange(len(rows)).split(batch_size)
    parts = [_loss(run, b, elbo, **kwargs) for b in start]
    return full, sum(parts) / len(parts)


def test_hierarchical_minibatch_elbo_is_unbiased():
    """Only global latents: with the same draws, the epoch average equals the full ELBO."""
    cfg = pyrotrain.compose(["model=hierarchical", "trainer.steps=20", *SMALL["hierarchical"],
                             *QUIET])  # fmt: skip
    run = build(cfg)
    Trainer(run).fit()
    full, average = _epoch_average(run, 60)
    assert average == pytest.approx(full, rel=1e-5)


def test_sparse_minibatch_elbo_is_unbiased():
    """Per-user/item rows weighted by their share of the batch: unbiased over an epoch."""
    cfg = pyrotrain.compose(["model=sparse", "trainer.steps=30", *SMALL["sparse"], *QUIET])
    run = build(cfg)
    Trainer(run).fit()
    store = pyro.get_param_store()
    for name in list(store.keys()):
        if name.endswith(("_effect.log_scale", "_factor.log_scale")):
            store[name] = torch.full_like(store[name], math.log(1e-4))  # near-deterministic rows
    full, average = _epoch_average(run, 300, TraceMeanField_ELBO())
    # (A plain subsampled plate, scaling every row by U / batch users, is off by about 4e-3.)
    assert average == pytest.approx(full, rel=2e-4)


def test_neural_minibatch_elbo_is_unbiased():
    cfg = pyrotrain.compose(["model=neural", "trainer.steps=30", *SMALL["neural"], *QUIET])
    run = build(cfg)
    Trainer(run).fit()
    full, average = _epoch_average(run, 100, TraceMeanField_ELBO(), repeats=2)
    assert average == pytest.approx(full, rel=5e-3)


# -- the CSV loader -----------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_defaults_use_every_other_numeric_column():
    data = load_csv(str(SMALL_CSV), target="y", seed=0)
    assert data.info["features"] == ["x1", "x2"]  # 'name' is text: left out
    assert data.train["x"].shape == (120, 2) and data.eval["x"].shape == (30, 2)
    assert data.train["y"].dtype == torch.float32 and "t" not in data.train
    again = load_csv(str(SMALL_CSV), target="y", features="x2", seed=0)
    assert again.train["x"].shape == (120, 1)
    assert torch.equal(again.train["y"], data.train["y"])  # same seed, same split


def test_csv_time_split_sorts_and_holds_out_the_end(tmp_path):
    rows = "\n".join(f"{t},{2 * t + 1},{t % 3}" for t in [5, 3, 9, 1, 7, 2, 8, 4, 6, 0])
    path = _write(tmp_path, "when,value,k\n" + rows + "\n")
    data = load_csv(str(path), target="value", time="when", eval_fraction=0.2)
    assert data.train["t"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert data.eval["t"].tolist() == [8, 9]
    assert data.train["y"].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert data.info["features"] == ["k"]


def test_csv_int_target_standardize_and_no_features(tmp_path):
    path = _write(tmp_path, "a,b,label\n" + "".join(f"{i},{i * i},{i % 2}\n" for i in range(20)))
    data = load_csv(str(path), target="label", dtype="int64", standardize=True, seed=3)
    assert data.train["y"].dtype == torch.int64
    assert torch.allclose(data.train["x"].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert "x" in data.info["standardized"] and "y" not in data.info["standardized"]
    bare = load_csv(str(path), target="a", features=[], eval_fraction=0)
    assert bare.train["x"].shape == (20, 0) and bare.eval == {}


@pytest.mark.parametrize(
    "text,kwargs,match",
    [
        (None, {"target": "y"}, r"data.path.*does not exist"),
        ("a,y\n1,2\n", {"target": "price"}, r"data.target.*no column 'price'.*choices: a, y"),
        ("a,y\n1,2\n", {"target": "y", "features": ["b"]}, r"data.features.*no column 'b'"),
        ("a,y\n1,2\n", {"target": "y", "time": "when"}, r"data.time.*no column 'when'"),
        ("a,y\n1,2\nx,3\n", {"target": "y", "features": ["a"]}, r"Column 'a'.*'x' on line 3"),
        ("a,y\n1,2\n2,\n", {"target": "y"}, r"Column 'y'.*empty cell.*on line 3"),
        ("a,y\n1,nan\n", {"target": "y"}, r"not a finite number"),
        ("1,2\n3,4\n", {"target": "y"}, r"first row.*numbers, not column names"),
        ("a,y\n1,2,3\n", {"target": "y"}, r"line 2.*3 values.*2 columns"),
        ("", {"target": "y"}, r"is empty"),
        ("a,y\n", {"target": "y"}, r"no rows"),
        ("a,y\n1,2.5\n", {"target": "y", "dtype": "int64"}, r"whole numbers.*2.5 on line 2"),
        ("a,y\n1,2\n", {"target": "y", "dtype": "int32"}, r"data.dtype.*float32, float64, int64"),
        ("a,y\n1,2\n", {"target": "y", "features": ["y"]}, r"cannot also be features"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path, text, kwargs, match):
    path = tmp_path / "missing.csv" if text is None else _write(tmp_path, text)
    with pytest.raises(PyrotrainError, match=f"(?i){match}"):
        load_csv(str(path), **kwargs)


# Each bad file: the message names the column and the file line (1-based, header included,
# blank lines counted) so the user can find the cell.
DAMAGED_CSV = [
    # The user's file: read by name, the second 'a' would have silently become a copy of the first.
    (
        "a,a,price\n1,2,3\n4,5,6\n",
        {"target": "price"},
        "data.path",
        r"columns 1 and 2.*both named 'a'.*line 1",
    ),
    (" x ,y,x\n1,2,3\n", {"target": "y"}, "data.path", r"columns 1 and 3.*'x'"),
    ("a,,y\n1,2,3\n", {"target": "y"}, "data.path", r"column 2.*no name.*line 1"),
    ("a,y,  \n1,2,\n", {"target": "y"}, "data.path", r"column 3.*no name.*line 1"),
    (
        "a,y\n1,2\n\n3,4,5\n",
        {"target": "y"},
        "data.path",
        r"line 4.*3 values.*header \(line 1\) names 2",
    ),
    ("a,y\n1,2\n3\n", {"target": "y"}, "data.path", r"line 3.*1 values.*2 columns"),
    # Text in the first data row used to drop the column from the default features.
    (
        "a,b,y\nx,1,2\n3,4,5\n",
        {"target": "y"},
        "data.features",
        r"column 'a'.*'x' on line 2.*line 3 has a number.*data.features=\[b\]",
    ),
    ("a,b,y\n1,1,2\n3,oops,5\n", {"target": "y"}, "data.features", r"column 'b'.*'oops' on line 3"),
    (
        "a,b,y\n1,1,2\n3,,5\n",
        {"target": "y"},
        "data.features",
        r"column 'b'.*empty cell.*on line 3",
    ),
    (
        "a,y\nx,2\n3,4\n",
        {"target": "y", "features": ["a"]},
        "data.features",
        r"column 'a'.*'x' on line 2",
    ),
    (
        "a,y\n1,oops\n3,4\n",
        {"target": "y", "features": []},
        "data.target",
        r"column 'y'.*'oops' on line 2",
    ),
    (
        "a,y\n1,\n3,4\n",
        {"target": "y", "features": []},
        "data.target",
        r"column 'y'.*empty cell.*on line 2",
    ),
    (
        "t,y\nmon,1\n2,3\n3,4\n",
        {"target": "y", "time": "t"},
        "data.time",
        r"column 't'.*'mon' on line 2",
    ),
    (
        "t,y\n1,1\n\n,3\n3,4\n",
        {"target": "y", "time": "t"},
        "data.time",
        r"column 't'.*empty cell.*on line 4",
    ),
]


@pytest.mark.parametrize("text,kwargs,key,match", DAMAGED_CSV)
def test_csv_damage_is_an_error_naming_column_and_line(tmp_path, text, kwargs, key, match):
    path = _write(tmp_path, text)
    with pytest.raises(PyrotrainError, match=f"(?i){match}") as caught:
        load_csv(str(path), **kwargs)
    assert caught.value.key == key and caught.value.exit_code == 2


def test_csv_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\n1,2\nd\u00e9j\u00e0,3\n".encode("latin-1"))
    with pytest.raises(PyrotrainError, match="data.path.*not UTF-8"):
        load_csv(str(path), target="y")


def test_csv_text_only_columns_are_listed_not_features(tmp_path):
    path = _write(tmp_path, "id,a,y\nr1,1,2\nr2,3,4\n,5,6\n")
    data = load_csv(str(path), target="y", eval_fraction=0)
    assert data.info["features"] == ["a"] and data.info["text_columns"] == ["id"]
    # A number in an otherwise text column is as suspect as text in a number column.
    path = _write(tmp_path, "id,a,y\nr1,1,2\n7,3,4\n")
    with pytest.raises(PyrotrainError, match="(?i)column 'id'.*'r1' on line 2.*line 3 has a num"):
        load_csv(str(path), target="y")
    assert load_csv(str(path), target="y", features=["a"]).info["features"] == ["a"]


def test_csv_duplicate_header_fails_the_run_not_the_fit(tmp_path):
    rows = "".join(f"{i},{i % 3},{i - 2 * (i % 3)}\n" for i in range(40))
    path = _write(tmp_path, "a,a,price\n" + rows)
    cfg = pyrotrain.compose(["data=csv", f"data.path={path}", "data.target=price", *QUIET])
    with pytest.raises(PyrotrainError, match="data.path.*both named 'a'"):
        pyrotrain.train(cfg)


def test_csv_directory_is_not_a_file(tmp_path):
    with pytest.raises(PyrotrainError, match="is a directory"):
        load_csv(str(tmp_path), target="y")


def test_data_csv_config_trains_the_default_model():
    cfg = pyrotrain.compose(
        ["data=csv", f"data.path={SMALL_CSV}", "data.target=y", "trainer.steps=5", *QUIET]
    )
    summary = pyrotrain.train(cfg)
    assert summary["eval"]["n"] == 30
    with pytest.raises(PyrotrainError, match="data.target.*required"):
        build(pyrotrain.compose(["data=csv", f"data.path={SMALL_CSV}", *QUIET]))


def test_co2_series_is_bundled_and_split_by_time():
    from pyrotrain.models.timeseries import CO2_CSV, load_co2

    assert CO2_CSV.stat().st_size < 200_000
    assert (CO2_CSV.parent / "SOURCES.md").is_file()
    data = load_co2()
    assert data.size == 473 and data.eval["y"].shape == (53,)
    assert torch.all(data.train["t"].diff() > 0) and data.train["t"][-1] < data.eval["t"][0]
    assert 310 < float(data.train["y"][0]) < 320 and 365 < float(data.eval["y"][-1]) < 375
