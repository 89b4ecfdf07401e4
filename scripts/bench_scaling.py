#!/usr/bin/env python
"""Weak scaling under horovodrun: pyrotrain against a hand-written Pyro SVI loop.

Weak-scaling efficiency at k ranks is the total throughput (samples/s) at ``-np k`` over k times
the throughput at ``-np 1``, with the same minibatch per rank, so 1.0 means the k-th rank adds a
whole rank's worth of work and communication costs nothing. Two implementations train the same
Bayesian linear regression (pyrotrain's ``model=regression``, AutoNormal guide, Trace_ELBO, Adam,
float32) on ``data=synthetic_regression``:

- ``pyrotrain``: ``horovodrun -np k pyrotrain ...``, once per gradient allreduce strategy
  (``distributed.allreduce``: ``fused``, ``grouped``, ``per_tensor``); its throughput is read from
  metrics.jsonl after the warm-up steps.
- ``pyro``: the loop of Pyro's Horovod example: ``SVI(model, guide,
  pyro.optim.HorovodOptimizer(pyro.optim.Adam(...)), Trace_ELBO())``, parameters broadcast from
  rank 0 once they exist, ``svi.step`` on this rank's shard (this script, ``--worker pyro``).

Every configuration is its own horovodrun job. A job's throughput is the median over windows of
10 steps after the warm-up (rank 0's clock), which bursts of other load on a shared machine move
less than a mean would; the configurations are interleaved and repeated and the median of the
repeats is reported. Each rank gets one torch thread (OMP_NUM_THREADS=1), so k ranks use k cores.
``--micro`` adds the cost of the gradient reduction alone (µs per step at np=2) for each strategy
on a regression-sized and a network-sized parameter set.

Usage::

    python scripts/bench_scaling.py [--quick] [--out bench/scaling.json] [--nps 1,2]
                                    [--batches 10000,50000] [--repeats 3] [--micro]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STRATEGIES = ("fused", "grouped", "per_tensor")
SEED = 0
WINDOW = 10  # steps per throughput sample; a run reports the median of its windows
LR = 0.01


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _horovodrun(np_: int, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", *argv]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return r


def _data_size(batch: int, nps: list[int]) -> int:
    """All rows train (eval_fraction=0), and every rank's shard is whole batches at every np, so
    no step gets a short remainder batch."""
    return batch * math.lcm(*nps)


def run_pyrotrain(np_: int, batch: int, steps: int, warmup: int, size: int, strategy: str,
                  timeout: float) -> float:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        run_dir = Path(tmp) / "run"
        log_every = WINDOW
        _horovodrun(
            np_,
            [
                str(BIN / "pyrotrain"),
                "data=synthetic_regression",
                f"data.size={size}",
                "optim=adam",
                f"optim.lr={LR}",
                f"trainer.batch_size={batch}",
                f"trainer.steps={warmup + (steps - warmup) // log_every * log_every}",
                f"trainer.log_every={log_every}",
                "trainer.progress=none",
                "data.eval_fraction=0",
                f"distributed.allreduce={strategy}",
                f"seed={SEED}",
                f"hydra.run.dir={run_dir}",
            ],
            timeout,
        )
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == np_ and summary["params_in_sync"], summary
    return statistics.median(r["samples_per_s"] for r in rows if r["step"] > warmup)


def run_pyro(np_: int, batch: int, steps: int, warmup: int, size: int, timeout: float) -> float:
    r = _horovodrun(
        np_,
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "pyro",
            f"--batch={batch}",
            f"--steps={steps}",
            f"--warmup={warmup}",
            f"--size={size}",
        ],
        timeout,
    )
    for line in r.stdout.splitlines():
        if "SAMPLES_PER_S" in line:
            return float(line.rsplit(" ", 1)[1])
    raise SystemExit("the pyro worker printed no result:\n" + r.stdout[-2000:])


def pyro_worker(args: argparse.Namespace) -> None:
    """Pyro's own way: HorovodOptimizer (one hvd.DistributedOptimizer per parameter)."""
    import horovod.torch as hvd
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.optim import Adam, HorovodOptimizer

    from pyrotrain.data import BatchOrder, make_regression
    from pyrotrain.models.regression import Regression

    hvd.init()
    data = make_regression(size=args.size, eval_fraction=0.0, seed=SEED)
    data = data.to(torch.device("cpu"), torch.float32)
    x, y = data.train["x"], data.train["y"]
    n = x.shape[0]
    model = Regression(data)
    guide = AutoNormal(model)
    svi = SVI(model, guide, HorovodOptimizer(Adam({"lr": LR})), Trace_ELBO())
    pyro.set_rng_seed(SEED)
    batches = iter(BatchOrder(n, args.batch, SEED, hvd.rank(), hvd.size()))

    def step() -> int:
        _, index = next(batches)
        svi.step(x=x[index], y=y[index], index=index, size=n)
        return len(index)

    _, index = next(batches)
    with torch.no_grad():  # create the parameters, then start every rank from rank 0's
        guide(x=x[index], y=y[index], index=index, size=n)
    hvd.broadcast_parameters(dict(pyro.get_param_store().named_parameters()), root_rank=0)
    for _ in range(args.warmup):
        step()
    windows = []
    for _ in range((args.steps - args.warmup) // WINDOW):
        start = time.perf_counter()
        rows = sum(step() for _ in range(WINDOW))
        windows.append(rows * hvd.size() / (time.perf_counter() - start))
    if hvd.rank() == 0:
        print(f"SAMPLES_PER_S {statistics.median(windows)}", flush=True)


def micro_worker(args: argparse.Namespace) -> None:
    """µs per gradient reduction (with the loss) for each strategy: ``--repeats`` rounds of
    ``--steps`` reductions each, the strategies interleaved round by round; median of rounds."""
    import pyro
    import torch

    from pyrotrain.distributed.horovod import HorovodBackend
    from pyrotrain.distributed.horovod import Settings as HorovodSettings

    shapes = {
        "regression (6 tensors, 24 floats)": [(10,), (10,), (), (), (), ()],
        "network (40 tensors, 0.4M floats)": [(100, 100)] * 40,
    }
    iters = args.steps
    out: dict[str, dict[str, float]] = {}
    for label, shape_list in shapes.items():
        pyro.clear_param_store()
        params = {
            pyro.param(f"p{i}", torch.zeros(s)).unconstrained() for i, s in enumerate(shape_list)
        }
        backends = {s: HorovodBackend(HorovodSettings(allreduce=s)) for s in STRATEGIES}
        # fused, but the loss and flags in a second (float64) allreduce of their own
        backends["fused+meta"] = HorovodBackend(HorovodSettings(allreduce="fused"))
        backends["fused+meta"]._packed = False
        times: dict[str, list[float]] = {s: [] for s in backends}
        for _ in range(args.repeats):
            for s, backend in backends.items():
                for i in range(iters + 20):
                    if i == 20:
                        backend.barrier()
                        start = time.perf_counter()
                    for p in params:
                        p.grad = torch.ones_like(p)
                    backend.reduce(params, 1.0)
                times[s].append((time.perf_counter() - start) / iters * 1e6)
        out[label] = {s: statistics.median(v) for s, v in times.items()}
    if backends["fused"].is_main:
        print("MICRO " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 batch size, 1 repeat (~1 min)")
    ap.add_argument("--out", default=str(REPO / "bench" / "scaling.json"))
    ap.add_argument("--nps", default="1,2", help="rank counts, comma-separated")
    ap.add_argument("--batches", default=None, help="rows per rank per step, comma-separated")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--strategies", default=None, help="allreduce strategies (default: all)")
    ap.add_argument("--micro", action="store_true", help="also time the reduction alone")
    ap.add_argument("--worker", choices=["pyro", "micro"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "pyro":
        return pyro_worker(args)
    if args.worker == "micro":
        return micro_worker(args)

    nps = [int(k) for k in args.nps.split(",")]
    default_batches = "10000" if args.quick else "10000,50000"
    batches = [int(b) for b in (args.batches or default_batches).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    # --quick measures the default strategy only (each horovodrun start costs ~8 s)
    strategies = (args.strategies or ("fused" if args.quick else ",".join(STRATEGIES))).split(",")
    timeout = 300.0
    results: list[dict] = []
    t0 = time.perf_counter()
    for batch in batches:
        steps = args.steps or (110 if args.quick else 250)
        warmup = 20
        size = _data_size(batch, nps)
        for rep in range(repeats):
            for np_ in nps:
                # at one rank there is nothing to reduce, so every strategy is the same
                for strategy in strategies if np_ > 1 else strategies[:1]:
                    sps = run_pyrotrain(np_, batch, steps, warmup, size, strategy, timeout)
                    results.append(dict(impl="pyrotrain", strategy=strategy, np=np_,
                                        batch=batch, repeat=rep, samples_per_s=sps,
                                        load_avg=os.getloadavg()[0]))  # fmt: skip
                    print(f"  batch {batch} np {np_} pyrotrain/{strategy}: {sps:,.0f} samples/s",
                          flush=True)  # fmt: skip
                sps = run_pyro(np_, batch, steps, warmup, size, timeout)
                results.append(dict(impl="pyro", strategy="HorovodOptimizer", np=np_,
                                    batch=batch, repeat=rep, samples_per_s=sps,
                                    load_avg=os.getloadavg()[0]))  # fmt: skip
                print(f"  batch {batch} np {np_} pyro/HorovodOptimizer: {sps:,.0f} samples/s",
                      flush=True)  # fmt: skip

    table = []
    for batch in batches:
        for impl, names in (("pyrotrain", strategies), ("pyro", ["HorovodOptimizer"])):
            for name in names:
                row = {"batch_per_rank": batch, "impl": impl, "strategy": name}
                base = [r["samples_per_s"] for r in results
                        if r["impl"] == impl and r["np"] == 1 and r["batch"] == batch]  # fmt: skip
                for np_ in nps:
                    vals = [r["samples_per_s"] for r in results if r["impl"] == impl
                            and r["np"] == np_ and r["batch"] == batch
                            and (np_ == 1 or r["strategy"] == name)]  # fmt: skip
                    row[f"np{np_}_samples_per_s"] = statistics.median(vals)
                    if np_ > 1 and base:
                        row[f"np{np_}_efficiency"] = statistics.median(vals) / (
                            np_ * statistics.median(base)
                        )
                        # per repeat: np=k over k x np=1 of the same repeat
                        effs = [v / (np_ * b) for v, b in zip(vals, base, strict=False)]
                        row[f"np{np_}_efficiency_spread"] = [min(effs), max(effs)]
                table.append(row)

    micro = None
    if args.micro:
        r = _horovodrun(2, [sys.executable, str(Path(__file__).resolve()), "--worker", "micro",
                            "--steps", "100", "--repeats", "5" if args.quick else "15"],
                           timeout)  # fmt: skip
        micro = json.loads(next(ln for ln in r.stdout.splitlines() if "MICRO" in ln).split(
            "MICRO ", 1)[1])  # fmt: skip

    head = (
        f"{'batch/rank':>10}  {'implementation':<32}"
        + "".join(f"{'np=' + str(k) + ' samples/s':>18}" for k in nps)
        + "".join(f"{'eff np=' + str(k):>11}" for k in nps if k > 1)
    )
    print(f"\nWeak scaling (median of {repeats} interleaved repeats, 1 torch thread per rank)")
    print(head)
    for row in table:
        label = (
            f"pyrotrain allreduce={row['strategy']}"
            if row["impl"] == "pyrotrain"
            else "pyro.optim.HorovodOptimizer"
        )
        line = (
            f"{row['batch_per_rank']:>10}  {label:<32}"
            + "".join(f"{row[f'np{k}_samples_per_s']:>18,.0f}" for k in nps)
            + "".join(f"{row[f'np{k}_efficiency']:>11.2f}" for k in nps if k > 1)
        )
        print(line)
    if micro:
        print("\nGradient reduction alone, np=2 (µs per step, loss included, median)")
        for label, vals in micro.items():
            print(f"  {label:<36}" + "  ".join(f"{s} {v:,.0f}" for s, v in vals.items()))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "settings": {
                    "nps": nps,
                    "batches": batches,
                    "repeats": repeats,
                    "threads_per_rank": 1,
                    "quick": args.quick,
                },  # fmt: skip
                "table": table,
                "micro_us_per_step": micro,
                "runs": results,
                "wall_s": time.perf_counter() - t0,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
