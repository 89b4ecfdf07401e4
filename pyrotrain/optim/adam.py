"""Multi-tensor versions of :class:`torch.optim.Adam` and :class:`torch.optim.AdamW`."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from ._foreach import MultiTensorOptimizer, TensorList, _Bucket, addcdiv_params_, per_step_values


class Adam(MultiTensorOptimizer):
    r""":class:`torch.optim.Adam` (what ``pyro.optim.Adam`` wraps), one update per param group.

    Same arguments, defaults, state keys (``step``, ``exp_avg``, ``exp_avg_sq``, and
    ``max_exp_avg_sq`` with ``amsgrad``) and floating-point results as torch's per-tensor
    loop (``foreach=False``), but the moments of a group live in flat buffers and small
    parameters' gradients are gathered into one, so a step over hundreds of small
    parameters is a dozen kernels instead of a dozen per parameter (see
    :mod:`pyrotrain.optim._foreach`). For every parameter :math:`\theta` whose ``grad`` is
    not ``None`` (with :math:`t` its own step count)::

        g = -grad if maximize else grad
        theta *= 1 - lr * weight_decay              (decoupled_weight_decay)
        g = g + weight_decay * theta                (otherwise, if weight_decay != 0)
        m = m.lerp(g, 1 - beta1)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                       (amsgrad; then v_max replaces v below)
        theta -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

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
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        amsgrad = b.info == ("amsgrad",)
        steps = b.advance_steps(sel)
        full = sel is None
        params = b.params if sel is None else [b.params[j] for j in sel]
        if weight_decay != 0 and group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        keys = self._state_keys(b.info)
        flat = full and b.gather and isinstance(steps, int)
        if flat:
            # one kernel per operation over the whole bucket
            G = b.gather_(grads)
            if group["maximize"]:
                G.neg_()
            if weight_decay != 0 and not group["decoupled_weight_decay"]:
                torch._foreach_copy_(b.dviews, params)  # the scratch holds the params for now
                G.add_(b.d, alpha=weight_decay)
            M, V = b.flat["exp_avg"], b.flat["exp_avg_sq"]
            M.lerp_(G, 1 - beta1)
            V.mul_(beta2).addcmul_(G, G, value=1 - beta2)
            if amsgrad:
                V = torch.maximum(b.flat["max_exp_avg_sq"], V, out=b.flat["max_exp_avg_sq"])
            torch.sqrt(V, out=b.d)
            denoms: TensorList = b.dviews
        else:
            views = {k: b.views[k] if sel is None else [b.views[k][j] for j in sel] for k in keys}
            g_list = torch._foreach_neg(grads) if group["maximize"] else grads
            if weight_decay != 0 and not group["decoupled_weight_decay"]:
                g_list = torch._foreach_add(g_list, params, alpha=weight_decay)
            torch._foreach_lerp_(views["exp_avg"], g_list, 1 - beta1)
            torch._foreach_mul_(views["exp_avg_sq"], beta2)
            torch._foreach_addcmul_(views["exp_avg_sq"], g_list, g_list, value=1 - beta2)
            v_list = views["exp_avg_sq"]
            if amsgrad:
                torch._foreach_maximum_(views["max_exp_avg_sq"], v_list)
                v_list = views["max_exp_avg_sq"]
            denoms = torch._foreach_sqrt(v_list)
        # denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        sqrt_bc2 = per_step_values(steps, lambda t: (1 - beta2**t) ** 0.5)
        if flat:
            b.d.div_(cast(float, sqrt_bc2)).add_(eps)  # one common step: a float
        else:
            torch._foreach_div_(denoms, sqrt_bc2)
            torch._foreach_add_(denoms, eps)
        # param.addcdiv_(exp_avg, denom, value=-step_size), step_size = lr / bias_correction1
        values = per_step_values(steps, lambda t: -(lr / (1 - beta1**t)))
        m_views = b.views["exp_avg"] if sel is None else [b.views["exp_avg"][j] for j in sel]
        addcdiv_params_(b, sel, params, m_views, b.flat["exp_avg"], denoms, values)

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        # torch's per-tensor loop body (foreach=False), for state this class did not lay out
        assert p.grad is not None  # only params with a gradient are stepped
        grad = -p.grad if group["maximize"] else p.grad
        state = self.state[p]
        if not state:
            state["step"] = 0
        for key in self._AMSGRAD_KEYS if group["amsgrad"] else self._flat_keys:
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        state["step"] = step = int(state["step"]) + 1
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(p, alpha=weight_decay)
        param, exp_avg, exp_avg_sq = p, state["exp_avg"], state["exp_avg_sq"]
        max_exp_avg_sq = state.get("max_exp_avg_sq") if group["amsgrad"] else None
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
