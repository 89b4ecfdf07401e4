"""Multi-tensor version of :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp`."""

from __future__ import annotations

import torch
from torch import Tensor

from ._buckets import MultiTensorOptimizer, _Bucket
from ._kernels import (
    Gathered,
    TensorList,
    addcdiv_params_,
    mul,
    mul_to,
    per_step_values,
    split_steps,
    sqrt,
)


class AdagradRMSProp(MultiTensorOptimizer):
    r"""Multi-tensor :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp`: a mash-up of
    the Adagrad algorithm and RMSProp, equations 10 and 11 in reference [1].

    Same arguments, defaults, state keys (``step``, ``sum``; initialised for every
    parameter at construction, as Pyro does) and floating-point results as Pyro's
    class, but all parameters of a param group are updated together with
    ``torch._foreach_*`` calls and flat state buffers (see
    :mod:`pyrotrain.optim._buckets`).

    The algorithm (what the kernels ``_single_tensor_adagrad_rmsprop``, per parameter, and
    ``_multi_tensor_adagrad_rmsprop``, a bucket at once, compute, in this order)::

        input:  params theta, step size eta, momentum t, delta
        state:  per param: step k = 0, sum s = 0
        at every step(), for every theta whose grad g is not None:
            k = k + 1
            s = g * g                               if k == 1
            s = s * (1 - t) + (t * g) * g           otherwise
            theta = theta + (-eta * k^(-1/2 + delta)) * g / (1 + sqrt(s))
        output: theta

    :param params: iterable of parameters to optimize or dicts defining parameter groups
    :param eta: sets the step size scale (optional; default: 1.0)
    :type eta: float
    :param t: momentum parameter (optional; default: 0.1)
    :type t: float
    :param delta: modulates the exponent that controls how the step size scales
        (optional: default: 1e-16)
    :type delta: float

    Differences from Pyro: the update runs under ``torch.no_grad()`` on the parameters
    themselves rather than on ``p.data`` (parameter version counters advance, as with
    ``torch.optim`` optimizers); parameters added later with :meth:`add_param_group`
    get their state initialised (Pyro's class raises ``KeyError`` for them); sparse
    gradients raise an error from torch (``RuntimeError`` or ``NotImplementedError``;
    Pyro raises ``NotImplementedError``).

    References:
    [1] 'Automatic Differentiation Variational Inference', Alp Kucukelbir,
    Dustin Tran, Rajesh Ranganath, Andrew Gelman, David M. Blei
    URL: https://arxiv.org/abs/1603.00788
    [2] 'Lecture 6.5 RmsProp: Divide the gradient by a running average
    of its recent magnitude', Tieleman, T. and Hinton, G.,
    COURSERA: Neural Networks for Machine Learning.
    [3] 'Adaptive subgradient methods for online learning and stochastic optimization',
    Duchi, John, Hazan, E and Singer, Y.
    """

    _flat_keys = ("sum",)
    # list mode needs more per-tensor foreach calls here than in the Adam variants
    gather_max_numel = 8192
    #: The step-size argument (pyrotrain.registry.rate_key): what lr scaling and reduce_lr adjust.
    rate_key = "eta"

    def __init__(self, params, eta: float = 1.0, delta: float = 1.0e-16, t: float = 0.1):
        defaults = dict(eta=eta, delta=delta, t=t)
        super().__init__(params, defaults)  # initialises state via add_param_group

    def _init_state(self, p: Tensor) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["sum"] = torch.zeros_like(p.data)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._init_state(p)

    def _is_started(self, state: dict) -> bool:
        # Pyro creates (zero) state for every param up front; a param joins a flat
        # buffer once it has been stepped.
        return state.get("step", 0) != 0

    def _update_bucket(
        self, group: dict, b: _Bucket, grads: list[Tensor], sel: list[int] | None
    ) -> None:
        steps = b.advance_steps(sel)
        ops = b.operands(grads, sel, steps)
        _multi_tensor_adagrad_rmsprop(
            ops.params,
            ops.grads,
            ops.state["sum"],
            steps,
            eta=group["eta"],
            delta=group["delta"],
            t=group["t"],
            scratch=ops.scratch,
            gathered=ops.gathered,
        )

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        # for state this class did not lay out
        assert p.grad is not None  # only params with a gradient are stepped
        _single_tensor_adagrad_rmsprop(
            p, p.grad.data, self.state[p], eta=group["eta"], delta=group["delta"], t=group["t"]
        )


def _single_tensor_adagrad_rmsprop(
    p: Tensor, grad: Tensor, state: dict, *, eta: float, delta: float, t: float
) -> None:
    """Pyro's per-parameter loop body."""
    if grad.is_sparse:
        raise NotImplementedError
    state["step"] += 1
    if state["step"] == 1:
        state["sum"] = grad * grad
    else:
        state["sum"] *= 1.0 - t
        state["sum"] += t * grad * grad
    lr = eta * (state["step"] ** (-0.5 + delta))
    std = state["sum"].sqrt()
    p.data.addcdiv_(grad, 1.0 + std, value=-lr)


def _multi_tensor_adagrad_rmsprop(
    params: list[Tensor],
    grads: TensorList,
    sums: TensorList,
    steps: int | list[int],
    *,
    eta: float,
    delta: float,
    t: float,
    scratch: TensorList | None = None,
    gathered: Gathered | None = None,
) -> None:
    """The update of many parameters, per parameter or flat (see :mod:`._kernels`); ``steps``
    is one common step or one per parameter (after incrementing)."""
    first, later = split_steps(steps, len(sums))
    if first:
        g = _pick(grads, first)
        mul_to(_pick(sums, first), g, g)  # state["sum"] = grad * grad
    if later:
        g, s = _pick(grads, later), _pick(sums, later)
        torch._foreach_mul_(s, 1.0 - t)  # state["sum"] *= 1.0 - t
        tmps = mul(g, t, None if scratch is None else _pick(scratch, later))  # t * grad
        torch._foreach_mul_(tmps, g)  # (t * grad) * grad
        torch._foreach_add_(s, tmps)  # state["sum"] += t * grad * grad
        del tmps
    denoms = sqrt(sums, scratch)  # std = state["sum"].sqrt()
    torch._foreach_add_(denoms, 1.0)  # 1.0 + std
    values = per_step_values(steps, lambda k: -(eta * (k ** (-0.5 + delta))))  # -lr
    # p.data.addcdiv_(grad, 1.0 + std, value=-lr)
    addcdiv_params_(params, grads, denoms, values, gathered)


def _pick(xs: TensorList, index: list[int]) -> TensorList:
    return xs if len(index) == len(xs) else [xs[k] for k in index]
