#!/usr/bin/env python
"""End-to-end SVI speed and memory: pyrotrain against the loop a Pyro user writes by hand.

For each built-in model both sides run the same model, guide, ELBO, data order and optimizer
settings (the model's default single-group stack). pyrotrain runs through its Python API
(``pyrotrain.build.build`` + ``pyrotrain.loop.Trainer.fit``); the reference is ``pyro.infer.SVI``
with the matching ``pyro.optim`` wrapper (one optimizer per parameter), as in Pyro's tutorials. Each
measurement runs in a fresh process (so peak memory is that run's own), one thread, repeats
interleaved pyrotrain/pyro; both sides import and warm up the same libraries before timing.

Usage::

    python scripts/bench_e2e.py [--quick] [--models regression,hierarchical] [--out bench/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# model -> overrides; every run uses a single-group stack so both sides have the same optimizer.
MODELS = {
    "regression": ["model=regression", "trainer.batch_size=100"],
    "timeseries": ["model=timeseries"],
    "sparse": ["model=sparse"],
    "neural": ["model=neural", "optim=adam", "guide=model"],
    "hierarchical": ["model=hierarchical"],
}
# what the hand-written side changes: Pyro's optimizers take dense gradients only
REFERENCE_OVERRIDES = {"sparse": ["model.sparse_grad=false"]}
# steps per measurement with --quick (1 to 2 s of training each on this machine)
QUICK_STEPS = {
    "regression": 200,
    "timeseries": 80,
    "sparse": 60,
    "neural": 100,
    "hierarchical": 10,
}
# issue #9's targets for pyrotrain steps/s over hand-written Pyro
TARGETS = {"hierarchical": 1.15}
DEFAULT_TARGET = 1.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(impl: str, overrides: list[str], steps: int) -> dict:
    """One measurement in this process: a short warm-up run, then ``steps`` timed steps.

    The warm-up run (a tenth of the steps, with the same implementation) pays the process's
    one-time costs: torch's first-use dispatch and imports, Pyro's and pyrotrain's caches. The
    timed run then starts afresh (new param store, new guide, new optimizers) as a user's run does.
    """
    import pyro
    import torch

    torch.set_num_threads(1)
    import pyrotrain
    from pyrotrain.build import build
    from pyrotrain.loop import Trainer

    def one_run(n: int) -> tuple[float, float]:
        # eval_num_samples: pyrotrain evaluates after the (timed) loop; keep that short
        settings = [f"trainer.steps={n}", "trainer.progress=none", "trainer.eval_num_samples=1"]
        cfg = pyrotrain.compose([*overrides, *settings])
        pyro.clear_param_store()
        run = build(cfg)
        if impl == "pyrotrain":
            summary = Trainer(run).fit()
            return summary["wall_time_s"], summary["final_loss"]
        return _handwritten(run, n)

    one_run(max(2, steps // 10))
    baseline = _rss_mb()
    loop, loss = one_run(steps)
    return {
        "impl": impl,
        "steps": steps,
        "steps_per_s": steps / loop,
        "loop_s": loop,
        "final_loss": loss,
        "peak_rss_mb": _rss_mb(),
        "baseline_rss_mb": baseline,
    }


def _handwritten(run, steps: int) -> tuple[float, float]:
    """The SVI loop a user writes with pyro.optim, for the same model, guide, ELBO and data."""
    import pyro
    import pyro.optim
    import torch
    from pyro.infer import SVI

    from pyrotrain.data import BatchOrder
    from pyrotrain.registry import OPTIMIZERS

    (group,) = run.stack.groups  # single-group stacks only
    spec = group.spec
    name = spec.optimizer
    # the class pyro.optim wraps: Pyro's own for Pyro's optimizers, torch's for Adam and AdamW
    names = (f"pyro_{name}", f"torch_{name}", name)
    cls = next(OPTIMIZERS.get(n) for n in names if n in OPTIMIZERS)
    optim = pyro.optim.PyroOptim(cls, dict(spec.optimizer_args))
    svi = SVI(run.model, run.guide, optim, run.elbo)
    data = run.data
    order = iter(BatchOrder(data.size, run.config.trainer.batch_size, run.config.seed))
    accepted = run.model_kwargs
    torch.set_default_dtype(run.dtype)
    pyro.set_rng_seed(run.config.seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, idx = next(order)
        batch = {k: v[idx] for k, v in data.train.items()}
        batch.update(index=idx, size=data.size)
        if accepted is not None:
            batch = {k: v for k, v in batch.items() if k in accepted}
        loss = svi.step(**batch)
    return time.perf_counter() - start, loss


def measure(impl: str, overrides: list[str], steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--steps", str(steps), "--", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {overrides} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_to_first_step(repeats: int) -> dict:
    """Seconds from starting ``pyrotrain`` (default job, plain progress) until it prints its first
    step, against a hand-written script doing the same model, guide and optimizer until it prints
    its first step's loss. Both processes start cold; what each does after that is not timed."""
    script = (
        "import pyro, torch\n"
        "from pyro.infer import SVI, Trace_ELBO\nfrom pyro.infer.autoguide import AutoNormal\n"
        "from pyrotrain.data import load_diabetes\n"
        "from pyrotrain.models.regression import Regression\n"
        "data = load_diabetes()\nmodel = Regression(data)\n"
        "svi = SVI(model, AutoNormal(model), pyro.optim.Adam({'lr': 0.01}), Trace_ELBO())\n"
        "x, y = data.train['x'].float(), data.train['y'].float()\n"
        "loss = svi.step(x=x[:100], y=y[:100], index=torch.arange(100), size=len(x))\n"
        "print(f'step 1 loss {loss}', flush=True)\n"
    )
    exe = Path(sys.executable).with_name("pyrotrain")
    cli_cmd = [str(exe), "trainer.steps=1", "trainer.progress=plain", "trainer.log_every=1"]
    runs = Path(tempfile.mkdtemp(prefix="pyrotrain-bench-ttfs-"))
    cli, hand = [], []
    for i in range(repeats):
        # a fresh run directory each time: pyrotrain refuses to start a run in another's
        fresh = [*cli_cmd, f"hydra.run.dir={runs / str(i)}"]
        for bucket, cmd in ((cli, fresh), (hand, [sys.executable, "-c", script])):
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd="/tmp")
            for line in proc.stdout:
                if line.startswith("step 1"):
                    bucket.append(time.perf_counter() - t)
                    break
            proc.communicate()
            if proc.returncode != 0 or len(bucket) == 0:
                raise RuntimeError(f"{cmd[0]} failed or printed no first step")
    shutil.rmtree(runs, ignore_errors=True)
    ratios = [h / c for h, c in zip(hand, cli, strict=True)]
    return {
        "pyrotrain_s": statistics.median(cli),
        "pyro_s": statistics.median(hand),
        "ratio": statistics.median(hand) / statistics.median(cli),
        "spread": [min(ratios), max(ratios)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repeat")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "e2e.json")
    parser.add_argument("--worker", choices=["pyrotrain", "pyro"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.overrides, args.steps)))
        return
    repeats = args.repeats or (1 if args.quick else 5)  # each measurement: 2 fresh processes
    results = []
    for model in args.models.split(","):
        steps = args.steps or (QUICK_STEPS[model] if args.quick else 10 * QUICK_STEPS[model])
        runs = {"pyrotrain": [], "pyro": []}
        for _ in range(repeats):
            for impl in ("pyrotrain", "pyro"):
                extra = REFERENCE_OVERRIDES.get(model, []) if impl == "pyro" else []
                runs[impl].append(measure(impl, [*MODELS[model], *extra], steps))
        ours = [r["steps_per_s"] for r in runs["pyrotrain"]]
        ref = [r["steps_per_s"] for r in runs["pyro"]]
        ratios = [a / b for a, b in zip(ours, ref, strict=True)]
        rss_ours = [r["peak_rss_mb"] for r in runs["pyrotrain"]]
        rss_ref = [r["peak_rss_mb"] for r in runs["pyro"]]
        mem_ratios = [a / b for a, b in zip(rss_ours, rss_ref, strict=True)]
        mem = statistics.median(rss_ours) / statistics.median(rss_ref)
        row = {
            "benchmark": f"e2e/{model}",
            "unit": "steps/s",
            "pyrotrain": statistics.median(ours),
            "reference": statistics.median(ref),
            "ratio": statistics.median(ratios),
            "spread": [min(ratios), max(ratios)],
            "peak_rss_ratio": mem,
            "peak_rss_spread": [min(mem_ratios), max(mem_ratios)],
            "pyrotrain_peak_rss_mb": statistics.median(rss_ours),
            "reference_peak_rss_mb": statistics.median(rss_ref),
            "target": TARGETS.get(model, DEFAULT_TARGET),
            "steps": steps,
            "repeats": repeats,
        }
        row["meets_target"] = row["ratio"] >= row["target"] and mem <= 1.1
        results.append(row)
        print(
            f"{model:13s} pyrotrain {row['pyrotrain']:8.1f} steps/s  pyro {row['reference']:8.1f}"
            f"  ratio {row['ratio']:.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
            f"  peak RSS ratio {mem:.3f}  target {row['target']}",
            flush=True,
        )
    ttfs = time_to_first_step(2 if args.quick else 5)
    print(
        f"time to first step: pyrotrain CLI {ttfs['pyrotrain_s']:.2f}s, "
        f"hand-written script {ttfs['pyro_s']:.2f}s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                },
                "results": results,
                "time_to_first_step": ttfs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
