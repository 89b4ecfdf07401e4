"""Multi-tensor versions of :class:`torch.optim.Adam` and :class:`torch.optim.AdamW`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._buckets import MultiTensorOptimizer, _Bucket
from ._kernels import (
    AdamSettings,
    Gathered,
    TensorList,
    add_params,
    addcdiv_params_,
    per_step_values,
    sqrt,
)


class Adam(MultiTensorOptimizer):
    r""":class:`torch.optim.Adam` (what ``pyro.optim.Adam`` wraps), one update per param group.

    Same arguments, defaults, state keys (``step``, ``exp_avg``, ``exp_avg_sq``, and
    ``max_exp_avg_sq`` with ``amsgrad``) and floating-point results as torch's per-tensor
    loop (``foreach=False``), but the moments of a group live in flat buffers and small
    parameters' gradients are gathered into one, so a step over hundreds of small
    parameters is a dozen kernels instead of a dozen per parameter (see
    :mod:`pyrotrain.optim._buckets`). The algorithm (what the kernels ``_single_tensor_adam``,
    per parameter, and ``_multi_tensor_adam``, a bucket at once, compute, in this order)::

        input:  params theta, lr, betas (beta1, beta2), eps, weight_decay, amsgrad, maximize,
                decoupled_weight_decay
        state:  per param: step t = 0, m = 0, v = 0 (and v_max = 0 with amsgrad)
        at every step(), for every theta whose grad is not None:
            t = t + 1
            g = -grad if maximize else grad
            theta *= 1 - lr * weight_decay          (decoupled_weight_decay)
            g = g + weight_decay * theta            (otherwise, if weight_decay != 0)
            m = m.lerp(g, 1 - beta1)
            v = beta2 * v + (1 - beta2) * g * g
            v_max = max(v_max, v)                   (amsgrad; then v_max replaces v below)
            theta -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
        output: theta

    :param params: iterable of parameters to optimize or dicts defining parameter groups
    :param lr: learning rate (default: 1e-3)
    :param betas: coefficients of the running averages of the gradient and its square
        (default: (0.9, 0.999))
    :param eps: term added to the denominator (default: 1e-8)
    :param weight_decay: L2 penalty (default: 0)
    :param amsgrad: use the AMSGrad variant (default: False)
    :param maximize: maximize the objective instead of minimizing it (default: False)
    :param decoupled_weight_decay: decay the weights directly, as AdamW (default: False)

    Differences from torch: ``state["step"]`` is a Python int (torch keeps a float
    tensor; :meth:`load_state_dict` takes either, and torch's Adam takes ours); the
    learning rate must be a number; ``foreach``, ``fused``, ``capturable`` and
    ``differentiable`` are not taken (the ``torch_adam`` registry name is torch's class).
    Sparse gradients are refused, as torch does.

    References: `Adam: A Method for Stochastic Optimization`, Kingma and Ba,
    https://arxiv.org/abs/1412.6980; `Decoupled Weight Decay Regularization`, Loshchilov and
    Hutter, https://arxiv.org/abs/1711.05101; `On the Convergence of Adam and Beyond`, Reddi et
    al., https://openreview.net/forum?id=ryQu7f-RZ (AMSGrad).
    """

    _flat_keys = ("exp_avg", "exp_avg_sq")
    _AMSGRAD_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ):
        _check_args(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self._amsgrad = False
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch's Adam keeps the step as a float tensor
            step = state.get("step")
            if isinstance(step, Tensor):
                state["step"] = int(step.item())

    # -- buckets: params of a group, with or without the AMSGrad maximum ----------------------
    def _step_group(self, index: int, group: dict) -> None:
        _check_args(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        self._amsgrad = bool(group["amsgrad"])
        super()._step_group(index, group)

    def _param_attrs(self, params: list[Tensor]) -> list:
        return [self._amsgrad] * len(params)

    def _bucket_key(self, p: Tensor, attr: Any) -> tuple | None:
        if p.is_complex():
            return None  # the per-parameter path takes views as real
        return ("amsgrad",) if attr else ("plain",)

    def _state_keys(self, key: tuple) -> tuple[str, ...]:
        return self._AMSGRAD_KEYS if key == ("amsgrad",) else self._flat_keys

    def _special_params(self, group: dict, params: list[Tensor], grads: list) -> list[int]:
        for g in grads:
            if g is not None and g.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider SparseAdam instead"
                )
        return []

    # -- the update --------------------------------------------------------------------------
    def _update_bucket(
        self, group: dict, b: _Bucket, grads: list[Tensor], sel: list[int] | None
    ) -> None:
        steps = b.advance_steps(sel)
        ops = b.operands(grads, sel, steps)
        _multi_tensor_adam(
            ops.params,
            ops.grads,
            ops.state["exp_avg"],
            ops.state["exp_avg_sq"],
            ops.state.get("max_exp_avg_sq"),
            steps,
            AdamSettings.of(group),
            scratch=ops.scratch,
            gathered=ops.gathered,
        )

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        # for state this class did not lay out
        assert p.grad is not None  # only params with a gradient are stepped
        state = self.state[p]
        if not state:
            state["step"] = 0
        for key in self._AMSGRAD_KEYS if group["amsgrad"] else self._flat_keys:
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        _single_tensor_adam(
            p,
            p.grad,
            state,
            state.get("max_exp_avg_sq") if group["amsgrad"] else None,
            AdamSettings.of(group),
        )


class AdamW(Adam):
    r""":class:`torch.optim.AdamW`, one update per param group: :class:`Adam` with decoupled
    weight decay, which defaults to 1e-2 (torch's defaults). Same arguments as torch's class,
    less ``foreach``, ``fused``, ``capturable`` and ``differentiable`` (``torch_adamw``)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )


def _check_args(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """torch.optim.Adam's argument checks, with its messages; the lr must be a number."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"lr must be a number (use torch_adam for a tensor lr), got {lr!r}")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2:
        raise ValueError(f"betas must be two numbers, got {betas!r}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def _single_tensor_adam(
    p: Tensor,
    grad: Tensor,
    state: dict,
    max_exp_avg_sq: Tensor | None,
    settings: AdamSettings,
) -> None:
    """torch's per-tensor loop body (``foreach=False``); ``max_exp_avg_sq`` given for AMSGrad."""
    lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay, _, _ = settings
    grad = -grad if maximize else grad
    state["step"] = step = int(state["step"]) + 1
    if weight_decay != 0:
        if decoupled_weight_decay:
            p.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(p, alpha=weight_decay)
    param, exp_avg, exp_avg_sq = p, state["exp_avg"], state["exp_avg_sq"]
    if torch.is_complex(p):
        param, grad = torch.view_as_real(p), torch.view_as_real(grad)
        exp_avg, exp_avg_sq = torch.view_as_real(exp_avg), torch.view_as_real(exp_avg_sq)
        if max_exp_avg_sq is not None:
            max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad.conj(), value=1 - beta2)
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        exp_avg_sq = max_exp_avg_sq
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor_adam(
    params: list[Tensor],
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    max_exp_avg_sqs: TensorList | None,
    steps: int | list[int],
    settings: AdamSettings,
    *,
    scratch: TensorList | None = None,
    gathered: Gathered | None = None,
) -> None:
    """The update of many parameters, per parameter or flat (see :mod:`._kernels`), with the
    operations of :func:`_single_tensor_adam`; ``max_exp_avg_sqs`` given for AMSGrad."""
    lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay, _, _ = settings
    if weight_decay != 0 and decoupled_weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    if maximize:
        if gathered is None:
            grads = torch._foreach_neg(grads)
        else:
            torch._foreach_neg_(grads)  # the kernel's own gathered copy
    if weight_decay != 0 and not decoupled_weight_decay:
        grads = add_params(grads, params, weight_decay, gathered)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    v = exp_avg_sqs
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, v)
        v = max_exp_avg_sqs
    # denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    denoms = sqrt(v, scratch)
    torch._foreach_div_(denoms, per_step_values(steps, lambda t: (1 - beta2**t) ** 0.5))
    torch._foreach_add_(denoms, eps)
    # param.addcdiv_(exp_avg, denom, value=-step_size), step_size = lr / bias_correction1
    values = per_step_values(steps, lambda t: -(lr / (1 - beta1**t)))
    addcdiv_params_(params, exp_avgs, denoms, values, gathered)
