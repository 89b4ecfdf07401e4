#!/usr/bin/env python
"""Benchmark pyrotrain's multi-tensor optimizers against Pyro's per-parameter ones.

Pyro is timed as SVI uses it: ``pyro.optim.PyroOptim(cls, args)`` holding one Pyro
optimizer per parameter and called with the parameter list. Ours is one optimizer
over all parameters, ``opt.step()``. Both run on one CPU thread, side by side with
interleaved repeats after a warm-up, on separate copies of the same parameters and
gradients.

On the largest shape the achieved memory bandwidth of the update is reported as a
fraction of a plain ``Tensor.copy_`` moving the same number of bytes. The bytes
counted are the logical minimum the update has to move: reading param, grad and
state and writing param and state (ClippedAdam/DCTAdam: read p, g, m, v and write
p, m, v = 7 arrays; AdagradRMSProp: read p, g, sum and write p, sum = 5 arrays).

Usage::

    python scripts/bench_optim.py [--quick] [--out bench/optim.json]
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
from pyrotrain.optim.clipped_adam import ClippedAdam
from pyrotrain.optim.dct_adam import DCTAdam

OPTIMIZERS = {
    "AdagradRMSProp": (PyroAdagradRMSProp, AdagradRMSProp, {}, 5),
    "ClippedAdam": (PyroClippedAdam, ClippedAdam, {}, 7),
    "DCTAdam": (PyroDCTAdam, DCTAdam, {}, 7),
}
SHAPES = [(1000, 10), (200, 100), (10, 100000)]


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


def time_steps(fn: Callable[[], None], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps * 1e3


def bench_pair(
    fn_a: Callable[[], None], fn_b: Callable[[], None], steps: int, repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        fn_a()
        fn_b()
    a, b = [], []
    for r in range(repeats):
        # alternate which one goes first so that drift affects both equally
        if r % 2 == 0:
            a.append(time_steps(fn_a, steps))
            b.append(time_steps(fn_b, steps))
        else:
            b.append(time_steps(fn_b, steps))
            a.append(time_steps(fn_a, steps))
    return a, b


def copy_ms(total_bytes: int, dtype: torch.dtype, steps: int, repeats: int) -> list[float]:
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = total_bytes // 2 // itemsize  # read n elements and write n elements
    src = torch.randn(n, dtype=dtype)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    return [time_steps(lambda: dst.copy_(src), steps) for _ in range(repeats)]


def summarize(xs: list[float]) -> dict:
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "spread_pct": 100.0 * (max(xs) - min(xs)) / statistics.median(xs),
    }


def run_case(
    name: str,
    label: str,
    n: int,
    m: int,
    dct_dim: int | None,
    args: argparse.Namespace,
    ours_kwargs: dict | None = None,
) -> dict:
    pyro_cls, our_cls, optim_args, _ = OPTIMIZERS[name]
    pyro_params = make_params(n, m, 0, dct_dim)
    our_params = make_params(n, m, 0, dct_dim)
    pyro.clear_param_store()
    pyro_opt = pyro.optim.PyroOptim(pyro_cls, optim_args)
    our_opt = our_cls(our_params, **optim_args, **(ours_kwargs or {}))

    def pyro_step():
        pyro_opt(pyro_params)

    def our_step():
        our_opt.step()

    steps = args.steps
    pyro_ms, our_ms = bench_pair(pyro_step, our_step, steps, args.repeats, args.warmup)
    p, o = summarize(pyro_ms), summarize(our_ms)
    return {
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 2 min)")
    parser.add_argument("--out", default="bench/optim.json", help="JSON output path")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    args.warmup = 3 if args.quick else 10
    args.steps = 10 if args.quick else 30
    torch.set_num_threads(args.threads)

    results = []
    cases = [(name, n, m, None) for name in OPTIMIZERS for (n, m) in SHAPES]
    cases.append(("DCTAdam", 1, 10000, -1))
    for name, n, m, dct_dim in cases:
        label = f"{n}x{m}" + (f" dct{dct_dim}" if dct_dim is not None else "")
        res = run_case(name, label, n, m, dct_dim, args)
        results.append(res)
        print(
            f"  {name:15s} {label:14s} pyro {res['pyro_ms']['median']:8.3f} ms"
            f"  ours {res['ours_ms']['median']:8.3f} ms  x{res['speedup']:.1f}",
            file=sys.stderr,
        )

    # DCT batching: many marked params sharing a time length
    batching = []
    for n, T in [(20, 200), (4, 10000)]:
        row = {"shape": f"{n}x{T} dct-1"}
        for batch in (True, False):
            res = run_case("DCTAdam", row["shape"], n, T, -1, args, {"batch_dct": batch})
            row["pyro_ms"] = res["pyro_ms"]
            row["batched_ms" if batch else "unbatched_ms"] = res["ours_ms"]
        batching.append(row)

    # bandwidth on the largest shape
    bandwidth = []
    n, m = SHAPES[-1]
    for res in results:
        if res["shape"] != f"{n}x{m}":
            continue
        arrays = OPTIMIZERS[res["optimizer"]][3]
        total_bytes = arrays * n * m * 4
        cms = summarize(copy_ms(total_bytes, torch.float32, args.steps, args.repeats))
        gbs = lambda ms: total_bytes / (ms * 1e-3) / 1e9  # noqa: E731
        bandwidth.append(
            {
                "optimizer": res["optimizer"],
                "shape": res["shape"],
                "bytes_per_step": total_bytes,
                "arrays": arrays,
                "copy_ms": cms,
                "copy_GBps": gbs(cms["median"]),
                "ours_GBps": gbs(res["ours_ms"]["median"]),
                "pyro_GBps": gbs(res["pyro_ms"]["median"]),
                "ours_fraction_of_copy": cms["median"] / res["ours_ms"]["median"],
                "pyro_fraction_of_copy": cms["median"] / res["pyro_ms"]["median"],
            }
        )

    report = {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
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
            f"{r['pyro_ms']['spread_pct']:.0f}% / {r['ours_ms']['spread_pct']:.0f}%",
        ]
        for r in report["results"]
    ]
    head = ["optimizer", "shape", "pyro ms/step", "ours ms/step", "speedup", "spread pyro/ours"]
    title = (
        f"optimizer step, {report['threads']} thread(s), torch {report['torch']}, "
        f"pyro {report['pyro']}, {report['cpu_capability']}"
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
        ]
        for r in report["bandwidth"]
    ]
    head = ["optimizer", "shape", "bytes/step", "copy GB/s", "ours GB/s", "ours/copy", "pyro/copy"]
    _table("memory bandwidth on the largest shape", head, rows)


def _table(title: str, head: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for h in head:
        table.add_column(h, justify="left" if h in ("optimizer", "shape") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=120).print(table)


if __name__ == "__main__":
    sys.exit(main())
