"""Shared pieces of the optimizers' kernel functions: plain functions over tensor lists.

A multi-tensor kernel (``_multi_tensor_<name>`` in each optimizer's module) takes its tensors in
one of two layouts, chosen by the optimizer class (see :mod:`pyrotrain.optim._buckets`):

* **per parameter**: one tensor per parameter in every list (the gradients, the state, the
  scratch), ops over them are ``torch._foreach_*`` calls;
* **flat**: a list of one tensor per role, the whole bucket packed into one buffer (the gathered
  gradients, each state buffer, the scratch), so each op is one kernel over the bucket. The
  parameters stay a per-parameter list; :class:`Gathered` carries what maps between the two.

Elementwise ops give the same floating-point result in either layout, so a kernel is written once
and is bitwise Pyro's (or torch's) per-parameter update in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

import torch
from torch import Tensor

#: a tensor list as ``torch._foreach_*`` ops take it (their out-of-place forms return tuples)
TensorList: TypeAlias = list[Tensor] | tuple[Tensor, ...]

# Lists up to this long are computed one tensor at a time into given buffers (no allocation);
# longer ones with one foreach call, whose per-tensor dispatch is cheaper than Python's.
_LOOP_MAX = 16


class Gathered(NamedTuple):
    """How a flat-layout kernel call maps to the parameters (all shaped like them).

    ``grads`` are the parameters' own gradients (for what Pyro writes back to ``p.grad``);
    ``out``/``out_views`` a flat buffer and its per-parameter views that the final update is
    computed in; ``scratch``/``scratch_views`` the kernel's flat scratch and its per-parameter
    views (to bring a per-parameter list, as the parameters, into the flat layout).
    """

    grads: list[Tensor]
    out: Tensor
    out_views: list[Tensor]
    scratch: Tensor
    scratch_views: list[Tensor]


def per_step_values(steps: int | list[int], fn: Callable[[int], float]) -> float | list[float]:
    """Evaluate ``fn(step)`` for a common step or for a list of steps (memoised)."""
    if isinstance(steps, int):
        return fn(steps)
    cache: dict[int, float] = {}
    out = []
    for s in steps:
        v = cache.get(s)
        if v is None:
            v = cache[s] = fn(s)
        out.append(v)
    return out


def split_steps(steps: int | list[int], n: int, first: int = 1) -> tuple[list[int], list[int]]:
    """Indices of the ``n`` entries at step ``first`` and of the others."""
    if isinstance(steps, int):
        return (list(range(n)), []) if steps == first else ([], list(range(n)))
    return [k for k, s in enumerate(steps) if s == first], [
        k for k, s in enumerate(steps) if s != first
    ]


def mul(a: TensorList, b: TensorList | float, out: TensorList | None = None) -> TensorList:
    """``a * b`` per entry, in the buffers ``out`` where given and the list is short."""
    if out is None or len(out) > _LOOP_MAX:
        return torch._foreach_mul(a, b)
    if isinstance(b, (int, float)):
        for x, o in zip(a, out, strict=True):
            torch.mul(x, b, out=o)
    else:
        for x, y, o in zip(a, b, out, strict=True):
            torch.mul(x, y, out=o)
    return out


def mul_to(dest: TensorList, a: TensorList, b: TensorList) -> None:
    """``dest = a * b`` per entry."""
    if len(dest) > _LOOP_MAX:
        torch._foreach_copy_(dest, torch._foreach_mul(a, b))
    else:
        mul(a, b, dest)


def sqrt(a: TensorList, out: TensorList | None = None) -> TensorList:
    """``a.sqrt()`` per entry, in the buffers ``out`` where given and the list is short."""
    if out is None or len(out) > _LOOP_MAX:
        return torch._foreach_sqrt(a)
    for x, o in zip(a, out, strict=True):
        torch.sqrt(x, out=o)
    return out


def add_params(
    grads: TensorList, params: list[Tensor], alpha: float, gathered: Gathered | None
) -> TensorList:
    """``grad.add(p, alpha=alpha)`` per parameter (weight decay); a flat ``grads`` is the
    kernel's own gathered copy, so it is added to in place."""
    if gathered is None:
        return torch._foreach_add(grads, params, alpha=alpha)
    torch._foreach_copy_(gathered.scratch_views, params)  # the scratch holds the params for now
    torch._foreach_add_(grads, [gathered.scratch], alpha=alpha)
    return grads


def clamp_(tensors: TensorList, clip_norm: float) -> None:
    """``t.clamp_(-clip_norm, clip_norm)`` for each tensor (in place, as Pyro)."""
    if len(tensors) <= 16:
        # one pass over each tensor; the Python loop is cheap for few tensors
        for t in tensors:
            t.clamp_(-clip_norm, clip_norm)
    else:
        # two foreach passes, bitwise the same as clamp_ (NaN and min > max included)
        torch._foreach_clamp_min_(tensors, -clip_norm)
        torch._foreach_clamp_max_(tensors, clip_norm)


def needs_clamp(flat: Tensor, clip_norm: float) -> bool:
    """Whether ``flat.clamp(-clip_norm, clip_norm)`` would change any element.

    On CPU one reduction is much cheaper than clamping every gradient in place; on
    other devices it would cost a synchronisation, so we always clamp there.
    """
    if flat.device.type != "cpu" or flat.numel() == 0:
        return flat.numel() > 0
    lo, hi = torch.aminmax(flat)
    # NaN compares False and so forces the (NaN-preserving) clamp.
    return not (lo.item() >= -clip_norm and hi.item() <= clip_norm)


def clip_grads_(grads: TensorList, clip_norm: float, gathered: Gathered | None) -> None:
    """``p.grad.clamp_(-clip_norm, clip_norm)``, in place as Pyro: on a flat gathered copy
    only where an element is out of range, and then on the parameters' gradients too."""
    if gathered is None:
        clamp_(grads, clip_norm)
    elif needs_clamp(grads[0], clip_norm):
        grads[0].clamp_(-clip_norm, clip_norm)
        clamp_(gathered.grads, clip_norm)


def addcdiv_params_(
    params: list[Tensor],
    numerators: TensorList,
    denominators: TensorList,
    values: float | list[float],
    gathered: Gathered | None,
) -> None:
    """``p.addcdiv_(numerator, denominator, value=value)`` for each param.

    In the flat layout with one common value this computes ``value * numerator / denominator``
    flat and adds it with one ``_foreach_add_``, which is cheaper than ``_foreach_addcdiv_`` and
    rounds identically (``addcdiv`` computes ``self + (value * t1) / t2``).
    """
    if gathered is not None:
        assert isinstance(values, float)  # the flat layout is for one common step
        torch.mul(numerators[0], values, out=gathered.out).div_(denominators[0])
        torch._foreach_add_(params, gathered.out_views)
    else:
        torch._foreach_addcdiv_(params, numerators, denominators, values)


class AdamSettings(NamedTuple):
    """An Adam-family param group's settings as the kernels take them (those a class lacks at
    their neutral values: no weight decay, no clipping, ...; AMSGrad goes by its buffer)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float = 0.0
    maximize: bool = False
    decoupled_weight_decay: bool = False
    clip_norm: float = math.inf
    centered_variance: bool = False

    @classmethod
    def of(cls, group: dict) -> AdamSettings:
        beta1, beta2 = group["betas"]
        return cls(
            group["lr"],
            beta1,
            beta2,
            group["eps"],
            group.get("weight_decay", 0.0),
            group.get("maximize", False),
            group.get("decoupled_weight_decay", False),
            group.get("clip_norm", math.inf),
            group.get("centered_variance", False),
        )


def adam_step_size(lr: float, beta1: float, beta2: float) -> Callable[[int], float]:
    """``step -> -step_size`` exactly as Pyro's ClippedAdam/DCTAdam compute it."""

    def fn(step: int) -> float:
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        return -step_size

    return fn


def pyro_adam_moments_(
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    centered_variance: bool = False,
    denoms: TensorList | None = None,
) -> TensorList:
    """Pyro's Adam moment updates (ClippedAdam, DCTAdam), in this order, per entry::

        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        grad_var = grad - exp_avg if centered_variance else grad
        exp_avg_sq.mul_(beta2).addcmul_(grad_var, grad_var, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(eps)

    Returns the denominators (in the buffers ``denoms`` where given).
    """
    # Decay the first and second moment running average coefficient
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    grad_vars = torch._foreach_sub(grads, exp_avgs) if centered_variance else grads
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grad_vars, grad_vars, value=1 - beta2)
    out = sqrt(exp_avg_sqs, denoms)
    torch._foreach_add_(out, eps)
    return out
