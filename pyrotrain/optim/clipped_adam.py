"""Multi-tensor version of :class:`pyro.optim.clipped_adam.ClippedAdam`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._buckets import MultiTensorOptimizer, _Bucket
from ._kernels import (
    AdamSettings,
    Gathered,
    TensorList,
    adam_step_size,
    add_params,
    addcdiv_params_,
    clip_grads_,
    per_step_values,
    pyro_adam_moments_,
)


class ClippedAdam(MultiTensorOptimizer):
    r"""Multi-tensor :class:`pyro.optim.clipped_adam.ClippedAdam`: Adam with elementwise
    gradient clipping, learning-rate decay and optional centered variance.

    Same arguments, defaults, state keys (``step``, ``exp_avg``, ``exp_avg_sq``) and
    floating-point results as Pyro's class, but all parameters of a param group are
    updated together with ``torch._foreach_*`` calls and flat state buffers (see
    :mod:`pyrotrain.optim._buckets`).

    The algorithm (what the kernels ``_single_tensor_clipped_adam``, per parameter, and
    ``_multi_tensor_clipped_adam``, a bucket at once, compute, in this order)::

        input:  params theta, lr, betas (beta1, beta2), eps, weight_decay, clip_norm c, lrd,
                centered_variance
        state:  per param: step t = 0, m = 0, v = 0
        at every step(), for every param group: lr = lr * lrd; then for every theta whose
        grad is not None:
            t = t + 1
            g = clamp(grad, -c, c)                  (written back to grad)
            g = g + weight_decay * theta            (if weight_decay != 0)
            m = beta1 * m + (1 - beta1) * g
            s = g - m if centered_variance else g
            v = beta2 * v + (1 - beta2) * s * s
            theta -= lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)
        output: theta

    :param params: iterable of parameters to optimize or dicts defining parameter groups
    :param lr: learning rate :math:`\eta` (default: 1e-3)
    :param Tuple betas: coefficients used for computing running averages of gradient
        and its square (default: (0.9, 0.999))
    :param eps: term added to the denominator to improve numerical stability
        (default: 1e-8)
    :param weight_decay: weight decay (L2 penalty) :math:`\lambda` (default: 0)
    :param clip_norm: magnitude :math:`c` to which gradients are clipped elementwise
        (default: 10.0)
    :param lrd: rate at which learning rate decays (default: 1.0)
    :param centered_variance: use centered variance (default: False)

    Differences from Pyro: the update runs under ``torch.no_grad()`` on the parameters
    themselves rather than on ``p.data``, so parameter version counters advance (as
    with ``torch.optim`` optimizers); sparse gradients are not supported (torch raises).

    **References**

    [1] `A Method for Stochastic Optimization`, Diederik P. Kingma, Jimmy Ba
        https://arxiv.org/abs/1412.6980

    [2] `A Two-Step Machine Learning Method for Predicting the Formation Energy of
        Ternary Compounds`, Varadarajan Rengaraj, Sebastian Jost, Franz Bethke,
        Christian Plessl, Hossein Mirhosseini, Andrea Walther, Thomas D. Kühne
        https://doi.org/10.3390/computation11050095
    """

    _flat_keys = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        clip_norm: float = 10.0,
        lrd: float = 1.0,
        centered_variance: bool = False,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            lrd=lrd,
            centered_variance=centered_variance,
        )
        super().__init__(params, defaults)

    def _begin_group(self, group: dict) -> None:
        group["lr"] *= group["lrd"]

    def _update_bucket(
        self, group: dict, b: _Bucket, grads: list[Tensor], sel: list[int] | None
    ) -> None:
        steps = b.advance_steps(sel)
        ops = b.operands(grads, sel, steps)
        _multi_tensor_clipped_adam(
            ops.params,
            ops.grads,
            ops.state["exp_avg"],
            ops.state["exp_avg_sq"],
            steps,
            AdamSettings.of(group),
            scratch=ops.scratch,
            gathered=ops.gathered,
        )

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        # for state this class did not lay out
        assert p.grad is not None  # only params with a gradient are stepped
        _single_tensor_clipped_adam(p, p.grad.data, self.state[p], AdamSettings.of(group))


def _single_tensor_clipped_adam(
    p: Tensor,
    grad: Tensor,
    state: dict,
    settings: AdamSettings,
) -> None:
    """Pyro's per-parameter loop body."""
    lr, beta1, beta2, eps, weight_decay, _, _, clip_norm, centered_variance = settings
    grad.clamp_(-clip_norm, clip_norm)
    if len(state) == 0:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    state["step"] += 1
    if weight_decay != 0:
        grad = grad.add(p.data, alpha=weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    grad_var = (grad - exp_avg) if centered_variance else grad
    exp_avg_sq.mul_(beta2).addcmul_(grad_var, grad_var, value=1 - beta2)
    denom = exp_avg_sq.sqrt().add_(eps)
    bias_correction1 = 1 - beta1 ** state["step"]
    bias_correction2 = 1 - beta2 ** state["step"]
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    p.data.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor_clipped_adam(
    params: list[Tensor],
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    steps: int | list[int],
    settings: AdamSettings,
    *,
    scratch: TensorList | None = None,
    gathered: Gathered | None = None,
) -> None:
    """The update of many parameters, per parameter or flat (see :mod:`._kernels`), with the
    operations of :func:`_single_tensor_clipped_adam`."""
    lr, beta1, beta2, eps, weight_decay, _, _, clip_norm, centered_variance = settings
    clip_grads_(grads, clip_norm, gathered)  # p.grad clamped in place, as Pyro
    if weight_decay != 0:
        grads = add_params(grads, params, weight_decay, gathered)
    denoms = pyro_adam_moments_(
        grads,
        exp_avgs,
        exp_avg_sqs,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        centered_variance=centered_variance,
        denoms=scratch,
    )
    values = per_step_values(steps, adam_step_size(lr, beta1, beta2))
    # p.data.addcdiv_(exp_avg, denom, value=-step_size)
    addcdiv_params_(params, exp_avgs, denoms, values, gathered)
