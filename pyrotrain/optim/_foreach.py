"""Shared machinery for the multi-tensor ("foreach") versions of Pyro's optimizers.

The optimizers in this package compute exactly the floating-point operations of
Pyro's per-parameter loops, but for all parameters of a param group at once:

* Per-parameter optimizer state (``exp_avg``, ``sum``, ...) is packed into one flat
  buffer per *bucket* (params of one group sharing device, dtype and update kind).
  The entries of ``optimizer.state[p]`` are views into that buffer, so
  ``state_dict()``/``load_state_dict()`` keep torch's per-parameter layout and
  Pyro's state keys, while state-only operations (``exp_avg.mul_(beta1)``, ...)
  run as one kernel over the whole bucket.
* Small parameters (``numel <= gather_max_numel``) are handled in *gather* mode:
  their gradients are copied into a flat scratch buffer, so every elementwise
  operation is one kernel over the bucket. Larger parameters are handled in *list*
  mode: operations that involve gradients are ``torch._foreach_*`` calls over
  per-parameter views (no copy, and the per-tensor overhead is negligible).
* The final parameter update is always one ``torch._foreach_*`` call over the
  parameter list.

Elementwise kernels compute each element independently of the memory layout, so
these batched operations give the same floating-point results as Pyro's
per-parameter calls (the tests check this against Pyro's classes).

Plans (bucket layout and flat buffers) are cached per param group. They are rebuilt
when the group's param list changes, when a parameter gets its first gradient, or
after ``load_state_dict()``. Unlike torch's and Pyro's optimizers,
``load_state_dict()`` copies the given tensors, so the source state dict (or the
optimizer it came from) is never aliased. Replacing entries of
``optimizer.state[p]`` by hand (rather than through ``load_state_dict``) is not
supported; modifying them in place is. The ``step`` counters in the state are kept
up to date on every step.

These classes are meant to be used as one optimizer over many parameters; wrapped
by ``pyro.optim.PyroOptim`` (one optimizer per parameter) they give the same results
but are somewhat slower than Pyro's own classes. Equivalence is tested on CPU; on
other devices the foreach kernels should round alike but this is not tested.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

NOT_MEMBER = -1
FALLBACK = -2

# Parameters with at most this many elements are gathered into a flat scratch buffer.
# Gathering costs one copy per step; list mode costs a few microseconds of per-tensor
# dispatch per foreach call. The crossover on a single CPU thread is between 1k and 4k
# elements (see scripts/bench_optim.py).
GATHER_MAX_NUMEL = 2048

#: a tensor list as ``torch._foreach_*`` ops take it (their out-of-place forms return tuples)
TensorList: TypeAlias = list[Tensor] | tuple[Tensor, ...]


def _eager(method: Callable) -> Callable:
    """``method`` of torch's Optimizer without its ``torch._disable_dynamo`` wrapper.

    The wrapper's first call imports torch._dynamo, one of torch's largest imports; a run would
    pay it while building its first optimizer, before the first step. These optimizers run
    eagerly, where the wrapper changes nothing.
    """
    return getattr(method, "__wrapped__", method)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _plain_view(flat: Tensor, offset: int, shape: tuple[int, ...]) -> Tensor:
    return flat[offset : offset + _numel(shape)].view(shape)


class _Bucket:
    """Params of one group that share device, dtype and update kind.

    ``flat[key]`` is the packed state buffer for state key ``key`` and ``views[key]``
    the per-param views of it (which are also stored in ``optimizer.state[p]``).
    ``d``/``dviews`` is a scratch buffer laid out like the state, ``g``/``gviews`` a
    scratch buffer laid out like the params (gather mode only).
    """

    def __init__(
        self,
        params: list[Tensor],
        index: list[int],
        states: list[dict],
        state_shapes: list[tuple[int, ...]],
        keys: Sequence[str],
        *,
        gather: bool,
        info: Any = None,
        make_view: Callable[[Tensor, int, int], Tensor] | None = None,
    ):
        p0 = params[0]
        device, dtype = p0.device, p0.dtype
        self.params = params
        self.index = index
        self.states = states
        self.state_shapes = state_shapes
        self.gather = gather
        self.info = info
        self.device = device
        numels = [_numel(s) for s in state_shapes]
        total = sum(numels)
        if make_view is None:

            def make_view(flat: Tensor, i: int, offset: int) -> Tensor:
                return _plain_view(flat, offset, state_shapes[i])

        offsets = []
        off = 0
        for n in numels:
            offsets.append(off)
            off += n

        def views_of(flat: Tensor) -> list[Tensor]:
            return [make_view(flat, i, o) for i, o in enumerate(offsets)]

        self.flat: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        for key in keys:
            flat = torch.zeros(total, dtype=dtype, device=device)
            views = views_of(flat)
            for st, v in zip(states, views, strict=True):
                src = st.get(key)
                if src is not None:
                    v.copy_(src)
                st[key] = v
            self.flat[key] = flat
            self.views[key] = views
        self.d = torch.empty(total, dtype=dtype, device=device)
        self.dviews = views_of(self.d)
        if gather:
            shapes = [tuple(p.shape) for p in params]
            self.g = torch.empty(sum(_numel(s) for s in shapes), dtype=dtype, device=device)
            self.gviews = []
            off = 0
            for s in shapes:
                self.gviews.append(_plain_view(self.g, off, s))
                off += _numel(s)
            # torch.cat(out=...) is cheaper than foreach copy but needs 1-d inputs.
            self.cat_ok = all(len(s) == 1 for s in shapes)
        steps = [st["step"] for st in states]
        self.uniform_step: int | None = steps[0] if all(s == steps[0] for s in steps) else None

    def __len__(self) -> int:
        return len(self.params)

    def gather_(self, tensors: list[Tensor]) -> Tensor:
        """Copy ``tensors`` (shaped like the params) into the flat scratch ``g``."""
        if self.cat_ok:
            torch.cat(tensors, out=self.g)
        else:
            torch._foreach_copy_(self.gviews, tensors)
        return self.g

    def advance_steps(self, sel: list[int] | None) -> int | list[int]:
        """Increment ``state["step"]`` of all (``sel is None``) or selected params.

        Returns the common step if all params of the bucket are at the same step,
        else the list of steps of the updated params.
        """
        if sel is None:
            for st in self.states:
                st["step"] += 1
            if self.uniform_step is not None:
                self.uniform_step += 1
                return self.uniform_step
            steps = [st["step"] for st in self.states]
            if all(s == steps[0] for s in steps):
                self.uniform_step = steps[0]
                return steps[0]
            return steps
        self.uniform_step = None
        states = [self.states[j] for j in sel]
        for st in states:
            st["step"] += 1
        return [st["step"] for st in states]


class _Plan:
    __slots__ = (
        "group",
        "params",
        "state_obj",
        "attrs",
        "buckets",
        "member",
        "fallback",
        "all_members",
    )

    def __init__(self, group, params, state_obj, attrs, buckets, member, fallback):
        self.all_members = NOT_MEMBER not in member and FALLBACK not in member
        self.group = group
        self.params = params
        self.state_obj = state_obj
        self.attrs = attrs
        self.buckets = buckets
        self.member = member
        self.fallback = fallback


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


def clamp_(tensors: list[Tensor], clip_norm: float) -> None:
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


class MultiTensorOptimizer(Optimizer):
    """Base class: plan caching and the step loop. Subclasses define the update."""

    #: state keys that are packed into flat buffers
    _flat_keys: tuple[str, ...] = ()
    #: params with at most this many elements use gather mode
    gather_max_numel: int = GATHER_MAX_NUMEL

    def __init__(self, params, defaults: dict):
        self._plans: dict[int, _Plan] = {}
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ cache control
    def _invalidate(self) -> None:
        self._plans = {}

    def add_param_group(self, param_group: dict) -> None:
        _eager(Optimizer.add_param_group)(self, param_group)
        self._invalidate()

    def state_dict(self) -> dict:
        return _eager(Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict) -> None:
        _eager(Optimizer.load_state_dict)(self, state_dict)
        # torch's load_state_dict keeps the given tensors when dtype and device match;
        # copy them so that this optimizer never shares state with the source. The next
        # step packs the state into fresh flat buffers.
        for state in self.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    state[key] = value.clone()
        self._invalidate()

    #: instance attributes (tuning options) that pickling and deepcopy keep
    _pickled_attrs: tuple[str, ...] = ("gather_max_numel",)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for name in self._pickled_attrs:
            if name in self.__dict__:
                state[name] = self.__dict__[name]
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._invalidate()

    # ------------------------------------------------------------------ hooks
    def _param_attrs(self, params: list[Tensor]) -> list | None:
        """Per-param attributes that determine the bucket (checked every step)."""
        return None

    def _bucket_key(self, p: Tensor, attr: Any) -> tuple | None:
        """Update kind of ``p``; ``None`` sends it to the per-param fallback."""
        return ("plain",)

    def _state_shape(self, p: Tensor, key: tuple) -> tuple[int, ...]:
        return tuple(p.shape)

    def _state_keys(self, key: tuple) -> tuple[str, ...]:
        """The state keys packed into flat buffers for params of update kind ``key``."""
        return self._flat_keys

    def _is_started(self, state: dict) -> bool:
        return bool(state)

    def _state_compatible(self, p: Tensor, state: dict, key: tuple) -> bool:
        step = state.get("step")
        if type(step) is not int:
            return False
        shape = self._state_shape(p, key)
        for k in self._state_keys(key):
            v = state.get(k)
            if not isinstance(v, Tensor) or tuple(v.shape) != shape:
                return False
        return True

    def _make_buckets(
        self, key: tuple, params: list[Tensor], index: list[int], states: list[dict]
    ) -> list[_Bucket]:
        """Split same-key params into buckets (default: gather mode for small params)."""
        small = [j for j, p in enumerate(params) if p.numel() <= self.gather_max_numel]
        large = [j for j, p in enumerate(params) if p.numel() > self.gather_max_numel]
        if len(small) == 1:  # nothing to gather (e.g. one optimizer per param in PyroOptim)
            small, large = [], sorted(small + large)
        out = []
        for sel, gather in ((small, True), (large, False)):
            if sel:
                ps = [params[j] for j in sel]
                out.append(
                    _Bucket(
                        ps,
                        [index[j] for j in sel],
                        [states[j] for j in sel],
                        [self._state_shape(p, key) for p in ps],
                        self._state_keys(key),
                        gather=gather,
                        info=key,
                    )
                )
        return out

    # ------------------------------------------------------------------ planning
    def _get_plan(self, index: int, group: dict, attrs: list | None) -> _Plan:
        plan = self._plans.get(index)
        params = group["params"]
        if (
            plan is None
            or plan.group is not group
            or plan.state_obj is not self.state
            or len(plan.params) != len(params)
            or not all(map(operator.is_, plan.params, params))
            or plan.attrs != attrs
        ):
            plan = self._build_plan(index, group, attrs, None)
        return plan

    def _build_plan(
        self, index: int, group: dict, attrs: list | None, active: list[bool] | None
    ) -> _Plan:
        params = group["params"]
        member = [NOT_MEMBER] * len(params)
        fallback: list[int] = []
        keyed: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            st = self.state.get(p)
            started = bool(st and self._is_started(st))
            if not started and not (active is not None and active[i]):
                continue
            key = self._bucket_key(p, None if attrs is None else attrs[i])
            if key is None or (st and not self._state_compatible(p, st, key)):
                member[i] = FALLBACK
                fallback.append(i)
                continue
            keyed.setdefault((p.device, p.dtype, key), []).append(i)
        buckets: list[_Bucket] = []
        for (_, _, key), idx in keyed.items():
            ps = [params[i] for i in idx]
            states = []
            for p in ps:
                st = self.state[p]
                if not st:
                    st["step"] = 0  # Pyro's lazy initialisation (zeros added when packing)
                states.append(st)
            for b in self._make_buckets(key, ps, idx, states):
                for i in b.index:
                    member[i] = len(buckets)
                buckets.append(b)
        plan = _Plan(group, list(params), self.state, attrs, buckets, member, fallback)
        self._plans[index] = plan
        return plan

    # ------------------------------------------------------------------ stepping
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs a single optimization step.

        :param closure: An optional closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._begin_group(group)
            self._step_group(index, group)
        return loss

    def _begin_group(self, group: dict) -> None:
        """Per-group work done before any parameter (e.g. learning-rate decay)."""

    def _special_params(self, group: dict, params: list[Tensor], grads: list) -> list[int]:
        """Indices of params with a grad that take a per-param path this step."""
        return []

    def _step_special(self, group: dict, p: Tensor) -> None:
        raise NotImplementedError

    def _step_fallback(self, group: dict, p: Tensor) -> None:
        raise NotImplementedError

    def _update_bucket(
        self, group: dict, b: _Bucket, grads: list[Tensor], sel: list[int] | None
    ) -> None:
        raise NotImplementedError

    def _step_group(self, index: int, group: dict) -> None:
        params = group["params"]
        if not params:
            return
        grads = [p.grad for p in params]
        attrs = self._param_attrs(params)
        special = self._special_params(group, params, grads)
        plan = self._get_plan(index, group, attrs)
        if not special and plan.all_members and all(g is not None for g in grads):
            # fast path: every param is packed and has a gradient
            buckets = plan.buckets
            if len(buckets) == 1 and len(buckets[0]) == len(params):
                self._update_bucket(group, buckets[0], grads, None)
            else:
                for b in buckets:
                    self._update_bucket(group, b, [grads[i] for i in b.index], None)
            return
        active = [g is not None for g in grads]
        for i in special:
            active[i] = False
        if any(a and m == NOT_MEMBER for a, m in zip(active, plan.member, strict=True)):
            plan = self._build_plan(index, group, attrs, active)
        for b in plan.buckets:
            sel = [j for j, i in enumerate(b.index) if active[i]]
            if not sel:
                continue
            if len(sel) == len(b):
                self._update_bucket(group, b, [grads[i] for i in b.index], None)
            else:
                self._update_bucket(group, b, [grads[b.index[j]] for j in sel], sel)
        for i in plan.fallback:
            if active[i]:
                self._step_fallback(group, params[i])
        for i in special:
            self._step_special(group, params[i])

    def share_memory(self) -> None:
        """Move the optimizer state into shared memory (as Pyro's AdagradRMSProp)."""
        for state in self.state.values():
            for v in state.values():
                if isinstance(v, Tensor):
                    v.share_memory_()
        for plan in self._plans.values():
            for b in plan.buckets:
                b.d.share_memory_()


def addcdiv_params_(
    b: _Bucket,
    sel: list[int] | None,
    params: list[Tensor],
    numerators: TensorList,
    numerator_flat: Tensor | None,
    denominators: TensorList,
    values: float | list[float],
) -> None:
    """``p.addcdiv_(numerator, denominator, value=value)`` for each param.

    For a whole gather-mode bucket with one common value this computes
    ``value * numerator / denominator`` flat and adds it with one ``_foreach_add_``,
    which is cheaper than ``_foreach_addcdiv_`` and rounds identically
    (``addcdiv`` computes ``self + (value * t1) / t2``). ``numerator_flat`` and the
    denominators (``b.d``) are then flat buffers of the bucket.
    """
    if sel is None and b.gather and numerator_flat is not None and isinstance(values, float):
        torch.mul(numerator_flat, values, out=b.g).div_(b.d)
        torch._foreach_add_(params, b.gviews)
    else:
        torch._foreach_addcdiv_(params, numerators, denominators, values)


def adam_step_size(group: dict, beta1: float, beta2: float) -> Callable[[int], float]:
    """``step -> -step_size`` exactly as Pyro's ClippedAdam/DCTAdam compute it."""
    lr = group["lr"]

    def fn(step: int) -> float:
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        return -step_size

    return fn


def adam_moments(
    b: _Bucket,
    grads: list[Tensor],
    sel: list[int] | None,
    group: dict,
    *,
    clip_norm: float | None,
    weight_decay: float = 0.0,
    centered_variance: bool = False,
    transform: Callable[[list[Tensor]], list[Tensor]] | None = None,
    flat_grad: Tensor | None = None,
) -> tuple[list[Tensor], list[Tensor], TensorList]:
    """Pyro's Adam moment updates for a bucket (all params or the ``sel`` subset).

    Does, per param and in this order, exactly::

        grad = p.grad.clamp_(-clip_norm, clip_norm)        # in place, as Pyro
        grad = transform(grad)                             # DCTAdam's DCT, if any
        grad = grad.add(p, alpha=weight_decay)             # ClippedAdam, if != 0
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        grad_var = grad - exp_avg if centered_variance else grad
        exp_avg_sq.mul_(beta2).addcmul_(grad_var, grad_var, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(eps)

    ``flat_grad`` (all params only) is the already clipped and transformed gradient
    laid out like the flat state buffers. Returns ``(params, exp_avg views, denom
    views)`` of the updated params; the denominators of a full update are in ``b.d``.
    """
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    full = sel is None
    if full:
        params = b.params
        m_views, v_views = b.views["exp_avg"], b.views["exp_avg_sq"]
    else:
        assert sel is not None
        params = [b.params[j] for j in sel]
        m_views = [b.views["exp_avg"][j] for j in sel]
        v_views = [b.views["exp_avg_sq"][j] for j in sel]
    M, V = b.flat["exp_avg"], b.flat["exp_avg_sq"]

    g_list: TensorList
    if full and flat_grad is not None:
        g_list, m_list, v_list = [flat_grad], [M], [V]
    elif full and b.gather and transform is None:
        G = b.gather_(grads)
        if clip_norm is not None and needs_clamp(G, clip_norm):
            G.clamp_(-clip_norm, clip_norm)
            clamp_(grads, clip_norm)  # Pyro clamps p.grad in place
        if weight_decay != 0:
            # grad.add(p, alpha=weight_decay); the denominator scratch holds p for now
            torch._foreach_copy_(b.dviews, params)
            G.add_(b.d, alpha=weight_decay)
        g_list, m_list, v_list = [G], [M], [V]
    else:
        if clip_norm is not None:
            clamp_(grads, clip_norm)
        g_list = grads if transform is None else transform(grads)
        if weight_decay != 0:
            g_list = torch._foreach_add(g_list, params, alpha=weight_decay)
        m_list, v_list = m_views, v_views

    # Decay the first and second moment running average coefficient
    if full:
        M.mul_(beta1)
    else:
        torch._foreach_mul_(m_views, beta1)
    torch._foreach_add_(m_list, g_list, alpha=1 - beta1)
    if centered_variance:
        gv_list: TensorList = torch._foreach_sub(g_list, m_list)
    else:
        gv_list = g_list
    if full:
        V.mul_(beta2)
    else:
        torch._foreach_mul_(v_views, beta2)
    torch._foreach_addcmul_(v_list, gv_list, gv_list, value=1 - beta2)

    if full:
        torch.sqrt(V, out=b.d)
        b.d.add_(eps)
        d_views: TensorList = b.dviews
    else:
        d_views = torch._foreach_sqrt(v_views)
        torch._foreach_add_(d_views, eps)
    return params, m_views, d_views
