"""The optimizer stack against Pyro's own optimizers, schedulers and wrappers."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from helpers import assert_close, default_dtype, one_group, run_svi, unconstrained_params
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from toy_models import LateParam, NetRegression, local_latent_model, make_series, series_model

from pyrotrain.data import make_regression
from pyrotrain.errors import PyrotrainError, PyrotrainWarning
from pyrotrain.optim import Adam, OptimizerStack
from pyrotrain.registry import FOREACH_BY_DEFAULT, OPTIMIZERS

STEPS = 50
# how far the stack's params may be from pyro.optim's, entry by entry (relative and absolute)
TOL = {torch.float32: 1e-6, torch.float64: 1e-10}


def local_batches(dtype, n=40, batch=10, steps=STEPS):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
    y = (x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.3).to(dtype)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:batch]
        yield {"x": x[idx], "y": y[idx], "index": idx, "size": n}


def series_batches(dtype, steps=STEPS):
    y = make_series(37, dtype=dtype)  # 37 needs padding to next_fast_len(37) = 40
    for _ in range(steps):
        yield {"y": y}


EQUIVALENCE = {
    # case: (pyro optimizer, our config, model, batches, pyro-side DCT plate)
    "adagrad_rmsprop": (
        lambda: pyro.optim.AdagradRMSProp({"eta": 0.3, "t": 0.2}),
        one_group("adagrad_rmsprop", eta=0.3, t=0.2),
        local_latent_model,
        local_batches,
        None,
    ),
    "clipped_adam": (
        lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5, "lrd": 0.99}),
        one_group("clipped_adam", lr=0.05, clip_norm=0.5, lrd=0.99),
        local_latent_model,
        local_batches,
        None,
    ),
    "adam": (
        lambda: pyro.optim.Adam({"lr": 0.05}),
        one_group("adam", lr=0.05),
        local_latent_model,
        local_batches,
        None,
    ),
    "sgd": (
        lambda: pyro.optim.SGD({"lr": 1e-3, "momentum": 0.9}),
        one_group("sgd", lr=1e-3, momentum=0.9),
        local_latent_model,
        local_batches,
        None,
    ),
    "dct_adam_unmarked": (
        lambda: pyro.optim.DCTAdam({"lr": 0.05}),
        one_group("dct_adam", lr=0.05),
        series_model,
        series_batches,
        None,
    ),
    "dct_adam_marked_by_plate": (
        lambda: pyro.optim.DCTAdam({"lr": 0.05}),
        {**one_group("dct_adam", lr=0.05), "dct": [{"plate": "time"}]},
        series_model,
        series_batches,
        "time",
    ),
    "dct_adam_marked_by_pattern": (
        lambda: pyro.optim.DCTAdam({"lr": 0.05}),
        {**one_group("dct_adam", lr=0.05), "dct": [{"params": ["AutoNormal.*.step"], "dim": -1}]},
        series_model,
        series_batches,
        "time",
    ),
    "dct_adam_subsample_aware": (
        lambda: pyro.optim.DCTAdam({"lr": 0.05, "subsample_aware": True}),
        one_group("dct_adam", lr=0.05, subsample_aware=True),
        local_latent_model,
        local_batches,
        None,
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(EQUIVALENCE))
def test_stack_matches_pyro_optim(case, dtype):
    make_pyro, config, model, batches, plate = EQUIVALENCE[case]
    with default_dtype(dtype):
        theirs = run_svi(model, batches(dtype), make_pyro(), mark_plate=plate)
        stack = OptimizerStack.from_config(config)
        ours = run_svi(model, batches(dtype), stack)  # marked by stack.mark_guide
    assert_close(ours, theirs, TOL[dtype], atol=TOL[dtype])
    assert len(stack.groups[0].optimizer.param_groups[0]["params"]) == len(ours)


def test_marked_params_take_the_dct_update():
    with default_dtype(torch.float64):
        config = {**one_group("dct_adam", lr=0.05), "dct": [{"plate": "time"}]}
        marked = run_svi(
            series_model,
            series_batches(torch.float64),
            OptimizerStack.from_config(config),
        )
        plain = run_svi(
            series_model,
            series_batches(torch.float64),
            OptimizerStack.from_config(one_group("dct_adam", lr=0.05)),
        )
    # Only the time-series params differ: the rest follow the same (plain) update at first.
    assert not torch.allclose(marked["AutoNormal.locs.step"], plain["AutoNormal.locs.step"])
    store = pyro.get_param_store()
    assert (
        getattr(store.get_param("AutoNormal.locs.step").unconstrained(), "_pyro_dct_dim", None)
        is None
    )  # the unmarked run left it unmarked


@pytest.mark.parametrize("plate", ["time", "tiem"])
def test_a_plate_mark_that_marks_nothing_says_so(plate):
    """In one's own SVI script without stack.mark_guide, or with a plate name the model lacks,
    ``dct: [{plate: ...}]`` would mark nothing and DCTAdam would quietly act as Adam."""
    stack = OptimizerStack.from_config(
        {**one_group("dct_adam", lr=0.05), "dct": [{"plate": plate}]}
    )
    pyro.clear_param_store()
    guide = AutoNormal(series_model)
    if plate == "tiem":
        guide = stack.mark_guide(guide)
    svi = SVI(series_model, guide, stack, Trace_ELBO())
    with pytest.warns(PyrotrainWarning, match="marked no parameter") as info:
        svi.step(make_series(dtype=torch.float32))
    message = str(info[0].message)
    assert f"plate named '{plate}'" in message and "stack.mark_guide(guide)" in message


def test_exponential_schedule_matches_pyro_exponential_lr():
    pyro_sched = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.9}
    )
    theirs_lr = []

    def pyro_after():
        pyro_sched.step()
        theirs_lr.append(next(iter(pyro_sched.optim_objs.values())).optimizer.param_groups[0]["lr"])

    theirs = run_svi(
        local_latent_model,
        local_batches(torch.float32, steps=20),
        pyro_sched,
        after_step=pyro_after,
    )
    stack = OptimizerStack.from_config(
        one_group("adam", lr=0.1), {"name": "exponential", "gamma": 0.9}
    )
    ours_lr = []

    def ours_after():
        stack.step()
        ours_lr.append(stack.lrs()["all"])

    ours = run_svi(
        local_latent_model, local_batches(torch.float32, steps=20), stack, after_step=ours_after
    )
    assert ours_lr == pytest.approx(theirs_lr, rel=1e-12)
    assert ours_lr[-1] == pytest.approx(0.1 * 0.9**20)
    assert_close(ours, theirs, TOL[torch.float32], atol=TOL[torch.float32])


def _stack_with_one_param(scheduler, lr=0.1, total_steps=None):
    stack = OptimizerStack.from_config(one_group("sgd", lr=lr), scheduler, total_steps=total_steps)
    p = pyro.param("w", torch.zeros(3)).unconstrained()
    p.grad = torch.ones(3)
    stack({p})
    return stack


def test_plateau_lowers_lr_only_when_loss_stalls():
    plateau = {"name": "plateau", "patience": 3, "factor": 0.5, "threshold": 1e-4}
    improving = _stack_with_one_param(plateau)
    for i in range(20):
        improving.step(loss=100.0 - i)
    assert improving.lrs()["all"] == pytest.approx(0.1)
    pyro.clear_param_store()
    stalled = _stack_with_one_param(plateau)
    for _ in range(5):
        stalled.step(loss=100.0)
    assert stalled.lrs()["all"] == pytest.approx(0.05)


def test_warmup_ramps_linearly_then_cosine():
    warmup = {
        "name": "warmup",
        "warmup_steps": 10,
        "start_factor": 0.1,
        "then": {"name": "cosine", "eta_min": 0.0},
    }
    stack = _stack_with_one_param(warmup, lr=1.0, total_steps=30)
    lrs = [stack.lrs()["all"]]
    for _ in range(30):
        stack.step()
        lrs.append(stack.lrs()["all"])
    assert lrs[:11] == pytest.approx([0.1 + 0.09 * k for k in range(11)])
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


MULTI = {
    "groups": {
        "locs": {"params": ["*.locs.*"], "optimizer": {"name": "adam", "lr": 0.01}},
        "scales": {"params": ["regex:.*\\.scales\\..*"], "optimizer": {"name": "sgd", "lr": 1e-3}},
        "weights": {"params": ["*"], "optimizer": {"name": "adam", "lr": 1e-3}},
    }
}


def _net_batches(steps=5):
    data = make_regression(size=64, features=3)
    for _ in range(steps):
        yield {"x": data.train["x"].float(), "y": data.train["y"].float()}


def test_groups_get_one_optimizer_each_first_match_wins():
    data = make_regression(size=64, features=3)
    stack = OptimizerStack.from_config(MULTI)
    run_svi(NetRegression(data), _net_batches(), stack)
    by_name = {g.spec.name: g for g in stack.groups}
    assert type(by_name["locs"].optimizer) is Adam
    assert type(by_name["scales"].optimizer) is torch.optim.SGD
    assert sorted(by_name["locs"].names) == ["AutoNormal.locs.bias", "AutoNormal.locs.sigma"]
    assert sorted(by_name["scales"].names) == ["AutoNormal.scales.bias", "AutoNormal.scales.sigma"]
    assert sorted(by_name["weights"].names) == [
        "net$$$0.bias",
        "net$$$0.weight",
        "net$$$2.bias",
        "net$$$2.weight",
    ]
    assert stack.lrs() == {"locs": 0.01, "scales": 1e-3, "weights": 1e-3}
    assert stack.describe()["weights"]["params"] == 4


@pytest.mark.parametrize(
    "name,args",
    [
        ("adam", {"lr": 0.1}),
        ("clipped_adam", {"lr": 0.1}),
        ("dct_adam", {"lr": 0.1}),
        ("adagrad_rmsprop", {"eta": 0.1}),
    ],
)
def test_params_created_later_join_their_group_and_absent_params_stay_put(name, args):
    data = make_regression(size=20, features=1)
    model = LateParam(data, start=5)
    stack = OptimizerStack.from_config(one_group(name, **args))
    batch = {"x": data.train["x"].float(), "y": data.train["y"].float() + 3.0}
    svi = SVI(model, lambda **kw: None, stack, Trace_ELBO())
    for _ in range(5):
        svi.step(**batch)
    optimizer = stack.groups[0].optimizer
    assert len(optimizer.param_groups[0]["params"]) == 1
    for _ in range(5):
        svi.step(**batch)
    assert stack.groups[0].optimizer is optimizer
    assert stack.groups[0].names == ["a", "b"]
    assert len(optimizer.param_groups[0]["params"]) == 2
    assert pyro.param("b").item() != 0.0

    # A parameter missing from a step's trace is not moved by that step (as in pyro.optim),
    # even though Adam has momentum for it.
    a = pyro.param("a").unconstrained()
    b = pyro.param("b").unconstrained()
    before = b.detach().clone()
    a.grad = torch.ones(())
    stack({a})
    assert torch.equal(b.detach(), before)


def test_state_dict_round_trip_continues_exactly():
    config = {
        "groups": {
            "locs": {"params": ["*.locs.*"], "optimizer": {"name": "clipped_adam", "lr": 0.05}},
            "rest": {
                "params": ["*"],
                "optimizer": {"name": "adam", "lr": 0.02},
                "scheduler": {"name": "exponential", "gamma": 0.95},
            },
        }
    }
    straight_stack = OptimizerStack.from_config(config)
    straight = run_svi(
        local_latent_model,
        local_batches(torch.float32, steps=20),
        straight_stack,
        after_step=lambda: straight_stack.step(),
    )

    # 10 steps, save, then a restart from the saved state for the last 10.
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    head = OptimizerStack.from_config(config)
    guide = AutoNormal(local_latent_model)
    svi = SVI(local_latent_model, guide, head, Trace_ELBO())
    batches = list(local_batches(torch.float32, steps=20))
    for batch in batches[:10]:
        svi.step(**batch)
        head.step()
    saved_params = pyro.get_param_store().get_state()
    saved_stack = head.state_dict()
    rng = torch.get_rng_state()

    pyro.clear_param_store()
    pyro.get_param_store().set_state(saved_params)
    tail = OptimizerStack.from_config(config)
    tail.load_state_dict(saved_stack)
    guide = AutoNormal(local_latent_model)
    guide._setup_prototype(**batches[10])  # AutoNormal's lazy setup draws random numbers
    torch.set_rng_state(rng)
    svi = SVI(local_latent_model, guide, tail, Trace_ELBO())
    for batch in batches[10:]:
        svi.step(**batch)
        tail.step()
    resumed = unconstrained_params()
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    assert tail.lrs() == straight_stack.lrs()


def test_frozen_group_does_not_move_and_clipping_bounds_the_step():
    config = {
        "groups": {
            "frozen": {"params": ["w"], "frozen": True, "optimizer": "sgd"},
            "clipped": {
                "params": ["v"],
                "optimizer": {"name": "sgd", "lr": 1.0},
                "clip": {"norm": 0.01},
            },
        }
    }
    stack = OptimizerStack.from_config(config)
    w = pyro.param("w", torch.zeros(3)).unconstrained()
    v = pyro.param("v", torch.zeros(4)).unconstrained()
    w.grad, v.grad = torch.ones(3), torch.full((4,), 5.0)
    norms = stack.grad_norms({w, v})
    assert norms["clipped"] == pytest.approx(10.0)
    stack({w, v})
    assert torch.equal(w.detach(), torch.zeros(3))
    assert v.detach().norm().item() == pytest.approx(0.01, rel=1e-5)
    assert "frozen" not in stack.lrs()


def test_user_mistakes_raise_clear_errors():
    with pytest.raises(PyrotrainError, match="'adamz'.*Valid choices: adagrad_rmsprop"):
        OptimizerStack.from_config(one_group("adamz"))
    with pytest.raises(PyrotrainError, match="'cosinus'.*Valid choices: step"):
        OptimizerStack.from_config(one_group("adam"), {"name": "cosinus"})
    with pytest.raises(PyrotrainError, match="lr.*Must be a positive number"):
        OptimizerStack.from_config(one_group("adam", lr=0))
    with pytest.raises(PyrotrainError, match="lr.*'abc'"):
        OptimizerStack.from_config(one_group("adam", lr="abc"))
    with pytest.raises(PyrotrainError, match="'paramz' is not a group setting"):
        OptimizerStack.from_config({"groups": {"g": {"paramz": ["*"], "optimizer": "adam"}}})
    with pytest.raises(PyrotrainError, match="regular expression"):
        OptimizerStack.from_config({"groups": {"g": {"params": ["regex:("], "optimizer": "adam"}}})

    stack = OptimizerStack.from_config(
        {"groups": {"locs": {"params": ["*.locs.*"], "optimizer": "adam"}}}
    )
    p = pyro.param("other", torch.zeros(2)).unconstrained()
    with pytest.raises(PyrotrainError, match="(?i)parameter 'other' matches no group"):
        stack({p})

    # checked when the stack is configured, before any parameter exists
    with pytest.raises(PyrotrainError, match="takes no argument 'betaz'.*lr, betas"):
        OptimizerStack.from_config(one_group("adam", betaz=1))


def test_import_path_and_registered_optimizers():
    import pyrotrain

    class Halver(torch.optim.SGD):
        def __init__(self, params, lr=0.5):
            super().__init__(params, lr=lr)

    pyrotrain.register_optimizer("halver_for_test", Halver)
    stack = OptimizerStack.from_config(one_group("halver_for_test"))
    p = pyro.param("w", torch.ones(2)).unconstrained()
    p.grad = torch.ones(2)
    stack({p})
    assert torch.equal(p.detach(), torch.full((2,), 0.5))
    stack = OptimizerStack.from_config(one_group("torch.optim:Adamax", lr=0.1))
    stack({p})
    assert type(stack.groups[0].optimizer) is torch.optim.Adamax


def test_scheduler_on_an_optimizer_without_lr_is_a_clear_error():
    # refused when the stack is configured, before any parameter exists
    with pytest.raises(PyrotrainError, match="adagrad_rmsprop's step size is 'eta'"):
        OptimizerStack.from_config(one_group("adagrad_rmsprop", eta=0.1), {"name": "plateau"})


@pytest.mark.parametrize("name", sorted(FOREACH_BY_DEFAULT))
def test_foreach_default_steps_bitwise_like_the_per_tensor_loop(name):
    """The stack turns on foreach for these torch optimizers: that must not change one bit."""
    cls = OPTIMIZERS.get(name)
    start = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in
             enumerate([(3,), (4, 5), ()])]  # fmt: skip
    results = []
    for foreach in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        extra = {"momentum": 0.9} if name == "sgd" else {}
        opt = cls(params, lr=0.01, foreach=foreach, **extra)
        g = torch.Generator().manual_seed(1)
        for _ in range(30):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
