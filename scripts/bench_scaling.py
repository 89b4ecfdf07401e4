#!/usr/bin/env python
"""Weak scaling at np=2: pyrotrain on torch.distributed and on Horovod, Pyro's own Horovod recipe,
and the ceiling of the machine, side by side.

Weak-scaling efficiency at k ranks is the total throughput (samples/s) at k ranks over k times the
throughput of one process, with the same minibatch per rank, so 1.0 means the k-th rank adds a
whole rank's worth of work and communication costs nothing. Every configuration trains the same
Bayesian linear regression (pyrotrain's ``model=regression``, AutoNormal guide, Trace_ELBO, Adam,
float32) on ``data=synthetic_regression``:

- ``single``: one ``pyrotrain`` process (``distributed=none``), no launcher: the np=1 baseline.
- ``ceiling``: two such processes started side by side, with no communication at all; the sum of
  their throughputs is what any engine could reach on this machine at np=2 (the cores, caches and
  memory bandwidth they share are the limit, not the collectives).
- ``torch/fused``, ``torch/per_tensor``: ``torchrun --nproc-per-node 2 pyrotrain ...``, each
  ``distributed.allreduce``, over Gloo.
- ``horovod/fused`` (and ``grouped``, ``per_tensor`` with ``--horovod-strategies``):
  ``horovodrun -np 2 pyrotrain ...``.
- ``pyro/HorovodOptimizer``: the loop of Pyro's Horovod example: ``SVI(model, guide,
  pyro.optim.HorovodOptimizer(pyro.optim.Adam(...)), Trace_ELBO())``, parameters broadcast from
  rank 0 once they exist, ``svi.step`` on this rank's shard (this script, ``--worker pyro``).

A run's throughput is the median over windows of 10 steps after the warm-up (rank 0's clock, read
from metrics.jsonl), which bursts of other load on a shared machine move less than a mean would;
the configurations are interleaved within each repeat, and the median of the repeats is reported,
with the range of the per-repeat ratios (each ratio taken within one repeat). Each rank gets one
torch thread (OMP_NUM_THREADS=1), so two ranks use two cores. Engines whose launcher is missing
(Horovod not built) are left out. ``--micro`` adds the cost of the gradient reduction alone (µs per
step at np=2) for each engine and strategy.

Usage::

    python scripts/bench_scaling.py [--quick] [--out bench/scaling.json] [--batches 10000,50000]
                                    [--repeats 3] [--engines torch,horovod]
                                    [--horovod-strategies fused] [--micro]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOROVOD_STRATEGIES = ("fused", "grouped", "per_tensor")
# label: the distributed.* overrides it stands for
TORCH_STRATEGIES = {
    "fused": {"allreduce": "fused"},
    "per_tensor": {"allreduce": "per_tensor"},
}
SEED = 0
WINDOW = 10  # steps per throughput sample; a run reports the median of its windows
LR = 0.01
NP = 2


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _launcher(engine: str, np_: int) -> list[str]:
    if engine == "torch":
        return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(np_)]
    if engine == "horovod":
        return [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}"]
    return []


def _check(r: subprocess.CompletedProcess | subprocess.Popen, out: str, cmd: list[str]) -> None:
    if r.returncode != 0:
        sys.stderr.write(out[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")


def _data_size(batch: int) -> int:
    """All rows train (eval_fraction=0), and every rank's shard is whole batches at np=1 and
    np=2, so no step gets a short remainder batch."""
    return batch * NP


def _pyrotrain_argv(batch: int, steps: int, warmup: int, run_dir: Path, extra: list[str]):
    log_every = WINDOW
    return [
        str(BIN / "pyrotrain"),
        "data=synthetic_regression",
        f"data.size={_data_size(batch)}",
        "optim=adam",
        f"optim.lr={LR}",
        f"trainer.batch_size={batch}",
        f"trainer.steps={warmup + (steps - warmup) // log_every * log_every}",
        f"trainer.log_every={log_every}",
        "trainer.progress=none",
        "data.eval_fraction=0",
        f"seed={SEED}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _throughput(run_dir: Path, warmup: int, world_size: int) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == world_size and summary["params_in_sync"], summary
    return statistics.median(r["samples_per_s"] for r in rows if r["step"] > warmup)


def run_pyrotrain(engine: str, batch: int, steps: int, warmup: int, strategy: str,
                  timeout: float) -> float:  # fmt: skip
    """samples/s of ``pyrotrain`` at np=2 under ``engine``'s launcher (``none``: one process)."""
    np_ = 1 if engine == "none" else NP
    extra = [f"distributed={engine}"]
    if engine != "none":
        settings = TORCH_STRATEGIES[strategy] if engine == "torch" else {"allreduce": strategy}
        extra += [f"distributed.{k}={v}" for k, v in settings.items()]
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [*_launcher(engine, np_), *_pyrotrain_argv(batch, steps, warmup, run_dir, extra)]
        r = subprocess.run(
            cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=tmp
        )
        _check(r, r.stdout + r.stderr, cmd)
        return _throughput(run_dir, warmup, np_)


def run_ceiling(batch: int, steps: int, warmup: int, timeout: float) -> tuple[float, list[float]]:
    """Two one-process runs started side by side, no communication: their summed samples/s."""
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        procs = []
        for i in range(NP):
            run_dir = Path(tmp) / f"run{i}"
            cmd = _pyrotrain_argv(batch, steps, warmup, run_dir, ["distributed=none"])
            proc = subprocess.Popen(
                cmd, env=_env(), cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            procs.append((run_dir, cmd, proc))
        each = []
        for run_dir, cmd, proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            _check(proc, out, cmd)
            each.append(_throughput(run_dir, warmup, 1))
    return sum(each), each


def run_pyro(np_: int, batch: int, steps: int, warmup: int, timeout: float) -> float:
    cmd = [
        *_launcher("horovod", np_),
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "pyro",
        f"--batch={batch}",
        f"--steps={steps}",
        f"--warmup={warmup}",
        f"--size={_data_size(batch)}",
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    _check(r, r.stdout + r.stderr, cmd)
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
    """µs per gradient reduction (with the loss) for each strategy of ``--engine``: ``--repeats``
    rounds of ``--steps`` reductions each, the strategies interleaved round by round; median of
    rounds. Also the forward+backward time of one 10,000-row step of the benchmark's model (the
    most that overlapping the reduction with the backward pass could hide)."""
    import pyro
    import torch

    from pyrotrain.distributed.base import engine

    module = engine(args.engine)
    strategies = HOROVOD_STRATEGIES if args.engine == "horovod" else TORCH_STRATEGIES
    shapes = {
        "regression (6 tensors, 24 floats)": [(10,), (10,), (), (), (), ()],
        "network (40 tensors, 0.4M floats)": [(100, 100)] * 40,
    }
    iters = args.steps
    out: dict[str, dict[str, float]] = {}
    backends: dict[str, Any] = {}
    for label, shape_list in shapes.items():
        pyro.clear_param_store()
        params = {
            pyro.param(f"p{i}", torch.zeros(s)).unconstrained() for i, s in enumerate(shape_list)
        }
        backends = {
            s: module.create(module.Settings(**(TORCH_STRATEGIES[s] if args.engine == "torch"
                                                else {"allreduce": s})))
            for s in strategies
        }  # fmt: skip
        # fused, but the loss and flags in a second (float64) allreduce of their own
        backends["fused+meta"] = module.create(module.Settings(allreduce="fused"))
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
    out["forward+backward, 10000 rows"] = {"regression": _step_us(10_000)}
    if backends["fused"].is_main:
        print("MICRO " + json.dumps(out), flush=True)


def _step_us(rows: int) -> float:
    """µs of one ELBO forward+backward pass of the benchmark's model on ``rows`` rows."""
    import pyro
    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    from pyrotrain.data import make_regression
    from pyrotrain.models.regression import Regression

    data = make_regression(size=rows, eval_fraction=0.0, seed=SEED).to(
        torch.device("cpu"), torch.float32
    )
    x, y = data.train["x"], data.train["y"]
    pyro.clear_param_store()
    model = Regression(data)
    guide = AutoNormal(model)
    elbo = Trace_ELBO()
    n = x.shape[0]
    index = torch.arange(n)
    times = []
    for _ in range(60):
        start = time.perf_counter()
        elbo.loss_and_grads(model, guide, x=x, y=y, index=index, size=n)
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times[10:])


def _spread(values: list[float]) -> list[float]:
    return [min(values), max(values)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 batch size, 1 repeat (~2 min)")
    ap.add_argument("--out", default=str(REPO / "bench" / "scaling.json"))
    ap.add_argument("--batches", default=None, help="rows per rank per step, comma-separated")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--engines", default="torch,horovod", help="engines to launch, in order")
    ap.add_argument(
        "--horovod-strategies", default="fused", help="Horovod allreduce strategies to measure"
    )
    ap.add_argument("--micro", action="store_true", help="also time the reduction alone")
    ap.add_argument("--worker", choices=["pyro", "micro"], help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "pyro":
        return pyro_worker(args)
    if args.worker == "micro":
        return micro_worker(args)

    engines = [e for e in args.engines.split(",") if e]
    have_horovod = importlib.util.find_spec("horovod") is not None and (BIN / "horovodrun").exists()
    if "horovod" in engines and not have_horovod:
        print("Horovod is not installed: measuring torch.distributed only", flush=True)
        engines.remove("horovod")
    default_batches = "10000" if args.quick else "10000,50000"
    batches = [int(b) for b in (args.batches or default_batches).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    configs: list[tuple[str, str]] = [("single", "pyrotrain"), ("ceiling", "2 processes")]
    for e in engines:
        strategies = TORCH_STRATEGIES if e == "torch" else args.horovod_strategies.split(",")
        configs += [(e, s) for s in strategies]
    if "horovod" in engines:
        configs.append(("pyro", "HorovodOptimizer"))
    timeout = 300.0
    results: list[dict] = []
    t0 = time.perf_counter()
    for batch in batches:
        steps = args.steps or (110 if args.quick else 250)
        warmup = 20
        for rep in range(repeats):
            for engine_name, strategy in configs:
                extra: dict[str, Any] = {}
                if engine_name == "single":
                    sps = run_pyrotrain("none", batch, steps, warmup, "fused", timeout)
                elif engine_name == "ceiling":
                    sps, each = run_ceiling(batch, steps, warmup, timeout)
                    extra["each"] = each
                elif engine_name == "pyro":
                    sps = run_pyro(NP, batch, steps, warmup, timeout)
                    extra["np1_samples_per_s"] = run_pyro(1, batch, steps, warmup, timeout)
                else:
                    sps = run_pyrotrain(engine_name, batch, steps, warmup, strategy, timeout)
                results.append(dict(engine=engine_name, strategy=strategy, batch=batch,
                                    repeat=rep, samples_per_s=sps,
                                    load_avg=os.getloadavg()[0], **extra))  # fmt: skip
                print(f"  batch {batch} repeat {rep} {engine_name}/{strategy}: "
                      f"{sps:,.0f} samples/s  (load {os.getloadavg()[0]:.2f})",
                      flush=True)  # fmt: skip

    def per_repeat(engine_name: str, strategy: str, batch: int) -> list[float]:
        return [r["samples_per_s"] for r in results if r["engine"] == engine_name
                and r["strategy"] == strategy and r["batch"] == batch]  # fmt: skip

    table = []
    for batch in batches:
        single = per_repeat("single", "pyrotrain", batch)
        ceiling = per_repeat("ceiling", "2 processes", batch)
        pyro_np2 = per_repeat("pyro", "HorovodOptimizer", batch)
        for engine_name, strategy in configs:
            if engine_name == "single":
                continue
            vals = per_repeat(engine_name, strategy, batch)
            row: dict[str, Any] = {
                "batch_per_rank": batch,
                "engine": engine_name,
                "strategy": strategy,
                "np1_samples_per_s": statistics.median(single),
                "np2_samples_per_s": statistics.median(vals),
            }
            base = single
            if engine_name == "pyro":  # its own one-rank loop under horovodrun
                base = [r["np1_samples_per_s"] for r in results
                        if r["engine"] == "pyro" and r["batch"] == batch]  # fmt: skip
                row["np1_samples_per_s"] = statistics.median(base)
            effs = [v / (NP * b) for v, b in zip(vals, base, strict=True)]
            row["np2_efficiency"] = statistics.median(effs)
            row["np2_efficiency_spread"] = _spread(effs)
            shares = [v / c for v, c in zip(vals, ceiling, strict=True)]
            row["share_of_ceiling"] = statistics.median(shares)
            row["share_of_ceiling_spread"] = _spread(shares)
            if engine_name == "ceiling":
                # ranks in lockstep go at the slower process's pace: with communication free, a
                # synchronous job could reach at most this share of the ceiling
                bounds = [NP * min(r["each"]) / sum(r["each"]) for r in results
                          if r["engine"] == "ceiling" and r["batch"] == batch]  # fmt: skip
                row["lockstep_bound"] = statistics.median(bounds)
                row["lockstep_bound_spread"] = _spread(bounds)
            if pyro_np2:
                vs = [v / p for v, p in zip(vals, pyro_np2, strict=True)]
                row["vs_horovod_optimizer"] = statistics.median(vs)
                row["vs_horovod_optimizer_spread"] = _spread(vs)
            table.append(row)

    micro = {}
    if args.micro:
        for e in engines:
            # torchrun runs a Python script itself; horovodrun runs a command
            here = [str(Path(__file__).resolve())]
            program = [sys.executable, *here] if e == "horovod" else here
            cmd = [*_launcher(e, NP), *program, "--worker",
                   "micro", "--engine", e, "--steps", "100",
                   "--repeats", "5" if args.quick else "15"]  # fmt: skip
            r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
            _check(r, r.stdout + r.stderr, cmd)
            line = next(ln for ln in r.stdout.splitlines() if "MICRO" in ln)
            micro[e] = json.loads(line.split("MICRO ", 1)[1])

    print(f"\nWeak scaling at np={NP} (median of {repeats} interleaved repeats, 1 torch thread "
          "per rank; ratios per repeat, median [range])")  # fmt: skip
    print(f"{'batch/rank':>10}  {'configuration':<28}{'np=1 samples/s':>16}{'np=2 samples/s':>16}"
          f"{'efficiency':>22}{'of ceiling':>22}{'x HorovodOpt.':>22}")  # fmt: skip

    def fmt(row: dict, key: str) -> str:
        if key not in row:
            return f"{'':>22}"
        lo, hi = row[f"{key}_spread"]
        return f"{row[key]:>8.2f} [{lo:.2f}-{hi:.2f}]".rjust(22)

    for row in table:
        label = f"{row['engine']}/{row['strategy']}"
        print(f"{row['batch_per_rank']:>10}  {label:<28}{row['np1_samples_per_s']:>16,.0f}"
              f"{row['np2_samples_per_s']:>16,.0f}{fmt(row, 'np2_efficiency')}"
              f"{fmt(row, 'share_of_ceiling')}{fmt(row, 'vs_horovod_optimizer')}")  # fmt: skip
    for row in table:
        if "lockstep_bound" in row:
            lo, hi = row["lockstep_bound_spread"]
            print(f"{row['batch_per_rank']:>10}  the ceiling's two processes ran at different "
                  f"speeds: ranks in lockstep, at the slower one's pace, could reach at most "
                  f"{row['lockstep_bound']:.2f} [{lo:.2f}-{hi:.2f}] of it")  # fmt: skip
    for e, m in micro.items():
        print(f"\nGradient reduction alone, {e}, np=2 (µs per step, loss included, median)")
        for label, vals in m.items():
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
                    "np": NP,
                    "batches": batches,
                    "repeats": repeats,
                    "steps": args.steps or (110 if args.quick else 250),
                    "threads_per_rank": 1,
                    "quick": args.quick,
                    "engines": engines,
                },  # fmt: skip
                "table": table,
                "micro_us_per_step": micro or None,
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
