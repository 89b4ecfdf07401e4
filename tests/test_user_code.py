"""Bring your own Pyro code: the scripts in tests/user_scripts/, written as Pyro users write them,
train through pyrotrain unchanged, and their parameters after N steps equal a hand-written
``pyro.infer.SVI`` loop over the same script with the same seed and optimizer."""

from __future__ import annotations

import copy
import subprocess

import pyro
import pytest
import torch
from helpers import (
    BIN,
    PYROTRAIN,
    QUICK,
    REPO,
    TESTS,
    cli_env,
    run_cli,
    run_summary,
    saved_params,
    unconstrained_params,
)
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal

import pyrotrain
from pyrotrain.data import BatchOrder
from pyrotrain.errors import PyrotrainError
from pyrotrain.targets import import_object

SCRIPTS = TESTS / "user_scripts"
STEPS = 15


def script(name: str) -> str:
    return str(SCRIPTS / f"{name}.py")


def user_args(name: str, model="model", guide="guide", data="make_data", *extra: str) -> list[str]:
    s = script(name)
    args = [
        "model=custom",
        f"model.target={s}:{model}",
        "data=python",
        f"data.target={s}:{data}",
        f"trainer.steps={STEPS}",
        *QUICK,
    ]
    if guide is not None:
        args += ["guide=custom", f"guide.target={s}:{guide}"]
    return [*args, *extra]


def trained(args: list[str]) -> dict[str, torch.Tensor]:
    pyrotrain.train(pyrotrain.compose(args))
    return unconstrained_params()


def by_hand(model, guide, args=(), kwargs=None, optim=None, steps=STEPS, batches=None):
    """The user's own loop: seed 0, SVI with Trace_ELBO, one step per batch of arguments."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    optim = optim or pyro.optim.Adam({"lr": 0.01, "betas": (0.9, 0.999)})
    svi = SVI(model, guide, optim, Trace_ELBO())
    for step in range(steps):
        if batches is None:
            svi.step(*args, **(kwargs or {}))
        else:
            a, k = batches(step)
            svi.step(*a, **k)
    return unconstrained_params()


def assert_same(actual: dict, expected: dict, tol: float = 1e-6) -> None:
    assert list(actual) == list(expected) or set(actual) == set(expected), (actual, expected)
    for name in expected:
        diff = (actual[name] - expected[name]).abs().max().item()
        assert diff <= tol, f"{name}: {diff}"


def load(name: str, attr: str):
    return import_object(f"{script(name)}:{attr}")


# -- whole data: functions, a PyroModule, a class with model and guide, pyro.module ------------


def test_functions_with_pyro_param_guide_match_svi():
    got = trained([*user_args("coin"), "+data.heads=7"])
    data = load("coin", "make_data")(heads=7)
    expected = by_hand(load("coin", "model"), load("coin", "guide"), (data,))
    assert_same(got, expected)
    assert set(got) == {"alpha_q", "beta_q"}


def test_pyro_module_with_constructor_arguments_and_an_autoguide_class():
    args = user_args("bayes_regression", "BayesianRegression", None, "make_data")
    args += [
        "+model.in_features=3",
        "guide=custom",
        "guide.target=pyro.infer.autoguide:AutoDiagonalNormal",
    ]
    got = trained(args)
    x, y = load("bayes_regression", "make_data")()
    pyro.set_rng_seed(0)
    model = load("bayes_regression", "BayesianRegression")(3)
    expected = by_hand(model, AutoDiagonalNormal(model), (x, y))
    assert_same(got, expected)


def test_class_with_model_and_guide_methods_used_together():
    args = user_args("gaussian_pair", "Measurements", None, "measurements")
    got = trained([*args, "guide=model", "+model.prior_scale=5.0"])
    pair = load("gaussian_pair", "Measurements")(prior_scale=5.0)
    data = load("gaussian_pair", "measurements")
    assert_same(got, by_hand(pair.model, pair.guide, (data,)))


def test_amortized_guide_with_pyro_module_matches_svi():
    encoder, decoder = load("vae", "encoder"), load("vae", "decoder")
    start = copy.deepcopy((encoder.state_dict(), decoder.state_dict()))
    got = trained(user_args("vae"))
    encoder.load_state_dict(start[0])
    decoder.load_state_dict(start[1])
    expected = by_hand(load("vae", "model"), load("vae", "guide"), (load("vae", "make_data")(),))
    assert_same(got, expected)
    assert {n.split("$$$")[0] for n in got} == {"encoder", "decoder"}


def test_model_that_subsamples_inside_its_plate_gets_the_dict_by_position():
    got = trained(user_args("subsample"))
    data = load("subsample", "make_data")()
    expected = by_hand(load("subsample", "model"), load("subsample", "guide"), (), data)
    assert_same(got, expected)


def test_count_matrix_with_a_number_passed_as_it_is():
    got = trained(user_args("counts", data="make_counts"))
    data = load("counts", "make_counts")()
    expected = by_hand(load("counts", "model"), load("counts", "guide"), (), data)
    assert_same(got, expected)


def test_the_call_is_positional_where_both_signatures_list_the_names():
    run = pyrotrain.build.build(pyrotrain.compose(user_args("counts", data="make_counts")))
    call = run.binding(torch.arange(run.data.size))
    assert len(call.args) == 2 and call.kwargs == {} and call.args[1] == 0.5
    assert call.args[0] is run.data.train["counts"]  # whole data: the tensor itself, unsliced


# -- optimizers: AdagradRMSProp, ClippedAdam, two groups by pyro.param names ------------------


@pytest.mark.parametrize(
    "overrides, optim",
    [
        (
            ["optim=adagrad_rmsprop", "optim.lr=0.1", "optim.groups.all.optimizer.t=0.2"],
            lambda: pyro.optim.AdagradRMSProp({"eta": 0.1, "t": 0.2, "delta": 1e-16}),
        ),
        (
            ["optim=clipped_adam", "optim.lr=0.05", "optim.groups.all.optimizer.clip_norm=0.5"],
            lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5}),
        ),
        (
            [
                "optim=multi",
                "~optim.groups.scales",
                "optim.groups.locs.params=[mu_*]",
                "optim.groups.locs.optimizer.lr=0.05",
                "optim.groups.weights.optimizer.lr=0.002",
            ],
            lambda: pyro.optim.Adam(
                lambda module, name: {"lr": 0.05 if name.startswith("mu_") else 0.002}
            ),
        ),
    ],
    ids=["adagrad_rmsprop", "clipped_adam", "two_groups"],
)
def test_optimizers_match_pyros_on_a_user_script(overrides, optim):
    args = user_args("gaussian_pair", "Measurements", None, "measurements")
    got = trained([*args, "guide=model", *overrides])
    pair = load("gaussian_pair", "Measurements")()
    data = load("gaussian_pair", "measurements")
    assert_same(got, by_hand(pair.model, pair.guide, (data,), optim=optim()))


# -- minibatches -------------------------------------------------------------------------------


def test_minibatches_slice_the_rows_and_pass_size_and_index_where_named():
    got = trained([*user_args("minibatch"), "trainer.batch_size=40"])
    x, y = load("minibatch", "make_data")()
    order = BatchOrder(len(x), 40, seed=0)
    batches = [idx for _, idx in zip(range(STEPS), order, strict=False)]

    def batch(step):
        idx = batches[step][1]
        return (x[idx], y[idx]), {"size": len(x), "index": idx}

    expected = by_hand(load("minibatch", "model"), load("minibatch", "guide"), batches=batch)
    assert_same(got, expected)


def test_minibatches_of_a_model_without_size_scale_its_plate_to_all_rows():
    """The VAE takes x alone: on 16 of 64 rows its data plate's sites count 64/16 times, as
    poutine.scale over the whole model does here (every site of this model is in the plate)."""
    encoder, decoder = load("vae", "encoder"), load("vae", "decoder")
    start = copy.deepcopy((encoder.state_dict(), decoder.state_dict()))
    got = trained([*user_args("vae"), "trainer.batch_size=16"])
    encoder.load_state_dict(start[0])
    decoder.load_state_dict(start[1])
    x = load("vae", "make_data")()
    batches = [idx for _, idx in zip(range(STEPS), BatchOrder(len(x), 16, seed=0), strict=False)]
    scale = pyro.poutine.scale(scale=64 / 16)
    model, guide = scale(load("vae", "model")), scale(load("vae", "guide"))
    expected = by_hand(model, guide, batches=lambda step: ((x[batches[step][1]],), {}))
    encoder.load_state_dict(start[0])
    decoder.load_state_dict(start[1])
    assert_same(got, expected, tol=1e-5)


# -- bad input: exit 2, one paragraph, key and what was found ----------------------------------


U = "tests/user_scripts"
BAD = {
    "no-attribute": (
        f"model.target={U}/coin.py:nothing",
        ["model.target", "no attribute", "guide"],
    ),
    "no-file": (f"model.target={U}/none.py:model", ["model.target", "no Python file"]),
    "no-data": (f"data.target={U}/coin.py:nothing", ["data.target", "no attribute"]),
    "signature": (f"model.target={U}/subsample.py:model", ["model.target", "missing", "'y'"]),
    "not-callable": (f"guide.target={U}/gaussian_pair.py:measurements", ["guide.target", "Tensor"]),
    "sites": (f"guide.target={U}/mismatch.py:guide", ["does not match", "['latent_fairnes']"]),
    "data-type": (f"data.target={U}/coin.py:__name__", ["data.target", "str", "accepted"]),
}


@pytest.mark.parametrize("override, words", BAD.values(), ids=BAD.keys())
def test_bad_user_code_is_refused_naming_the_key(override, words, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths are read from where the command starts
    with pytest.raises(PyrotrainError) as e:
        pyrotrain.train(pyrotrain.compose([*user_args("coin"), override]))
    for word in words:
        assert word in str(e.value), str(e.value)


def test_data_files_npz_pt_parquet(tmp_path, monkeypatch):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = load("subsample", "make_data")()
    np.savez(tmp_path / "d.npz", x=data["x"].numpy(), y=data["y"].numpy())
    torch.save(data, tmp_path / "d.pt")
    x = pa.FixedSizeListArray.from_arrays(data["x"].numpy().ravel(), 3)  # a row per list
    pq.write_table(pa.table({"x": x, "y": data["y"].numpy()}), tmp_path / "d.parquet")
    monkeypatch.chdir(tmp_path)  # relative paths: from where the command starts
    results = []
    for name in ("d.npz", "d.pt", "d.parquet"):
        args = [a for a in user_args("subsample") if not a.startswith("data.target")]
        results.append(trained([*args, f"data.path={name}"]))
    expected = by_hand(load("subsample", "model"), load("subsample", "guide"), (), data)
    for got in results:
        assert_same(got, expected)
    (tmp_path / "d.csv").write_text("x,y\n1,0\n")
    with pytest.raises(PyrotrainError, match="data.path.*\\.npz, \\.npy, \\.pt, \\.parquet"):
        pyrotrain.train(pyrotrain.compose([*args, "data.path=d.csv"]))


# -- the command line, and torchrun ------------------------------------------------------------


def test_a_script_by_file_trains_from_the_command_line_and_its_main_block_never_runs(tmp_path):
    run = tmp_path / "run"
    r = run_cli(*user_args("coin"), f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "must not run" not in r.stdout + r.stderr
    data = load("coin", "make_data")()
    assert_same(saved_params(run), by_hand(load("coin", "model"), load("coin", "guide"), (data,)))


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_ranks_shard_a_whole_data_model_and_match_one_process(tmp_path):
    """Each rank gets half of the coin flips; the model's plate over its half counts twice, so
    the averaged gradients are one process's on all of them."""
    run = tmp_path / "run"
    args = [*user_args("coin"), "+data.heads=6", "+data.tails=6", f"hydra.run.dir={run}"]
    r = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", str(PYROTRAIN), *args],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert run_summary(run)["world_size"] == 2
    two = saved_params(run)
    one = trained(args[:-1])
    assert_same(two, one, tol=1e-5)
