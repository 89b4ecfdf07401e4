"""Memory layout of the multi-tensor ("foreach") optimizers: buckets, flat buffers, plans.

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
* :meth:`_Bucket.operands` hands a step's tensors to an optimizer's kernel function (see
  :mod:`pyrotrain.optim._kernels`) in one of the two layouts: flat (a gather-mode bucket
  stepping all its params at one common step) or per parameter. The update math lives in the
  kernels only.

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
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from ._kernels import Gathered, TensorList

NOT_MEMBER = -1
FALLBACK = -2

# Parameters with at most this many elements are gathered into a flat scratch buffer.
# Gathering costs one copy per step; list mode costs a few microseconds of per-tensor
# dispatch per foreach call. The crossover on a single CPU thread is between 1k and 4k
# elements (see scripts/bench_optim.py).
GATHER_MAX_NUMEL = 2048


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


class Operands(NamedTuple):
    """One update's tensors as a kernel takes them: ``grads``, every ``state`` list and the
    ``scratch`` (laid out like the state; None: the kernel allocates) share one layout, flat
    (``gathered`` set) or per parameter; ``params`` are always per parameter."""

    params: list[Tensor]
    grads: TensorList
    state: dict[str, list[Tensor]]
    scratch: list[Tensor] | None
    gathered: Gathered | None


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

    def operands(
        self, grads: list[Tensor], sel: list[int] | None, steps: int | list[int]
    ) -> Operands:
        """The tensors of an update of all (``sel is None``) or the ``sel`` params at ``steps``.

        Flat when every param of a gather-mode bucket steps at one common step (the gradients
        are gathered into ``g``), else per parameter, with the scratch ``d``'s views when the
        whole bucket steps.
        """
        if sel is None and self.gather and isinstance(steps, int):
            flat_grads = self.gather_(grads)
            gathered = Gathered(grads, self.g, self.gviews, self.d, self.dviews)
            state = {key: [flat] for key, flat in self.flat.items()}
            return Operands(self.params, [flat_grads], state, [self.d], gathered)
        if sel is None:
            return Operands(self.params, grads, self.views, self.dviews, None)
        state = {key: [views[j] for j in sel] for key, views in self.views.items()}
        return Operands([self.params[j] for j in sel], grads, state, None, None)

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
