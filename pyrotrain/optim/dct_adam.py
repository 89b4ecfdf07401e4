"""Multi-tensor version of :class:`pyro.optim.dct_adam.DCTAdam`."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from pyro.ops.tensor_utils import as_complex, next_fast_len
from pyro.optim.dct_adam import DCTAdam as PyroDCTAdam
from torch import Tensor
from torch.fft import irfft, rfft
from torch.nn.functional import pad

from ._buckets import MultiTensorOptimizer, _Bucket
from ._kernels import (
    AdamSettings,
    TensorList,
    adam_step_size,
    clamp_,
    per_step_values,
    pyro_adam_moments_,
)
from .clipped_adam import _multi_tensor_clipped_adam


# --------------------------------------------------------------------------- DCT
# pyro.ops.tensor_utils.dct/idct, operation for operation, except that the constant
# coefficient and scale tensors (which Pyro recomputes on every call) are cached.
@functools.lru_cache(maxsize=64)
def _dct_constants(N: int, dtype: torch.dtype, device: torch.device):
    coef_real = torch.cos(torch.linspace(0, 0.5 * math.pi, N + 1, dtype=dtype, device=device))
    M = N // 2 + 1  # == rfft(y, n=N).size(-1)
    dct_coef = as_complex(torch.stack([coef_real[:M], -coef_real[-M:].flip(-1)], dim=-1))
    idct_coef = as_complex(torch.stack([coef_real[:M], coef_real[-M:].flip(-1)], dim=-1))
    one = torch.ones((), dtype=dtype, device=device)
    scale = torch.cat([one.new_tensor([math.sqrt(N)]), one.new_full((N - 1,), math.sqrt(0.5 * N))])
    return M, dct_coef, idct_coef, scale


def dct(x: Tensor, dim: int = -1) -> Tensor:
    """:func:`pyro.ops.tensor_utils.dct` (orthonormal DCT-II) with cached constants."""
    if dim >= 0:
        dim -= x.dim()
    if dim != -1:
        y = x.reshape(x.shape[: dim + 1] + (-1,)).transpose(-1, -2)
        return dct(y).transpose(-1, -2).reshape(x.shape)
    N = x.size(-1)
    M, coef, _, scale = _dct_constants(N, x.dtype, x.device)
    y = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    Y = rfft(y, n=N)
    X = coef * Y
    X = torch.cat([X.real, -X.imag[..., 1 : (N - M + 1)].flip(-1)], dim=-1)
    return X / scale


def idct(x: Tensor, dim: int = -1) -> Tensor:
    """:func:`pyro.ops.tensor_utils.idct` (inverse of :func:`dct`) with cached constants."""
    if dim >= 0:
        dim -= x.dim()
    if dim != -1:
        y = x.reshape(x.shape[: dim + 1] + (-1,)).transpose(-1, -2)
        return idct(y).transpose(-1, -2).reshape(x.shape)
    N = x.size(-1)
    M, _, coef, scale = _dct_constants(N, x.dtype, x.device)
    x = x * scale
    xi = torch.nn.functional.pad(-x[..., N - M + 1 :], (0, 1)).flip(-1)
    X = torch.stack([x[..., :M], xi], dim=-1)
    Y = coef * as_complex(X)
    y = irfft(Y, n=N)
    return torch.stack([y, y.flip(-1)], dim=-1).reshape(x.shape[:-1] + (-1,))[..., :N]


# --------------------------------------------------------------------------- Pyro's helpers
# Same operations as pyro.optim.dct_adam (kept here so that a private Pyro name is not
# imported).
def _transform_forward(x: Tensor, dim: int, duration: int) -> Tensor:
    assert not x.requires_grad
    assert dim < 0
    assert duration == x.size(dim)
    time_domain = x
    new_size = next_fast_len(duration)
    if new_size == duration:
        freq_domain = x
    else:
        freq_domain = pad(x, (0, 0) * (-1 - dim) + (0, new_size - duration))
    freq_domain = dct(freq_domain, dim)
    return torch.cat([time_domain, freq_domain], dim=dim)


def _transform_inverse(x: Tensor, dim: int, duration: int) -> Tensor:
    assert not x.requires_grad
    assert dim < 0
    dots = (slice(None),) * (x.dim() + dim)
    left = dots + (slice(None, duration),)
    right = dots + (slice(duration, None),)
    return idct(x[right], dim)[left].add_(x[left])


class _DctBatch:
    """Layout of a batched-DCT bucket: params sharing dtype, device, time dim and length.

    Every param of shape ``S`` with time dim ``dim`` and length ``T = S[dim]`` is seen as
    ``pre x k`` rows of length ``T`` (``pre = prod(S[:dim])``, ``k = prod(S[dim+1:])``),
    the rows Pyro's :func:`~pyro.ops.tensor_utils.dct` transforms. The flat state
    holds, for all params, rows of length ``T + N`` (``N = next_fast_len(T)``), and
    ``optimizer.state[p]`` holds views of them with Pyro's shapes.
    """

    def __init__(self, dim: int, duration: int, shapes: list[tuple[int, ...]]):
        self.dim = dim
        self.T = duration
        self.N = next_fast_len(duration)
        self.shapes = shapes
        self.pre_k = []
        self.row_offsets = []
        rows = 0
        for s in shapes:
            d = len(s) + dim
            pre, k = math.prod(s[:d]), math.prod(s[d + 1 :])
            self.pre_k.append((pre, k))
            self.row_offsets.append(rows)
            rows += pre * k
        self.rows = rows

    def state_shape(self, i: int) -> tuple[int, ...]:
        s = self.shapes[i]
        d = len(s) + self.dim
        return s[:d] + (self.T + self.N,) + s[d + 1 :]

    def state_view(self, flat: Tensor, i: int, offset: int) -> Tensor:
        pre, k = self.pre_k[i]
        W = self.T + self.N
        seg = flat[offset : offset + pre * k * W]
        return seg.view(pre, k, W).transpose(1, 2).view(self.state_shape(i))

    def to_rows(self, grads: list[Tensor]) -> Tensor:
        T = self.T
        rows = [
            g.reshape(pre, T, k).transpose(1, 2).reshape(pre * k, T)
            for g, (pre, k) in zip(grads, self.pre_k, strict=True)
        ]
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def from_rows(self, x: Tensor) -> list[Tensor]:
        """Per-param views (Pyro's shapes) of a ``(rows, T)`` tensor."""
        out = []
        for i, ((pre, k), r0) in enumerate(zip(self.pre_k, self.row_offsets, strict=True)):
            out.append(
                x[r0 : r0 + pre * k].view(pre, k, self.T).transpose(1, 2).view(self.shapes[i])
            )
        return out


class DCTAdam(MultiTensorOptimizer):
    r"""Multi-tensor :class:`pyro.optim.dct_adam.DCTAdam`: EXPERIMENTAL Discrete Cosine
    Transform-augmented :class:`~pyrotrain.optim.clipped_adam.ClippedAdam`.

    This acts like ClippedAdam on most parameters, but if a parameter has an
    attribute ``._pyro_dct_dim`` indicating a time dimension (as set by
    :class:`pyro.contrib.forecast.util.MarkDCTParamMessenger`), Adam runs on the
    gradient augmented with its orthonormal DCT-II along that dimension (zero-padded
    to :func:`~pyro.ops.tensor_utils.next_fast_len`), and the update is transformed
    back. With ``subsample_aware=True``, parameters with a ``._pyro_subsample``
    attribute ``{dim: indices}`` only update the moments of the subsampled elements,
    each element keeping its own step count.

    Same arguments, defaults, state keys and floating-point operations as Pyro's class,
    but all parameters of a param group are updated together with ``torch._foreach_*``
    calls and flat state buffers (see :mod:`pyrotrain.optim._buckets`).

    The algorithm (kernels: ``_multi_tensor_clipped_adam`` for unmarked params,
    ``_multi_tensor_dct_adam`` for marked ones, ``_batched_dct_adam`` with ``batch_dct``; the
    per-parameter and subsample-aware paths are Pyro's own methods)::

        input:  params theta, lr, betas (beta1, beta2), eps, clip_norm c, lrd
        state:  per param: step t = 0, m = 0, v = 0 (along a marked time dim of length T,
                of length T + N, N = next_fast_len(T))
        at every step(), for every param group: lr = lr * lrd; then for every theta whose
        grad is not None:
            t = t + 1
            g = clamp(grad, -c, c)                  (written back to grad)
            g = [g, DCT(pad(g, N))] along the time dim   (if marked)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            u = m / (sqrt(v) + eps)
            u = u[:T] + IDCT(u[T:])[:T]             (if marked)
            theta += -(lr * sqrt(1 - beta2**t) / (1 - beta1**t)) * u
        output: theta

    :param params: iterable of parameters to optimize or dicts defining parameter groups
    :param float lr: learning rate (default: 1e-3)
    :param tuple betas: coefficients used for computing
        running averages of gradient and its square (default: (0.9, 0.999))
    :param float eps: term added to the denominator to improve
        numerical stability (default: 1e-8)
    :param float clip_norm: magnitude of norm to which gradients are clipped (default: 10.0)
    :param float lrd: rate at which learning rate decays (default: 1.0)
    :param bool subsample_aware: whether to update gradient statistics only for
        those elements that appear in a subsample (default: False).
    :param bool batch_dct: keyword-only, not in Pyro. Compute the DCTs of parameters
        that share dtype, device, time dim and length as one batched transform
        (default: False). This is 2-4x faster on DCT-marked parameters (see
        ``scripts/bench_optim.py``), but the batched FFT (MKL on CPU) rounds some
        elements differently in the last bit than Pyro's per-parameter FFTs, so
        trajectories are no longer bitwise Pyro's: after 50 SVI steps they differed
        by ~1e-7 of the parameters' scale in float32 (1e-15 in float64), which is
        2e-5 relative for a parameter that happened to be near zero. With the default
        each parameter is transformed separately with exactly Pyro's calls.

    Differences from Pyro: the update runs under ``torch.no_grad()`` on the parameters
    themselves rather than on ``p.data`` (parameter version counters advance); sparse
    gradients are not supported (torch raises); for ``batch_dct=True`` see above.
    Parameters taking the subsample-aware path are updated one at a time with Pyro's
    code (vectorising the masked updates does not pay for the few subsampled params
    of a model), including its failure on parameters that are both subsampled and
    DCT-marked. ``p.grad`` is clamped in place, as in Pyro.

    **References**

    [1] `A Method for Stochastic Optimization`, Diederik P. Kingma, Jimmy Ba
        https://arxiv.org/abs/1412.6980

    [2] The DCT-II used is :func:`pyro.ops.tensor_utils.dct` (orthonormal, equivalent
        to ``scipy.fftpack.dct(norm="ortho")``).
    """

    _flat_keys = ("exp_avg", "exp_avg_sq")
    _pickled_attrs = ("gather_max_numel", "batch_dct")
    batch_dct: bool = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        clip_norm: float = 10.0,
        lrd: float = 1.0,
        subsample_aware: bool = False,
        *,
        batch_dct: bool = False,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            clip_norm=clip_norm,
            lrd=lrd,
            subsample_aware=subsample_aware,
        )
        if batch_dct is not type(self).batch_dct:
            self.batch_dct = batch_dct
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ planning hooks
    def _param_attrs(self, params: list[Tensor]) -> list:
        return [getattr(p, "_pyro_dct_dim", None) for p in params]

    def _bucket_key(self, p: Tensor, attr: Any) -> tuple | None:
        if attr is None:
            return ("plain",)
        if type(attr) is not int or not -p.dim() <= attr < 0:
            return None  # Pyro's code path (and its errors)
        return ("dct", attr, p.size(attr))

    def _state_shape(self, p: Tensor, key: tuple) -> tuple[int, ...]:
        shape = tuple(p.shape)
        if key[0] == "plain":
            return shape
        _, dim, duration = key
        d = len(shape) + dim
        return shape[:d] + (duration + next_fast_len(duration),) + shape[d + 1 :]

    def _make_buckets(self, key, params, index, states) -> list[_Bucket]:
        if key[0] == "plain":
            return super()._make_buckets(key, params, index, states)
        _, dim, duration = key
        if self.batch_dct and len(params) > 1:
            layout = _DctBatch(dim, duration, [tuple(p.shape) for p in params])
            b = _Bucket(
                params,
                index,
                states,
                [layout.state_shape(i) for i in range(len(params))],
                self._flat_keys,
                gather=False,
                info=("dct-batched", layout),
                make_view=layout.state_view,
            )
            return [b]
        shapes = [self._state_shape(p, key) for p in params]
        return [
            _Bucket(
                params,
                index,
                states,
                shapes,
                self._flat_keys,
                gather=False,
                info=("dct", dim, duration),
            )
        ]

    # ------------------------------------------------------------------ stepping
    def _begin_group(self, group: dict) -> None:
        group["lr"] *= group["lrd"]

    def _special_params(self, group: dict, params: list[Tensor], grads: list) -> list[int]:
        if not group["subsample_aware"]:
            return []
        return [
            i
            for i, (p, g) in enumerate(zip(params, grads, strict=True))
            if g is not None and getattr(p, "_pyro_subsample", {})
        ]

    def _update_bucket(
        self, group: dict, b: _Bucket, grads: list[Tensor], sel: list[int] | None
    ) -> None:
        settings = AdamSettings.of(group)  # no weight decay, no centered variance
        steps = b.advance_steps(sel)
        kind = b.info[0]
        if kind == "dct-batched" and sel is None:
            m, v = b.flat["exp_avg"], b.flat["exp_avg_sq"]
            _batched_dct_adam(b.params, grads, m, v, steps, settings, layout=b.info[1], d=b.d)
            return
        ops = b.operands(grads, sel, steps)
        args = (ops.params, ops.grads, ops.state["exp_avg"], ops.state["exp_avg_sq"], steps)
        if kind == "plain":
            _multi_tensor_clipped_adam(*args, settings, scratch=ops.scratch, gathered=ops.gathered)
            return
        dim, duration = (b.info[1], b.info[2]) if kind == "dct" else (b.info[1].dim, b.info[1].T)
        _multi_tensor_dct_adam(*args, settings, dim=dim, duration=duration, scratch=ops.scratch)

    # ------------------------------------------------------------------ Pyro's per-param code
    # Parameters the buckets don't cover (subsample-aware ones, state laid out otherwise) take
    # Pyro's own per-parameter methods, which only use ``self.state`` and the group.
    def _step_fallback(self, group: dict, p: Tensor) -> None:
        PyroDCTAdam._step_param(self, group, p)  # type: ignore[arg-type]

    def _step_special(self, group: dict, p: Tensor) -> None:
        PyroDCTAdam._step_param_subsample(self, group, p, getattr(p, "_pyro_subsample", {}))  # type: ignore[arg-type]


def _multi_tensor_dct_adam(
    params: list[Tensor],
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    steps: int | list[int],
    settings: AdamSettings,
    *,
    dim: int,
    duration: int,
    scratch: TensorList | None = None,
) -> None:
    """Pyro's update of DCT-marked parameters (time dim ``dim`` of length ``duration``), one
    transform per parameter, per-parameter layout; the unmarked ones take ClippedAdam's."""
    lr, beta1, beta2, eps, _, _, _, clip_norm, _ = settings
    clamp_(grads, clip_norm)  # in place on p.grad, as Pyro
    freq_grads = [_transform_forward(g, dim, duration) for g in grads]
    denoms = pyro_adam_moments_(
        freq_grads, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2, eps=eps, denoms=scratch
    )
    updates: TensorList = torch._foreach_div(exp_avgs, denoms)  # exp_avg / denom
    updates = [_transform_inverse(u, dim, duration) for u in updates]
    values = per_step_values(steps, adam_step_size(lr, beta1, beta2))
    torch._foreach_mul_(updates, values)  # step.mul_(-step_size)
    torch._foreach_add_(params, updates)  # p.data.add_(step)


def _batched_dct_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: int | list[int],
    settings: AdamSettings,
    *,
    layout: _DctBatch,
    d: Tensor,
) -> None:
    """:func:`_multi_tensor_dct_adam` with one batched transform over all rows of the params
    (``batch_dct=True``: rounds differently from Pyro's per-parameter FFTs); the state and the
    scratch ``d`` are flat buffers in ``layout``'s rows."""
    lr, beta1, beta2, eps, _, _, _, clip_norm, _ = settings
    T, N = layout.T, layout.N
    clamp_(grads, clip_norm)  # in place on p.grad, as Pyro
    x = layout.to_rows(grads)  # (rows, T)
    freq = dct(pad(x, (0, N - T)) if N != T else x, -1)
    g = torch.cat([x, freq], dim=-1)  # _transform_forward, rows layout
    pyro_adam_moments_(
        [g.view(-1)], [exp_avg], [exp_avg_sq], beta1=beta1, beta2=beta2, eps=eps, denoms=[d]
    )
    u = torch.div(exp_avg, d, out=d).view(layout.rows, T + N)
    step = idct(u[:, T:], -1)[:, :T].add_(u[:, :T])  # _transform_inverse
    values = per_step_values(steps, adam_step_size(lr, beta1, beta2))
    if isinstance(values, float):
        step.mul_(values)
        torch._foreach_add_(params, layout.from_rows(step))
    else:
        updates = layout.from_rows(step)
        torch._foreach_mul_(updates, values)
        torch._foreach_add_(params, updates)
