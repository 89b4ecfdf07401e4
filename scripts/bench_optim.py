#!/usr/bin/env python
"""Benchmark pyrotrain's multi-tensor optimizers against Pyro's per-parameter ones.

Pyro is timed as SVI uses it: ``pyro.optim.PyroOptim(cls, args)`` holding one Pyro
optimizer (for Adam, torch's: ``pyro.optim.Adam``) per parameter and called with the
parameter list. Ours is one optimizer
over all parameters, ``opt.step()``. Both run on one CPU thread, side by side with
interleaved repeats after a warm-up, on separate copies of the same parameters and
gradients.

Times are medians over the repeats; the spread column is the interquartile range
relative to the median. On the largest shape the achieved memory bandwidth of the
update is reported as a fraction of a plain ``Tensor.copy_`` moving the same number
of bytes (timed interleaved with the optimizers). The bytes counted are the logical
minimum the update has to move: reading param, grad and state and writing param and
state (ClippedAdam/DCTAdam/Adam: read p, g, m, v and write p, m, v = 7 arrays;
AdagradRMSProp: read p, g, sum and write p, sum = 5 arrays).

Usage::

    python scripts/bench_optim.py [--quick] [--out bench/optim.json] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import pyro
import pyro.optim
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam
from pyro.optim.dct_adam import DCTAdam as PyroDCTAdam

from pyrotrain.optim.adagrad_rmsprop import AdagradRMSProp
from pyrotrain.optim.adam import Adam
from pyrotrain.optim.clipped_adam import ClippedAdam
from pyrotrain.optim.dct_adam import DCTAdam

OPTIMIZERS = {
    "AdagradRMSProp": (PyroAdagradRMSProp, AdagradRMSProp, {}, 5),
    "ClippedAdam": (PyroClippedAdam, ClippedAdam, {}, 7),
    "DCTAdam": (PyroDCTAdam, DCTAdam, {}, 7),
    "Adam": (torch.optim.Adam, Adam, {}, 7),  # pyro.optim.Adam: torch's Adam per parameter
}
SHAPES = [(1000, 10), (200, 100), (10, 100000)]
# issue #6: minimum speedups over Pyro (one thread), and of copy bandwidth on the largest
TARGETS = {(1000, 10): 5.0, (200, 100): 3.0, (10, 100000): 1.0}
TARGET_BANDWIDTH_FRACTION = 0.6


def make_params(n: int, m: int, seed: int, dct_dim: int | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(n):
        p = torch.randn(m, generator=g).requires_grad_()
        # gradients inside the clipping range, as in a typical step
        p.grad = torch.randn(m, generator=g)
        if dct_dim is not None:
            p._pyro_dct_dim = dct_dim
        params.append(p)
    return params


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


def time_steps(fn: Callable[[], None], steps: int) -> float:
    t0 = clock()
    for _ in range(steps):
        fn()
    return (clock() - t0) / steps * 1e3


def bench_interleaved(
    fns: list[Callable[[], None]], steps: int, repeats: int, warmup: int
) -> list[list[float]]:
    """ms per call of each fn, over ``repeats`` rounds that interleave the fns."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(repeats):
        for k in order:
            times[k].append(time_steps(fns[k], steps))
        order.reverse()  # alternate who goes first, so that drift affects all alike
    return times


def make_copy(total_bytes: int, dtype: torch.dtype) -> Callable[[], None]:
    """A plain tensor copy that reads and writes ``total_bytes`` in all."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = total_bytes // 2 // itemsize
    src = torch.randn(n, dtype=dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def summarize(xs: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(xs, n=4) if len(xs) > 1 else (xs[0],) * 3
    med = statistics.median(xs)
    return {
        "median": med,
        "q1": q1,
        "q3": q3,
        "min": min(xs),
        "max": max(xs),
        "iqr_pct": 100.0 * (q3 - q1) / med,
        "times_ms": xs,
    }


def run_case(
    name: str,
    label: str,
    n: int,
    m: int,
    dct_dim: int | None,
    args: argparse.Namespace,
    copy_arrays: int = 0,
) -> dict:
    pyro_cls, our_cls, optim_args, _ = OPTIMIZERS[name]
    pyro_params = make_params(n, m, 0, dct_dim)
    our_params = make_params(n, m, 0, dct_dim)
    pyro.clear_param_store()
    pyro_opt = pyro.optim.PyroOptim(pyro_cls, optim_args)
    our_opt = our_cls(our_params, **optim_args)

    def pyro_step():
        pyro_opt(pyro_params)

    def our_step():
        our_opt.step()

    fns = [pyro_step, our_step]
    if copy_arrays:
        # bandwidth reference, interleaved with the optimizers
        total_bytes = copy_arrays * n * m * pyro_params[0].element_size()
        fns.append(make_copy(total_bytes, pyro_params[0].dtype))
    steps = args.steps
    times = bench_interleaved(fns, steps, args.repeats, args.warmup)
    p, o = summarize(times[0]), summarize(times[1])
    result = {
        "optimizer": name,
        "shape": label,
        "n_params": n,
        "numel_per_param": m,
        "dct_dim": dct_dim,
        "steps_per_repeat": steps,
        "repeats": args.repeats,
        "pyro_ms": p,
        "ours_ms": o,
        "speedup": p["median"] / o["median"],
    }
    target = TARGETS.get((n, m)) if dct_dim is None else None
    if target is not None:
        result["target_speedup"] = target
        result["target_met"] = result["speedup"] >= target
    if copy_arrays:
        c = summarize(times[2])

        def gbs(ms: float) -> float:
            return total_bytes / (ms * 1e-3) / 1e9

        result["bandwidth"] = {
            "bytes_per_step": total_bytes,
            "arrays": copy_arrays,
            "copy_ms": c,
            "copy_GBps": gbs(c["median"]),
            "ours_GBps": gbs(o["median"]),
            "pyro_GBps": gbs(p["median"]),
            "ours_fraction_of_copy": c["median"] / o["median"],
            "pyro_fraction_of_copy": c["median"] / p["median"],
            "target_fraction": TARGET_BANDWIDTH_FRACTION,
            "target_met": c["median"] / o["median"] >= TARGET_BANDWIDTH_FRACTION,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 2 min)")
    parser.add_argument("--out", default="bench/optim.json", help="JSON output path")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this thread's CPU time (steadier on a busy machine)",
    )
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    args.warmup = 3 if args.quick else 10
    args.steps = 10 if args.quick else 30
    torch.set_num_threads(args.threads)

    results = []
    cases = [(name, n, m, None) for name in OPTIMIZERS for (n, m) in SHAPES]
    cases.append(("DCTAdam", 1, 10000, -1))
    for name, n, m, dct_dim in cases:
        label = f"{n}x{m}" + (f" dct{dct_dim}" if dct_dim is not None else "")
        arrays = OPTIMIZERS[name][3] if (n, m) == SHAPES[-1] and dct_dim is None else 0
        res = run_case(name, label, n, m, dct_dim, args, copy_arrays=arrays)
        results.append(res)
        print(
            f"  {name:15s} {label:14s} pyro {res['pyro_ms']['median']:8.3f} ms"
            f"  ours {res['ours_ms']['median']:8.3f} ms  x{res['speedup']:.1f}",
            file=sys.stderr,
        )

    # DCT batching: several marked params sharing a time length
    batching = []
    for n, T in [(20, 200), (4, 10000)]:
        pyro_params = make_params(n, T, 0, -1)
        pyro_opt = pyro.optim.PyroOptim(PyroDCTAdam, {})
        fns = [lambda opt=pyro_opt, ps=pyro_params: opt(ps)]
        for batch in (True, False):
            fns.append(DCTAdam(make_params(n, T, 0, -1), batch_dct=batch).step)
        times = bench_interleaved(fns, args.steps, args.repeats, args.warmup)
        batching.append(
            {
                "shape": f"{n}x{T} dct-1",
                "pyro_ms": summarize(times[0]),
                "batched_ms": summarize(times[1]),
                "unbatched_ms": summarize(times[2]),
            }
        )

    bandwidth = [
        {"optimizer": r["optimizer"], "shape": r["shape"], **r["bandwidth"]}
        for r in results
        if "bandwidth" in r
    ]

    report = {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "quick": args.quick,
        "load_average": os.getloadavg(),
        "results": results,
        "dct_batching": batching,
        "bandwidth": bandwidth,
    }
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print_tables(report)
    print(f"\nwrote {args.out}")
    return 0


def _target(r: dict) -> str:
    if "target_speedup" not in r:
        return "-"
    return f">={r['target_speedup']:g}x " + ("met" if r["target_met"] else "NOT met")


def _fmt_ms(s: dict) -> str:
    return f"{s['median']:.3f}"


def print_tables(report: dict) -> None:
    rows = [
        [
            r["optimizer"],
            r["shape"],
            _fmt_ms(r["pyro_ms"]),
            _fmt_ms(r["ours_ms"]),
            f"{r['speedup']:.1f}x",
            _target(r),
            f"{r['pyro_ms']['iqr_pct']:.0f}% / {r['ours_ms']['iqr_pct']:.0f}%",
        ]
        for r in report["results"]
    ]
    head = [
        "optimizer",
        "shape",
        "pyro ms/step",
        "ours ms/step",
        "speedup",
        "target",
        "IQR pyro/ours",
    ]
    title = (
        f"optimizer step ({report['clock']} clock, median of {report['results'][0]['repeats']} "
        "interleaved repeats), "
        f"{report['threads']} thread(s), torch {report['torch']}, pyro {report['pyro']}, "
        f"{report['cpu_capability']}, load avg {report['load_average'][0]:.1f}"
    )
    _table(title, head, rows)
    rows = [
        [
            r["shape"],
            _fmt_ms(r["pyro_ms"]),
            _fmt_ms(r["batched_ms"]),
            _fmt_ms(r["unbatched_ms"]),
            f"{r['unbatched_ms']['median'] / r['batched_ms']['median']:.2f}x",
        ]
        for r in report["dct_batching"]
    ]
    head = ["DCTAdam shape", "pyro ms", "ours batched ms", "ours unbatched ms", "batching gain"]
    _table("DCT batching (batch_dct=True vs False)", head, rows)
    rows = [
        [
            r["optimizer"],
            r["shape"],
            f"{r['bytes_per_step'] / 1e6:.0f} MB ({r['arrays']} arrays)",
            f"{r['copy_GBps']:.1f}",
            f"{r['ours_GBps']:.1f}",
            f"{r['ours_fraction_of_copy']:.0%}",
            f"{r['pyro_fraction_of_copy']:.0%}",
            f">={r['target_fraction']:.0%} " + ("met" if r["target_met"] else "NOT met"),
        ]
        for r in report["bandwidth"]
    ]
    head = [
        "optimizer",
        "shape",
        "bytes/step",
        "copy GB/s",
        "ours GB/s",
        "ours/copy",
        "pyro/copy",
        "target",
    ]
    _table("memory bandwidth on the largest shape", head, rows)


def _table(title: str, head: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for h in head:
        table.add_column(h, justify="left" if h in ("optimizer", "shape") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=120).print(table)


if __name__ == "__main__":
    sys.exit(main())
