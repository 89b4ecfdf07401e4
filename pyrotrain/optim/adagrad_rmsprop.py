"""Multi-tensor version of :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp`."""

from __future__ import annotations

import torch
from torch import Tensor

from ._foreach import MultiTensorOptimizer, TensorList, _Bucket, addcdiv_params_, per_step_values


class AdagradRMSProp(MultiTensorOptimizer):
    r"""Multi-tensor :class:`pyro.optim.adagrad_rmsprop.AdagradRMSProp`: a mash-up of
    the Adagrad algorithm and RMSProp, equations 10 and 11 in reference [1].

    Same arguments, defaults, state keys (``step``, ``sum``; initialised for every
    parameter at construction, as Pyro does) and floating-point results as Pyro's
    class, but all parameters of a param group are updated together with
    ``torch._foreach_*`` calls and flat state buffers (see
    :mod:`pyrotrain.optim._foreach`).

    For every parameter :math:`\theta` whose ``grad`` :math:`g` is not ``None``, with
    :math:`k` its own step count after incrementing:

    .. math::

        s &\leftarrow g^2 \quad\text{if } k = 1, \qquad
        s \leftarrow (1 - t)\, s + t\, g^2 \quad\text{otherwise} \\
        \theta &\leftarrow \theta - \eta\, k^{-1/2 + \delta}\, \frac{g}{1 + \sqrt{s}}

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
        t = group["t"]
        eta, delta = group["eta"], group["delta"]
        steps = b.advance_steps(sel)
        d_views: TensorList
        if sel is None and isinstance(steps, int):
            # all params of the bucket, all at the same step
            S = b.flat["sum"]
            if b.gather:
                G = b.gather_(grads)
                if steps == 1:
                    torch.mul(G, G, out=S)  # state["sum"] = grad * grad
                else:
                    S.mul_(1.0 - t)  # state["sum"] *= 1.0 - t
                    tmp = torch.mul(G, t, out=b.d)  # t * grad
                    tmp.mul_(G)  # (t * grad) * grad
                    S.add_(tmp)  # state["sum"] += t * grad * grad
            else:
                s_views = b.views["sum"]
                if steps == 1:
                    torch._foreach_copy_(s_views, torch._foreach_mul(grads, grads))
                else:
                    S.mul_(1.0 - t)
                    tmps = torch._foreach_mul(grads, t)
                    torch._foreach_mul_(tmps, grads)
                    torch._foreach_add_(s_views, tmps)
                    del tmps
            torch.sqrt(S, out=b.d)  # std = state["sum"].sqrt()
            b.d.add_(1.0)  # 1.0 + std
            params, d_views = b.params, b.dviews
            lr = eta * (steps ** (-0.5 + delta))
            values: float | list[float] = -lr
            g_flat = b.g if b.gather else None
        else:
            if sel is None:
                sel = list(range(len(b)))
                if isinstance(steps, int):
                    steps = [steps] * len(sel)
            assert isinstance(steps, list)
            s_views = [b.views["sum"][j] for j in sel]
            first = [k for k, s in enumerate(steps) if s == 1]
            later = [k for k, s in enumerate(steps) if s != 1]
            if first:
                g_first = [grads[k] for k in first]
                torch._foreach_copy_(
                    [s_views[k] for k in first], torch._foreach_mul(g_first, g_first)
                )
            if later:
                g_later = [grads[k] for k in later]
                s_later = [s_views[k] for k in later]
                torch._foreach_mul_(s_later, 1.0 - t)
                tmps = torch._foreach_mul(g_later, t)
                torch._foreach_mul_(tmps, g_later)
                torch._foreach_add_(s_later, tmps)
                del tmps
            d_views = torch._foreach_sqrt(s_views)
            torch._foreach_add_(d_views, 1.0)
            params = [b.params[j] for j in sel]
            values = per_step_values(steps, lambda k: -(eta * (k ** (-0.5 + delta))))
            g_flat = None
        # p.data.addcdiv_(grad, 1.0 + std, value=-lr)
        addcdiv_params_(b, sel, params, grads, g_flat, d_views, values)

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        # Pyro's per-parameter loop body, for state this class did not lay out.
        assert p.grad is not None  # only params with a gradient are stepped
        grad = p.grad.data
        if grad.is_sparse:
            raise NotImplementedError
        state = self.state[p]
        state["step"] += 1
        if state["step"] == 1:
            state["sum"] = grad * grad
        else:
            state["sum"] *= 1.0 - group["t"]
            state["sum"] += group["t"] * grad * grad
        lr = group["eta"] * (state["step"] ** (-0.5 + group["delta"]))
        std = state["sum"].sqrt()
        p.data.addcdiv_(grad, 1.0 + std, value=-lr)
