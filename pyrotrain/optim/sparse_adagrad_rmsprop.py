"""Row-sparse :class:`~pyrotrain.optim.adagrad_rmsprop.AdagradRMSProp`: a step costs the rows a
minibatch touched, with the dense update's results."""

from __future__ import annotations

import torch
from torch import Tensor

from .adagrad_rmsprop import AdagradRMSProp
from .rows import MIN_ROW_SPARSE_NUMEL, RowSparse


class SparseAdagradRMSProp(RowSparse, AdagradRMSProp):
    r""":class:`AdagradRMSProp` that updates only the touched rows of large parameters, and is
    still the dense update, to floating-point rounding.

    In the dense update a row whose gradient is zero at a step keeps its value, and its running
    sum decays: :math:`s \leftarrow (1 - t)\, s`. So a row need only be visited when touched: it
    keeps ``row_step``, the step its sum was last brought up to date at, and when next touched at
    step :math:`k` (the parameter's own step count, as in the dense update) it takes the decay it
    missed and this step's update at once. For the rows :math:`R` of a parameter :math:`\theta`
    (see :class:`~pyrotrain.optim.rows.RowFinder`), with :math:`j` their ``row_step`` (kernel
    :func:`_rows_adagrad_rmsprop`):

    .. math::

        s_R &\leftarrow g_R^2 \quad\text{if } k = 1, \qquad
        s_R \leftarrow (1 - t)^{k - j}\, s_R + t\, g_R^2 \quad\text{otherwise} \\
        \theta_R &\leftarrow \theta_R - \eta\, k^{-1/2 + \delta}\, \frac{g_R}{1 + \sqrt{s_R}},
        \qquad j_R \leftarrow k

    A row touched at every step takes bitwise the dense update; a row that missed steps differs
    by the rounding of one power against repeated products. Parameters with fewer than
    ``min_row_numel`` elements (or no dims) are updated whole, as :class:`AdagradRMSProp` does.

    State: ``step`` and ``sum`` as :class:`AdagradRMSProp`, plus ``row_step`` (one int per row)
    for row-tracked parameters; ``sum`` holds each row as of its ``row_step`` (untouched rows
    have not yet taken their decay). Checkpoints keep all three, so a resumed run continues
    exactly. Loading a dense optimizer's state starts every row at its parameter's step.

    :param min_row_numel: parameters with at least this many elements are updated by rows.
    """

    def __init__(
        self,
        params,
        eta: float = 1.0,
        delta: float = 1.0e-16,
        t: float = 0.1,
        *,
        min_row_numel: int = MIN_ROW_SPARSE_NUMEL,
    ):
        self._init_rows(min_row_numel)
        super().__init__(params, eta=eta, delta=delta, t=t)

    def _init_state(self, p: Tensor) -> None:
        super()._init_state(p)
        if self.rows.tracked(p):
            self._row_step(p)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts state tensors to the param's dtype
            if "row_step" in state:
                state["row_step"] = state["row_step"].to(torch.int64)

    def _row_step(self, p: Tensor) -> Tensor:
        state = self.state[p]
        row_step = state.get("row_step")
        if row_step is None:  # fresh, or a dense optimizer's state: every row is up to date
            row_step = torch.full((p.shape[0],), int(state.get("step", 0)), device=p.device)
            state["row_step"] = row_step
        return row_step

    def _step_rows(self, group: dict, p: Tensor, index: Tensor, grad: Tensor) -> None:
        state = self.state[p]
        if "sum" not in state:
            state["sum"] = torch.zeros_like(p)
        state["step"] = int(state.get("step", 0)) + 1
        _rows_adagrad_rmsprop(
            p,
            index,
            grad,
            state["sum"],
            self._row_step(p),
            state["step"],
            eta=group["eta"],
            delta=group["delta"],
            t=group["t"],
        )


def _rows_adagrad_rmsprop(
    p: Tensor,
    index: Tensor,
    g: Tensor,
    sum_: Tensor,
    row_step: Tensor,
    step: int,
    *,
    eta: float,
    delta: float,
    t: float,
) -> None:
    """Pyro's AdagradRMSProp update of rows ``index`` of ``p`` (gradient ``g``) at its step
    ``step``, with the decay each row missed since its ``row_step`` (all updated in place)."""
    if step == 1:
        s = g * g  # state["sum"] = grad * grad
    else:
        missed = (step - row_step.index_select(0, index)).to(sum_.dtype)
        decay = torch.pow(1.0 - t, missed).view(-1, *([1] * (g.dim() - 1)))
        s = sum_.index_select(0, index).mul_(decay)  # state["sum"] *= 1.0 - t, k - j times
        tmp = torch.mul(g, t).mul_(g)
        s.add_(tmp)  # state["sum"] += t * grad * grad
    sum_.index_copy_(0, index, s)
    row_step.index_fill_(0, index, step)
    std = s.sqrt_().add_(1.0)  # 1.0 + state["sum"].sqrt()
    lr = eta * (step ** (-0.5 + delta))
    rows = p.index_select(0, index).addcdiv_(g, std, value=-lr)
    p.index_copy_(0, index, rows)
