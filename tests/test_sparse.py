"""Row-sparse groups (issue 20): SparseAdagradRMSProp against Pyro's dense AdagradRMSProp, the
lazy Adam variants against their own reference math and torch.optim.SparseAdam, the stack's
checks on touched rows, and the sparse model with and without sparse gradients."""

from __future__ import annotations

import functools

import pyro
import pyro.optim
import pytest
import torch
from helpers import QUICK
from pyro.infer import SVI
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp

import pyrotrain
from pyrotrain.build import build, torch_defaults
from pyrotrain.data import BatchOrder
from pyrotrain.errors import PyrotrainError
from pyrotrain.loop import Trainer
from pyrotrain.optim import OptimizerStack
from pyrotrain.optim.lazy_adam import LazyAdam, LazyClippedAdam
from pyrotrain.optim.rows import RowFinder, TouchedRows
from pyrotrain.optim.sparse_adagrad_rmsprop import SparseAdagradRMSProp
from pyrotrain.params import CollectParams

ROWS, COLS = 300, 3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


def _row_grads(steps: int, seed: int = 0):
    """Per step: touched rows (unique, sorted, 1 to 30 of ROWS) and their gradient rows, and a
    dense gradient for a small parameter."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        n = int(torch.randint(1, 30, (), generator=g))
        rows = torch.randperm(ROWS, generator=g)[:n].sort().values
        yield rows, torch.randn(n, COLS, generator=g), torch.randn(4, generator=g)


def _dense(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    grad = torch.zeros(ROWS, COLS)
    grad[rows] = values
    return grad


@pytest.mark.parametrize("source", ["record", "nonzero", "sparse_grad"])
def test_sparse_adagrad_rmsprop_is_pyros_dense_update(source):
    """200 steps, each touching a few rows: the rows' source does not matter, and the result is
    Pyro's dense AdagradRMSProp to rounding (a row untouched for k steps takes its k decays at
    once)."""
    torch.manual_seed(0)
    table, small = torch.randn(ROWS, COLS), torch.randn(4)
    ref = [table.clone().requires_grad_(), small.clone().requires_grad_()]
    ours = [table.clone().requires_grad_(), small.clone().requires_grad_()]
    pyro_opt = PyroAdagradRMSProp(ref, eta=0.3, t=0.1)
    opt = SparseAdagradRMSProp(ours, eta=0.3, t=0.1, min_row_numel=100)
    for rows, values, small_grad in _row_grads(200):
        ref[0].grad, ref[1].grad = _dense(rows, values), small_grad.clone()
        ours[1].grad = small_grad.clone()
        if source == "sparse_grad":
            ours[0].grad = torch.sparse_coo_tensor(rows[None], values, (ROWS, COLS))
        else:
            ours[0].grad = _dense(rows, values)
            if source == "record":
                ours[0]._pyro_subsample = {-2: rows}
        pyro_opt.step()
        opt.step()
        opt.rows.done(ours)
    assert _rel(ours[0], ref[0]) < 1e-5
    assert torch.equal(ours[1], ref[1])  # small params: the dense update, bitwise
    assert opt.state[ours[0]]["step"] == pyro_opt.state[ref[0]]["step"] == 200
    # the sums, brought up to date, are Pyro's
    state = opt.state[ours[0]]
    missed = (200 - state["row_step"]).to(torch.float32)[:, None]
    assert _rel(state["sum"] * 0.9**missed, pyro_opt.state[ref[0]]["sum"]) < 1e-5
    assert state["row_step"].dtype == torch.int64


def test_sparse_adagrad_rmsprop_state_round_trips():
    """The row steps are state: an optimizer loaded from a state dict continues bitwise."""
    torch.manual_seed(0)
    a = torch.randn(ROWS, COLS, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    opt_a = SparseAdagradRMSProp([a], eta=0.3, min_row_numel=100)
    steps = list(_row_grads(40))
    for i, (rows, values, _) in enumerate(steps):
        a.grad = _dense(rows, values)
        opt_a.step()
        if i == 19:
            with torch.no_grad():
                b.copy_(a)
            opt_b = SparseAdagradRMSProp([b], eta=0.3, min_row_numel=100)
            opt_b.load_state_dict(opt_a.state_dict())
            assert opt_b.state[b]["row_step"].dtype == torch.int64
        elif i > 19:
            b.grad = _dense(rows, values)
            opt_b.step()
    assert torch.equal(a, b)


def _lazy_reference(kind: str, steps, lr, betas, eps, weight_decay, clip):
    """The lazy update written out plainly, on dense tensors, in float64."""
    theta = torch.linspace(-1, 1, ROWS * COLS, dtype=torch.float64).view(ROWS, COLS)
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    b1, b2 = betas
    for k, (rows, values, _) in enumerate(steps, start=1):
        g = values.double()
        if kind == "clipped":
            g = g.clamp(-clip, clip)
        g = g + weight_decay * theta[rows]
        m[rows] = b1 * m[rows] + (1 - b1) * g
        v[rows] = b2 * v[rows] + (1 - b2) * g * g
        if kind == "clipped":
            step = lr * (1 - b2**k) ** 0.5 / (1 - b1**k) * m[rows] / (v[rows].sqrt() + eps)
        else:
            step = lr / (1 - b1**k) * m[rows] / (v[rows].sqrt() / (1 - b2**k) ** 0.5 + eps)
        theta[rows] -= step
    return theta


@pytest.mark.parametrize("kind", ["clipped", "adam"])
def test_lazy_adam_is_its_reference_math(kind):
    steps = list(_row_grads(100))
    args = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)
    expected = _lazy_reference(kind, steps, clip=0.5, **args)
    p = torch.linspace(-1, 1, ROWS * COLS).view(ROWS, COLS).requires_grad_()
    if kind == "clipped":
        opt = LazyClippedAdam([p], clip_norm=0.5, min_row_numel=100, **args)
    else:
        opt = LazyAdam([p], min_row_numel=100, **args)
    for rows, values, _ in steps:
        p.grad = _dense(rows, values)
        p._pyro_subsample = {0: rows}
        opt.step()
        opt.rows.done([p])
        if kind == "clipped":  # Pyro's ClippedAdam clamps p.grad in place; so do the rows
            assert float(p.grad.abs().max()) <= 0.5
    assert _rel(p.detach().double(), expected) < 1e-5
    untouched = torch.ones(ROWS, dtype=torch.bool)
    for rows, _, _ in steps:
        untouched[rows] = False
    start = torch.linspace(-1, 1, ROWS * COLS).view(ROWS, COLS)
    assert torch.equal(p.detach()[untouched], start[untouched])  # lazy: never moved


def test_lazy_clipped_adam_is_torch_sparse_adam():
    """Without clipping, weight decay or lr decay, the update of torch.optim.SparseAdam."""
    torch.manual_seed(0)
    start = torch.randn(ROWS, COLS)
    p = start.clone().requires_grad_()
    q = start.clone().requires_grad_()
    ours = LazyClippedAdam([p], lr=0.05, clip_norm=float("inf"), min_row_numel=100)
    theirs = torch.optim.SparseAdam([q], lr=0.05)
    for rows, values, _ in _row_grads(100):
        p.grad = torch.sparse_coo_tensor(rows[None], values, (ROWS, COLS))
        q.grad = torch.sparse_coo_tensor(rows[None], values, (ROWS, COLS))
        ours.step()
        ours.rows.done([p])
        theirs.step()
    assert _rel(p.detach(), q.detach()) < 1e-5


def test_row_finder_sources():
    p = torch.zeros(ROWS, COLS, requires_grad=True)
    p.grad = torch.zeros(ROWS, COLS)
    p.grad[[3, 7]] = 1.0
    finder = RowFinder(min_numel=100)
    assert finder.take(p)[0].tolist() == [3, 7]  # nonzero rows
    p.grad = p.grad.clone()
    p._pyro_subsample = {-2: torch.tensor([3, 7, 9])}
    assert finder.take(p)[0].tolist() == [3, 7, 9]  # Pyro's record (a superset is fine)
    p.grad = p.grad.clone()
    assert RowFinder(100, records=False).take(p)[0].tolist() == [3, 7]  # records not trusted
    finder.done([p])
    assert not hasattr(p, "_pyro_subsample")
    small = torch.zeros(10, requires_grad=True)
    small.grad = torch.ones(10)
    assert finder.take(small) is None  # updated whole


def test_touched_rows_are_the_union_over_accesses():
    """With gradient accumulation, a parameter is accessed in several minibatches; the rows of
    the step are all of them, not the last minibatch's."""

    def guide(idx):
        with pyro.plate("rows", 50, subsample=idx):
            pyro.param("t", torch.zeros(50), event_dim=0)

    pyro.clear_param_store()
    touched = TouchedRows()
    for idx in (torch.tensor([1, 4]), torch.tensor([4, 9])):
        with CollectParams() as capture:
            guide(idx)
        touched.update(capture.rows)
    param = pyro.param("t").unconstrained()
    assert param._pyro_subsample[-1].tolist() == [4, 9]  # Pyro keeps the last access's
    touched.publish()
    assert param._pyro_subsample[-1].tolist() == [1, 4, 9]
    with CollectParams() as capture:
        guide(torch.tensor([2]))
        pyro.param("t")  # and once whole: no rows to go by
    capture.rows.publish()
    assert not hasattr(param, "_pyro_subsample")


def _sparse_stack(**group):
    cfg = {"groups": {"all": {"params": ["*"], "optimizer": {"name": "adagrad_rmsprop"}, **group}}}
    return OptimizerStack.from_config(cfg)


def test_stack_checks_clips_and_norms_touched_rows_only():
    pyro.clear_param_store()
    table = pyro.param("table", torch.zeros(5000, 2)).unconstrained()
    stack = _sparse_stack(sparse=True, clip={"norm": 1.0})
    stack.assign([table])
    grad = torch.zeros(5000, 2)
    grad[[10, 20]] = 3.0
    grad[4000] = float("nan")  # outside the recorded rows: not this step's gradient
    table.grad = grad
    table._pyro_subsample = {-2: torch.tensor([10, 20])}
    assert stack.nonfinite_groups([table]) == []
    assert stack.grad_norms([table])["all"] == pytest.approx(6.0)
    grad[20, 0] = float("inf")
    assert stack.nonfinite_groups([table]) == ["all"]
    grad[20, 0] = 3.0
    stack([table])
    # clipped to norm 1 in the touched rows (each element 3 -> 0.5), the rest left alone
    assert torch.allclose(table.grad[[10, 20]], torch.full((2, 2), 0.5), rtol=1e-5)
    assert torch.isnan(table.grad[4000]).all()
    assert not hasattr(table, "_pyro_subsample")  # consumed by the step
    assert torch.isfinite(table).all()


def test_sparse_needs_an_optimizer_with_a_sparse_variant():
    with pytest.raises(PyrotrainError, match="no row-sparse variant") as e:
        OptimizerStack.from_config(
            {"groups": {"all": {"optimizer": {"name": "sgd", "lr": 0.1}, "sparse": True}}}
        )
    assert e.value.key == "optim.groups.all.sparse"
    assert "adagrad_rmsprop" in e.value.choices


# -- the sparse model, through pyrotrain and by hand ------------------------------------------

# 5000 items: the item tables are row-tracked (at least 4096 elements)
DATA = ["data.users=100", "data.items=5000", "data.observations=3000", "trainer.batch_size=300"]


def _fit(overrides: list[str], steps: int) -> dict[str, torch.Tensor]:
    cfg = pyrotrain.compose(["model=sparse", f"trainer.steps={steps}", *DATA, *QUICK, *overrides])
    pyro.clear_param_store()
    Trainer(build(cfg)).fit()
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@functools.cache
def _fit_by_hand(steps: int) -> dict[str, torch.Tensor]:
    """Hand-written SVI with Pyro's (dense) AdagradRMSProp on the same model, data and order."""
    cfg = pyrotrain.compose(["model=sparse", *DATA, *QUICK, "model.sparse_grad=false"])
    pyro.clear_param_store()
    run = build(cfg)
    svi = SVI(run.model, run.guide, pyro.optim.AdagradRMSProp({"eta": 0.3}), run.elbo)
    order = iter(BatchOrder(run.data.size, run.config.trainer.batch_size, run.config.seed))
    with torch_defaults(run.dtype, run.device):
        pyro.set_rng_seed(run.config.seed)
        for _ in range(steps):
            _, idx = next(order)
            svi.step(
                **{k: v[idx] for k, v in run.data.train.items()}, index=idx, size=run.data.size
            )
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@pytest.mark.parametrize("sparse_grad", [True, False])
def test_sparse_model_is_pyros_dense_adagrad_rmsprop(sparse_grad):
    """200 steps of pyrotrain's sparse group (rows from sparse gradients, or from Pyro's records)
    against the hand-written dense loop: every parameter within 1e-5."""
    ours = _fit([f"model.sparse_grad={str(sparse_grad).lower()}"], 200)
    ref = _fit_by_hand(200)
    assert ours.keys() == ref.keys()
    for name in ref:
        assert _rel(ours[name], ref[name]) < 1e-5, name


def test_sparse_model_with_accumulation_and_lazy_adam():
    """Two minibatches per step: the rows of both are updated (as the dense optimizer does);
    and optim=adam with sparse: true runs LazyAdam."""
    acc = ["trainer.accumulate_grad_batches=2", "trainer.batch_size=150"]
    dense = _fit([*acc, "optim=adagrad_rmsprop", "model.sparse_grad=false"], 40)
    for sparse_grad in ("true", "false"):
        ours = _fit([*acc, f"model.sparse_grad={sparse_grad}"], 40)
        for name in dense:
            assert _rel(ours[name], dense[name]) < 1e-5, name
    cfg = pyrotrain.compose(
        ["model=sparse", "optim=adam", "+optim.groups.all.sparse=true", "trainer.steps=5", *DATA]
    )
    pyro.clear_param_store()
    run = build(cfg)
    Trainer(run).fit()
    assert type(run.stack.groups[0].optimizer) is LazyAdam
