"""Lazy (row-sparse) Adam and ClippedAdam: moments and parameters move only in the touched rows,
as :class:`torch.optim.SparseAdam` does. An approximation of the dense optimizers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._kernels import AdamSettings
from .adam import Adam
from .clipped_adam import ClippedAdam
from .rows import MIN_ROW_SPARSE_NUMEL, RowSparse


class LazyClippedAdam(RowSparse, ClippedAdam):
    r""":class:`ClippedAdam` whose large parameters are updated in their touched rows only.

    For the touched rows :math:`R` of a row-tracked parameter (see
    :class:`~pyrotrain.optim.rows.RowFinder`), with :math:`k` the parameter's step count, the
    dense update restricted to those rows (kernel ``_rows_clipped_adam``)::

        g_R = clamp(grad_R, -c, c)          (written back to grad, as Pyro does)
        g_R = g_R + weight_decay * theta_R  (if weight_decay != 0)
        m_R = beta1 m_R + (1 - beta1) g_R
        v_R = beta2 v_R + (1 - beta2) s_R^2,   s_R = g_R - m_R if centered_variance else g_R
        theta_R -= lr sqrt(1 - beta2^k) / (1 - beta1^k) * m_R / (sqrt(v_R) + eps)

    Other rows keep their moments and values. **This is not the dense update**: there, an
    untouched row's moments decay and its value keeps moving with its momentum. It is the
    update of :class:`torch.optim.SparseAdam` (which is this one with ``clip_norm=inf``,
    ``weight_decay=0``, ``lrd=1``, up to rounding: it computes ``m + (g - m)(1 - beta1)``).
    Parameters with fewer than ``min_row_numel`` elements are updated whole, as
    :class:`ClippedAdam` does. State keys as :class:`ClippedAdam`.

    :param min_row_numel: parameters with at least this many elements are updated by rows.
    """

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
        *,
        min_row_numel: int = MIN_ROW_SPARSE_NUMEL,
    ):
        self._init_rows(min_row_numel)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            lrd=lrd,
            centered_variance=centered_variance,
        )

    def _step_rows(self, group: dict, p: Tensor, index: Tensor, grad: Tensor) -> None:
        state = _moments(self.state[p], p, ("exp_avg", "exp_avg_sq"))
        state["step"] = int(state["step"]) + 1
        settings = AdamSettings.of(group)
        _rows_clipped_adam(
            p, index, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], settings
        )
        self.rows.put(p, index, grad)  # clamped in place: Pyro clamps p.grad


class LazyAdam(RowSparse, Adam):
    r""":class:`Adam` (torch's math) whose large parameters are updated in their touched rows
    only: for the touched rows :math:`R` of a row-tracked parameter, with :math:`k` its step
    count, the dense update restricted to them (kernel ``_rows_adam``)::

        g_R = -grad_R if maximize else grad_R
        theta_R *= 1 - lr * weight_decay            (decoupled_weight_decay)
        g_R = g_R + weight_decay * theta_R          (otherwise, if weight_decay != 0)
        m_R = m_R.lerp(g_R, 1 - beta1)
        v_R = beta2 v_R + (1 - beta2) g_R^2
        v_R = max(v_max_R, v_R)                     (amsgrad; kept as v_max_R)
        theta_R -= lr / (1 - beta1^k) * m_R / (sqrt(v_R) / sqrt(1 - beta2^k) + eps)

    Other rows keep their moments and values (weight decay included), as with
    :class:`torch.optim.SparseAdam`; **an approximation of the dense update**, in which an
    untouched row's moments decay and its value keeps moving. Parameters with fewer than
    ``min_row_numel`` elements are updated whole, as :class:`Adam` does.

    :param min_row_numel: parameters with at least this many elements are updated by rows.
    """

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
        min_row_numel: int = MIN_ROW_SPARSE_NUMEL,
    ):
        self._init_rows(min_row_numel)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )

    def _special_params(self, group: dict, params: list[Tensor], grads: list) -> list[int]:
        return []  # sparse gradients: rows of tracked params; the others were made dense

    def _step_rows(self, group: dict, p: Tensor, index: Tensor, grad: Tensor) -> None:
        state = _moments(
            self.state[p], p, self._AMSGRAD_KEYS if group["amsgrad"] else self._flat_keys
        )
        state["step"] = int(state["step"]) + 1
        _rows_adam(
            p,
            index,
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state.get("max_exp_avg_sq") if group["amsgrad"] else None,
            state["step"],
            AdamSettings.of(group),
        )


def _moments(state: dict, p: Tensor, keys: tuple[str, ...]) -> dict:
    """``state`` with a step count and zero moments where it has none yet."""
    state.setdefault("step", 0)
    for key in keys:
        if key not in state:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _rows_clipped_adam(
    p: Tensor,
    index: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    k: int,
    settings: AdamSettings,
) -> None:
    """ClippedAdam's update of rows ``index`` of ``p`` (their gradient ``grad``, clamped in
    place) at step ``k``; the other rows' moments and values stay."""
    lr, beta1, beta2, eps, weight_decay, _, _, clip_norm, centered_variance = settings
    g = grad.clamp_(-clip_norm, clip_norm)
    theta = p.index_select(0, index)
    if weight_decay != 0:
        g = g.add(theta, alpha=weight_decay)
    m = exp_avg.index_select(0, index).mul_(beta1).add_(g, alpha=1 - beta1)
    gv = g - m if centered_variance else g
    v = exp_avg_sq.index_select(0, index).mul_(beta2)
    v.addcmul_(gv, gv, value=1 - beta2)
    exp_avg.index_copy_(0, index, m)
    exp_avg_sq.index_copy_(0, index, v)
    denom = v.sqrt().add_(eps)
    step_size = lr * math.sqrt(1 - beta2**k) / (1 - beta1**k)
    p.index_copy_(0, index, theta.addcdiv_(m, denom, value=-step_size))


def _rows_adam(
    p: Tensor,
    index: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    k: int,
    settings: AdamSettings,
) -> None:
    """torch's Adam update of rows ``index`` of ``p`` (their gradient ``grad``) at step ``k``;
    ``max_exp_avg_sq`` given for AMSGrad. The other rows' moments and values stay."""
    lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay, _, _ = settings
    g = -grad if maximize else grad
    theta = p.index_select(0, index)
    if weight_decay != 0:
        if decoupled_weight_decay:
            theta.mul_(1 - lr * weight_decay)
        else:
            g = g.add(theta, alpha=weight_decay)
    m = exp_avg.index_select(0, index).lerp_(g, 1 - beta1)
    v = exp_avg_sq.index_select(0, index).mul_(beta2)
    v.addcmul_(g, g, value=1 - beta2)
    exp_avg.index_copy_(0, index, m)
    exp_avg_sq.index_copy_(0, index, v)
    if max_exp_avg_sq is not None:
        v = torch.maximum(max_exp_avg_sq.index_select(0, index), v)
        max_exp_avg_sq.index_copy_(0, index, v)
    denom = (v.sqrt() / (1 - beta2**k) ** 0.5).add_(eps)
    p.index_copy_(0, index, theta.addcdiv_(m, denom, value=-(lr / (1 - beta1**k))))
