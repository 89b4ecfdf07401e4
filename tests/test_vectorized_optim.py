"""Equivalence of pyrotrain's multi-tensor optimizers with Pyro's per-parameter ones (and, for
Adam and AdamW, with torch's per-tensor loop, which ``pyro.optim.Adam`` runs per parameter).

Both optimizers are driven with the same deterministic sequence of gradients, each
computed from the optimizer's *own* current parameters (``grad = f(param) + noise``),
so whole trajectories are compared, not single steps.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from helpers import assert_close, default_dtype, run_svi
from pyro.ops.tensor_utils import next_fast_len
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam
from pyro.optim.dct_adam import DCTAdam as PyroDCTAdam

from pyrotrain.optim.adagrad_rmsprop import AdagradRMSProp
from pyrotrain.optim.adam import Adam, AdamW
from pyrotrain.optim.clipped_adam import ClippedAdam
from pyrotrain.optim.dct_adam import DCTAdam

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: intra-op threads only add overhead (and spin on a busy machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


DTYPES = [torch.float32, torch.float64]

# (shape, _pyro_dct_dim, param group)
PLAIN_SPECS = [
    ((), None, 0),
    ((1,), None, 0),
    ((3,), None, 1),
    ((4, 5), None, 0),
    ((2, 3, 4), None, 1),
    ((5000,), None, 0),  # above gather_max_numel: list mode
    ((1, 1), None, 1),
]
DCT_SPECS = [
    ((7,), -1, 0),  # next_fast_len(7) = 8: padded
    ((3, 7), -1, 0),  # batched with the previous one
    ((10,), -1, 1),  # no padding
    ((11, 3), -2, 0),  # next_fast_len(11) = 12
    ((2, 11, 3), -2, 0),  # batched with the previous one
    ((4, 6), -2, 1),
    ((2, 5, 13), -1, 1),  # next_fast_len(13) = 15
    ((9, 1), -2, 1),
]


def test_specs_cover_padding():
    assert any(next_fast_len(s[d]) != s[d] for s, d, _ in DCT_SPECS)
    assert any(next_fast_len(s[d]) == s[d] for s, d, _ in DCT_SPECS)


# --------------------------------------------------------------------------- problem
def make_params(specs, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape, dct_dim, _ in specs:
        p = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
        if dct_dim is not None:
            p._pyro_dct_dim = dct_dim
        params.append(p)
    return params


def clone_params(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        for attr in ("_pyro_dct_dim",):
            if hasattr(p, attr):
                setattr(q, attr, getattr(p, attr))
        out.append(q)
    return out


def param_groups(params, specs, group_kwargs):
    groups = [{"params": [], **kw} for kw in group_kwargs]
    for p, (_, _, gi) in zip(params, specs, strict=True):
        groups[gi]["params"].append(p)
    return [g for g in groups if g["params"]]


class GradientSequence:
    """Deterministic gradients ``grad = 0.7 * (param - target) + noise``.

    The noise is large enough to exceed ``clip_norm`` in places, some entries are
    exactly zero, and some params get no gradient (``None``) on some steps.
    """

    def __init__(self, specs, dtype, seed=1, none_prob=0.15, subsample_dims=None):
        self.specs = specs
        self.dtype = dtype
        self.seed = seed
        self.none_prob = none_prob
        self.subsample_dims = subsample_dims or {}
        g = torch.Generator().manual_seed(seed)
        self.targets = [torch.randn(s, generator=g, dtype=dtype) for s, _, _ in specs]

    def apply(self, step, *param_lists):
        g = torch.Generator().manual_seed(self.seed * 100003 + step)
        for i, (shape, _, _) in enumerate(self.specs):
            none = torch.rand((), generator=g).item() < self.none_prob
            noise = 3.0 * torch.randn(shape, generator=g, dtype=self.dtype)
            zeros = torch.rand(shape, generator=g) < 0.2
            subsample = None
            if i in self.subsample_dims:
                subsample = {}
                for dim in self.subsample_dims[i]:
                    size = shape[dim]
                    k = int(torch.randint(1, size + 1, (), generator=g))
                    subsample[dim] = torch.randperm(size, generator=g)[:k].sort().values
            for params in param_lists:
                p = params[i]
                if subsample is not None:
                    p._pyro_subsample = subsample
                if none:
                    p.grad = None
                    continue
                grad = 0.7 * (p.detach() - self.targets[i]) + noise
                p.grad = grad.masked_fill(zeros, 0.0)


def assert_states_close(ours, theirs, params_ours, params_theirs, rtol):
    """Same params have state, with the same keys and (close) values."""
    for po, pt in zip(params_ours, params_theirs, strict=True):
        so, st = ours.state.get(po, {}), theirs.state.get(pt, {})
        assert list(so) == list(st)
        for key in st:
            if isinstance(st[key], torch.Tensor):
                assert_close(so[key], st[key], rtol, f"state {key}")
            else:
                assert type(so[key]) is type(st[key]) and so[key] == st[key], key


def run_pair(ours, theirs, p_ours, p_theirs, gradients, steps, rtol, start=0):
    for step in range(start, start + steps):
        gradients.apply(step, p_ours, p_theirs)
        ours.step()
        theirs.step()
        for i, (a, b) in enumerate(zip(p_ours, p_theirs, strict=True)):
            # Pyro clamps p.grad in place: the mutation must match too
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                assert_close(a.grad, b.grad, rtol, f"grad {i} step {step}")
    for i, (a, b) in enumerate(zip(p_ours, p_theirs, strict=True)):
        assert_close(a.detach(), b.detach(), rtol, f"param {i} {tuple(a.shape)}")


# --------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("list_mode", [False, True], ids=["default", "list-mode"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adagrad_rmsprop_matches_pyro(dtype, list_mode):
    specs = PLAIN_SPECS
    groups = [dict(eta=0.3, t=0.2), dict(eta=0.05, t=0.1, delta=1e-3)]
    p_ours = make_params(specs, dtype)
    p_theirs = clone_params(p_ours)
    ours = AdagradRMSProp(param_groups(p_ours, specs, groups))
    if list_mode:
        ours.gather_max_numel = 0
    theirs = PyroAdagradRMSProp(param_groups(p_theirs, specs, groups))
    gradients = GradientSequence(specs, dtype)
    run_pair(ours, theirs, p_ours, p_theirs, gradients, 100, RTOL[dtype])
    assert_states_close(ours, theirs, p_ours, p_theirs, RTOL[dtype])


@pytest.mark.parametrize("list_mode", [False, True], ids=["default", "list-mode"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clipped_adam_matches_pyro(dtype, list_mode):
    specs = PLAIN_SPECS
    groups = [
        dict(lr=0.05, lrd=0.99, clip_norm=2.0),
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, centered_variance=True),
    ]
    p_ours = make_params(specs, dtype)
    p_theirs = clone_params(p_ours)
    ours = ClippedAdam(param_groups(p_ours, specs, groups), clip_norm=3.0)
    if list_mode:
        ours.gather_max_numel = 0
    theirs = PyroClippedAdam(param_groups(p_theirs, specs, groups), clip_norm=3.0)
    gradients = GradientSequence(specs, dtype)
    run_pair(ours, theirs, p_ours, p_theirs, gradients, 100, RTOL[dtype])
    assert_states_close(ours, theirs, p_ours, p_theirs, RTOL[dtype])
    for go, gt in zip(ours.param_groups, theirs.param_groups, strict=True):
        assert go["lr"] == gt["lr"]  # lr *= lrd once per step() per group


@pytest.mark.parametrize("batch_dct", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dct_adam_matches_pyro(dtype, batch_dct):
    specs = PLAIN_SPECS + DCT_SPECS
    groups = [dict(lr=0.05, lrd=0.995, clip_norm=2.0), dict(lr=0.03, betas=(0.8, 0.95))]
    p_ours = make_params(specs, dtype)
    p_theirs = clone_params(p_ours)
    ours = DCTAdam(param_groups(p_ours, specs, groups), batch_dct=batch_dct)
    theirs = PyroDCTAdam(param_groups(p_theirs, specs, groups))
    # _pyro_subsample is ignored unless subsample_aware
    gradients = GradientSequence(specs, dtype, subsample_dims={3: [-1], 10: [-1]})
    run_pair(ours, theirs, p_ours, p_theirs, gradients, 100, RTOL[dtype])
    assert_states_close(ours, theirs, p_ours, p_theirs, RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dct_adam_subsample_aware_matches_pyro(dtype):
    specs = [
        ((6,), None, 0),
        ((5, 4), None, 0),
        ((3, 4, 2), None, 1),
        ((1,), None, 1),
        ((8,), None, 0),  # unsubsampled params of a subsample-aware group
        ((7, 2), -2, 0),
        ((3, 7), -1, 0),
    ]
    subsample_dims = {0: [-1], 1: [-2], 2: [-3, -1], 3: [-1]}
    groups = [dict(lr=0.05, subsample_aware=True, lrd=0.99), dict(lr=0.1, subsample_aware=True)]
    p_ours = make_params(specs, dtype)
    p_theirs = clone_params(p_ours)
    ours = DCTAdam(param_groups(p_ours, specs, groups))
    theirs = PyroDCTAdam(param_groups(p_theirs, specs, groups))
    gradients = GradientSequence(specs, dtype, subsample_dims=subsample_dims)
    run_pair(ours, theirs, p_ours, p_theirs, gradients, 100, RTOL[dtype])
    assert_states_close(ours, theirs, p_ours, p_theirs, RTOL[dtype])
    # per-element step counts
    assert ours.state[p_ours[0]]["step"].shape == (6,)


def test_dct_adam_bad_dct_dim_fails_like_pyro():
    for cls in (PyroDCTAdam, DCTAdam):
        p = torch.randn(4, 5, requires_grad=True)
        p._pyro_dct_dim = 1  # Pyro asserts negative dims
        p.grad = torch.randn(4, 5)
        with pytest.raises(AssertionError):
            cls([p]).step()


def test_grad_none_params_get_no_state():
    for ours_cls, pyro_cls in ((ClippedAdam, PyroClippedAdam), (DCTAdam, PyroDCTAdam)):
        a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
        a.grad = torch.ones(3)
        ours = ours_cls([a, b])
        ours.step()
        c, d = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
        c.grad = torch.ones(3)
        theirs = pyro_cls([c, d])
        theirs.step()
        assert b not in ours.state and d not in theirs.state
        assert torch.equal(a, c)
        # a param that gets its first gradient later joins the flat buffers
        b.grad, d.grad = torch.ones(2), torch.ones(2)
        ours.step()
        theirs.step()
        assert torch.equal(a, c) and torch.equal(b, d)
        assert ours.state[b]["step"] == theirs.state[d]["step"] == 1


def test_step_closure_returns_loss():
    p = torch.ones(3, requires_grad=True)
    opt = ClippedAdam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert p.detach().lt(1).all()


# --------------------------------------------------------------------------- state_dict
# name: (ours, Pyro's, specs, kwargs, our extra kwargs, subsampled dims)
STATE_CASES = {
    "AdagradRMSProp": (AdagradRMSProp, PyroAdagradRMSProp, PLAIN_SPECS, {"eta": 0.2}, {}, {}),
    "ClippedAdam": (
        ClippedAdam,
        PyroClippedAdam,
        PLAIN_SPECS,
        {"lr": 0.05, "weight_decay": 0.01, "clip_norm": 2.0},
        {},
        {},
    ),
    "DCTAdam": (
        DCTAdam,
        PyroDCTAdam,
        PLAIN_SPECS + DCT_SPECS,
        {"lr": 0.05, "subsample_aware": True},
        {},
        {1: [-1], 3: [-1]},
    ),
    "DCTAdam-batched": (
        DCTAdam,
        PyroDCTAdam,
        PLAIN_SPECS + DCT_SPECS,
        {"lr": 0.05, "subsample_aware": True},
        {"batch_dct": True},
        {1: [-1], 3: [-1]},
    ),
}


@pytest.mark.parametrize("via", ["memory", "torch.save"])
@pytest.mark.parametrize("name", list(STATE_CASES))
def test_state_dict_round_trip_is_bitwise(name, via):
    cls, _, specs, kwargs, extra, subsample_dims = STATE_CASES[name]
    kwargs = {**kwargs, **extra}
    dtype = torch.float32
    params = make_params(specs, dtype)
    groups = [dict(), dict(lrd=0.98)] if "lr" in kwargs else [dict(), dict(eta=0.1)]
    opt = cls(param_groups(params, specs, groups), **kwargs)
    gradients = GradientSequence(specs, dtype, subsample_dims=subsample_dims)
    for step in range(50):
        gradients.apply(step, params)
        opt.step()

    resumed_params = clone_params(params)
    resumed = cls(param_groups(resumed_params, specs, groups), **kwargs)
    state = opt.state_dict()
    if via == "torch.save":
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=False)
    resumed.load_state_dict(state)

    for step in range(50, 100):
        gradients.apply(step, params, resumed_params)
        opt.step()
        resumed.step()
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), resumed.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert list(sa["state"]) == list(sb["state"])
    for k in sa["state"]:
        for key, v in sa["state"][k].items():
            w = sb["state"][k][key]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w


@pytest.mark.parametrize("direction", ["pyro->ours", "ours->pyro"])
@pytest.mark.parametrize("name", list(STATE_CASES))
def test_state_dict_interchangeable_with_pyro(name, direction):
    ours_cls, pyro_cls, specs, kwargs, extra, subsample_dims = STATE_CASES[name]

    def ours(params):
        return ours_cls(params, **kwargs, **extra)

    def theirs(params):
        return pyro_cls(params, **kwargs)

    first, second = (theirs, ours) if direction == "pyro->ours" else (ours, theirs)
    dtype = torch.float64
    p_ref = make_params(specs, dtype)
    p_first = clone_params(p_ref)
    ref = theirs(p_ref)
    opt = first(p_first)
    gradients = GradientSequence(specs, dtype, subsample_dims=subsample_dims)
    run_pair(opt, ref, p_first, p_ref, gradients, 30, RTOL[dtype])
    p_second = clone_params(p_first)
    opt2 = second(p_second)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    run_pair(opt2, ref, p_second, p_ref, gradients, 30, RTOL[dtype], start=30)


def test_optimizers_leave_out_the_dynamo_import():
    """torch's Optimizer imports torch._dynamo on the first add_param_group or state_dict call;
    ours skip that import, which would otherwise come before every run's first step."""
    code = """
import sys
import torch
from pyrotrain.optim import AdagradRMSProp, Adam, ClippedAdam, DCTAdam
for cls in (Adam, AdagradRMSProp, ClippedAdam, DCTAdam):
    p = torch.zeros(3, requires_grad=True)
    opt = cls([p])
    p.grad = torch.ones(3)
    opt.step()
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    opt.load_state_dict(opt.state_dict())
    opt.step()
assert "torch._dynamo" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_deepcopy_and_add_param_group():
    p = torch.randn(4, requires_grad=True)
    opt = DCTAdam([p], lr=0.1, batch_dct=True)
    p.grad = torch.ones(4)
    opt.step()
    q = torch.randn(3, requires_grad=True)
    opt.add_param_group({"params": [q], "lr": 0.2})
    q.grad = torch.ones(3)
    opt.step()
    assert opt.state[p]["step"] == 2 and opt.state[q]["step"] == 1
    opt2 = copy.deepcopy(opt)
    assert opt2.batch_dct is True
    assert (
        AdagradRMSProp([torch.zeros(2, requires_grad=True)]).state_dict()["state"][0]["step"]
        == (
            PyroAdagradRMSProp([torch.zeros(2, requires_grad=True)]).state_dict()["state"][0][
                "step"
            ]
        )
    )


# --------------------------------------------------------------------------- Adam, AdamW
# name: (ours, torch's, constructor kwargs, group kwargs)
ADAM_CASES = {
    "plain": (Adam, torch.optim.Adam, {"lr": 0.05}, [{}, {"lr": 0.01, "betas": (0.8, 0.99)}]),
    "weight-decay": (
        Adam,
        torch.optim.Adam,
        {"lr": 0.05, "weight_decay": 0.1},
        [{}, {"eps": 1e-3}],
    ),
    "amsgrad": (Adam, torch.optim.Adam, {"lr": 0.05}, [{"amsgrad": True}, {}]),
    "maximize": (Adam, torch.optim.Adam, {"lr": 0.05, "maximize": True}, [{}, {}]),
    "decoupled": (
        Adam,
        torch.optim.Adam,
        {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True},
        [{}, {"amsgrad": True}],
    ),
    "adamw": (AdamW, torch.optim.AdamW, {"lr": 0.05}, [{}, {"weight_decay": 0.3}]),
}


def assert_adam_states_equal(ours, theirs, p_ours, p_theirs):
    """Same params have state, with the same keys; tensors bitwise, torch's step tensor == int."""
    for po, pt in zip(p_ours, p_theirs, strict=True):
        so, st = ours.state.get(po, {}), theirs.state.get(pt, {})
        assert sorted(so) == sorted(st)
        for key in st:
            if key == "step":
                assert type(so[key]) is int and so[key] == st[key].item()
            else:
                assert torch.equal(so[key], st[key]), key


@pytest.mark.parametrize("list_mode", [False, True], ids=["default", "list-mode"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_steps_bitwise_like_torch(case, dtype, list_mode):
    """100 steps, some params without a gradient on some steps (so their steps differ): the
    params, every gradient and the whole state are bitwise torch's per-tensor loop."""
    ours_cls, torch_cls, kwargs, groups = ADAM_CASES[case]
    specs = PLAIN_SPECS
    p_ours = make_params(specs, dtype)
    p_theirs = clone_params(p_ours)
    ours = ours_cls(param_groups(p_ours, specs, groups), **kwargs)
    if list_mode:
        ours.gather_max_numel = 0
    theirs = torch_cls(param_groups(p_theirs, specs, groups), foreach=False, **kwargs)
    gradients = GradientSequence(specs, dtype)
    run_pair(ours, theirs, p_ours, p_theirs, gradients, 100, 0.0)
    for a, b in zip(p_ours, p_theirs, strict=True):
        assert torch.equal(a, b)
    assert_adam_states_equal(ours, theirs, p_ours, p_theirs)


def test_adam_uniform_steps_take_the_flat_path_and_stay_bitwise():
    """Every param has a gradient every step: the whole group is one flat update."""
    specs = [((2,), None, 0)] * 200 + [((), None, 0), ((3, 4), None, 0)]
    p_ours = make_params(specs, torch.float32)
    p_theirs = clone_params(p_ours)
    ours = Adam(p_ours, lr=0.05, weight_decay=0.01, amsgrad=True)
    theirs = torch.optim.Adam(p_theirs, lr=0.05, weight_decay=0.01, amsgrad=True, foreach=False)
    gradients = GradientSequence(specs, torch.float32, none_prob=0.0)
    run_pair(ours, theirs, p_ours, p_theirs, gradients, 50, 0.0)
    (plan,) = ours._plans.values()
    assert len(plan.buckets) == 1 and plan.buckets[0].gather and plan.buckets[0].uniform_step == 50
    assert_adam_states_equal(ours, theirs, p_ours, p_theirs)


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_adam_state_dict_interchangeable_with_torch(direction):
    specs = PLAIN_SPECS
    dtype = torch.float64

    def ours(params):
        return Adam(params, lr=0.05, amsgrad=True)

    def theirs(params):
        return torch.optim.Adam(params, lr=0.05, amsgrad=True, foreach=False)

    first, second = (theirs, ours) if direction == "torch->ours" else (ours, theirs)
    p_ref = make_params(specs, dtype)
    p_first = clone_params(p_ref)
    ref = theirs(p_ref)
    opt = first(p_first)
    gradients = GradientSequence(specs, dtype)
    run_pair(opt, ref, p_first, p_ref, gradients, 30, 0.0)
    p_second = clone_params(p_first)
    opt2 = second(p_second)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    run_pair(opt2, ref, p_second, p_ref, gradients, 30, 0.0, start=30)
    for a, b in zip(p_second, p_ref, strict=True):
        assert torch.equal(a, b)


def test_adam_refuses_what_torch_refuses():
    p = torch.zeros(3, requires_grad=True)
    for kwargs in ({"lr": -1.0}, {"eps": -1.0}, {"betas": (1.0, 0.9)}, {"weight_decay": -0.1}):
        with pytest.raises(ValueError):
            Adam([p], **kwargs)
    with pytest.raises(ValueError, match="torch_adam"):
        Adam([p], lr=torch.tensor(0.1))
    opt = Adam([p])
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_adam_complex_params_step_like_torch():
    p = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours, theirs = Adam([p], lr=0.1), torch.optim.Adam([q], lr=0.1, foreach=False)
    for k in range(5):
        grad = torch.randn(4, dtype=torch.complex64, generator=torch.Generator().manual_seed(k))
        p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    assert torch.equal(p, q)


# --------------------------------------------------------------------------- through SVI
T_LEN, N_DATA = 12, 20


def model(data_t, data_n):
    loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("time", T_LEN, dim=-1):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("obs_t", dist.Normal(z, scale), obs=data_t)
    with pyro.plate("data", N_DATA, subsample_size=6, dim=-1) as idx:
        w = pyro.sample("w", dist.Normal(loc, 2.0))
        pyro.sample("obs_n", dist.Normal(w, 0.5), obs=data_n[idx])


class OneOptimizer(pyro.optim.PyroOptim):
    """SVI adapter: one optimizer over all params (as pyrotrain's stack uses them)."""

    def __init__(self, cls, args):
        super().__init__(cls, args)
        self.optimizer = None

    def __call__(self, params, *args, **kwargs):
        store = pyro.get_param_store()
        params = sorted(params, key=store.param_name)
        if self.optimizer is None:
            self.optimizer = self.pt_optim_constructor(params, **self.pt_optim_args)
        assert {id(p) for p in params} == {
            id(p) for g in self.optimizer.param_groups for p in g["params"]
        }
        self.optimizer.step()


def fit(optim, steps=50, mark_dct=True):
    """The unconstrained params after ``steps`` SVI steps on the same data, with the time-local
    params DCT-marked (``mark_dct``)."""
    g = torch.Generator().manual_seed(1)
    data_t = torch.randn(T_LEN, generator=g).cumsum(0)
    data_n = 1.0 + torch.randn(N_DATA, generator=g)
    batches = [{"data_t": data_t, "data_n": data_n}] * steps
    return run_svi(model, batches, optim, mark_plate="time" if mark_dct else None)


SVI_CASES = {
    "AdagradRMSProp": (PyroAdagradRMSProp, AdagradRMSProp, {"eta": 0.1}),
    "ClippedAdam": (
        PyroClippedAdam,
        ClippedAdam,
        {"lr": 0.05, "lrd": 0.99, "clip_norm": 1.0, "weight_decay": 0.01},
    ),
    "DCTAdam": (PyroDCTAdam, DCTAdam, {"lr": 0.05, "lrd": 0.99, "subsample_aware": True}),
    "Adam": (torch.optim.Adam, Adam, {"lr": 0.05}),  # pyro.optim.Adam
}


@pytest.fixture(params=DTYPES, ids=str)
def dtype_as_default(request):
    with default_dtype(request.param) as dtype:
        yield dtype


@pytest.mark.parametrize("name", list(SVI_CASES))
def test_svi_param_store_matches_pyro(name, dtype_as_default):
    pyro_cls, our_cls, args = SVI_CASES[name]
    expected = fit(pyro.optim.PyroOptim(pyro_cls, args))
    optims = [pyro.optim.PyroOptim(our_cls, args), OneOptimizer(our_cls, args)]
    if name == "DCTAdam" and dtype_as_default == torch.float64:
        # batched DCT of locs.z and scales.z (rounds differently in the last bit)
        optims.append(OneOptimizer(our_cls, {**args, "batch_dct": True}))
    for optim in optims:
        actual = fit(optim)
        assert list(actual) == list(expected)
        rtol = 0.0 if name == "Adam" else RTOL[dtype_as_default]  # Adam: bitwise
        for key in expected:
            assert_close(actual[key], expected[key], rtol, key)
    if name == "DCTAdam" and dtype_as_default == torch.float64:
        # The time-local params were DCT-marked and the data-local ones subsampled, and
        # both matter, so ignoring either would fail the comparison above.
        store = pyro.get_param_store()
        assert store.get_param("AutoNormal.locs.z").unconstrained()._pyro_dct_dim == -1
        assert store.get_param("AutoNormal.locs.w").unconstrained()._pyro_subsample
        unmarked = fit(pyro.optim.PyroOptim(pyro_cls, args), mark_dct=False)
        assert not torch.allclose(unmarked["AutoNormal.locs.z"], expected["AutoNormal.locs.z"])
        unaware = fit(pyro.optim.PyroOptim(pyro_cls, {**args, "subsample_aware": False}))
        assert not torch.allclose(unaware["AutoNormal.locs.w"], expected["AutoNormal.locs.w"])
