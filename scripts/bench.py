#!/usr/bin/env python
"""``make bench``: run every benchmark, then write bench/results.json and bench/results.md.

Runs ``scripts/bench_*.py`` one after the other, never side by side (the machine has 2 cores).
Each benchmark measures pyrotrain and its reference in the same run and writes its own JSON to
``bench/``. This script gathers their rows into one table with these columns: benchmark,
pyrotrain, reference, ratio, spread over repeats, target. No ratio is taken against a stored
number. ``--quick`` passes ``--quick`` to each benchmark and should finish in under 5 minutes on
2 cores.

Usage::

    python scripts/bench.py [--quick] [--only e2e,optim,scaling,convergence,sparse] [--no-run]

``--only`` re-runs the named benchmarks and keeps the others' figures from the last run
(results.md names them and their date); ``--no-run`` only re-gathers the JSON files in bench/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SCRIPTS = {
    "optim": "bench_optim.py",
    "e2e": "bench_e2e.py",
    "convergence": "bench_convergence.py",
    "scaling": "bench_scaling.py",
    "sparse": "bench_sparse.py",
}


def _rows_optim(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        o, p = r["ours_ms"], r["pyro_ms"]
        rows.append(
            {
                "benchmark": f"optim/{r['optimizer']} {r['shape']}",
                "unit": "ms/step (lower is better)",
                "pyrotrain": o["median"],
                "reference": p["median"],
                "reference_name": "pyro.optim (one optimizer per parameter)",
                "ratio": r["speedup"],
                # ratio at the two ends of the interquartile ranges
                "spread": [p["q1"] / o["q3"], p["q3"] / o["q1"]],
                "target": r.get("target_speedup"),
            }
        )
    return rows


def _rows_e2e(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        rows.append(
            {
                "benchmark": r["benchmark"],
                "unit": "steps/s",
                "pyrotrain": r["pyrotrain"],
                "reference": r["reference"],
                "reference_name": "hand-written pyro.infer.SVI + pyro.optim",
                "ratio": r["ratio"],
                "spread": r["spread"],
                "target": r["target"],
            }
        )
        rows.append(
            {
                "benchmark": r["benchmark"].replace("e2e/", "e2e-memory/"),
                "unit": "peak RSS MB (lower is better)",
                "pyrotrain": r["pyrotrain_peak_rss_mb"],
                "reference": r["reference_peak_rss_mb"],
                "reference_name": "hand-written pyro.infer.SVI + pyro.optim",
                # reference over pyrotrain, like every other ratio here: above 1, pyrotrain wins
                "ratio": 1 / r["peak_rss_ratio"],
                "spread": [1 / x for x in reversed(r["peak_rss_spread"])],
                "target": 1 / 1.1,
            }
        )
    t = report["time_to_first_step"]
    rows.append(
        {
            "benchmark": "time to first step (CLI vs script)",
            "unit": "s (lower is better)",
            "pyrotrain": t["pyrotrain_s"],
            "reference": t["pyro_s"],
            "reference_name": "python script with pyro.infer.SVI",
            "ratio": t["ratio"],
            "spread": t["spread"],
            # the CLI within 10% of a plain script's time to its first step
            "target": 0.9,
        }
    )
    return rows


def _rows_sparse(report: dict) -> list[dict]:
    reference = "hand-written pyro.infer.SVI + pyro.optim.AdagradRMSProp (dense)"
    summary = report["summary"]
    rows = []
    for r in report["results"]:
        largest = r is report["results"][-1]
        rows.append(
            {
                "benchmark": f"sparse/{r['items']:,} items",
                "unit": "steps/s",
                "pyrotrain": r["pyrotrain_steps_per_s"],
                "reference": r["reference_steps_per_s"],
                "reference_name": reference,
                "ratio": r["ratio"],
                "spread": r["spread"],
                "target": summary["speed_target"] if largest else None,
            }
        )
    top = report["results"][-1]
    rows.append(
        {
            "benchmark": f"sparse-memory/{top['items']:,} items",
            "unit": "peak RSS MB (lower is better)",
            "pyrotrain": top["pyrotrain_peak_rss_mb"],
            "reference": top["reference_peak_rss_mb"],
            "reference_name": reference,
            "ratio": 1 / top["peak_rss_ratio"],
            "spread": [1 / x for x in reversed(top["peak_rss_spread"])],
            "target": 1 / summary["memory_target"],
        }
    )
    first = report["results"][0]
    rows.append(
        {
            "benchmark": f"sparse/steps/s at {top['items']:,} over {first['items']:,} items",
            "unit": "fraction kept (higher is better)",
            "pyrotrain": summary["own_ratio"],
            "reference": summary["reference_own_ratio"],
            "reference_name": reference,
            "ratio": summary["own_ratio"] / summary["reference_own_ratio"],
            "spread": summary["own_spread"],
            "target": None,
            "absolute_target": summary["own_target"],
            "note": "spread: pyrotrain's own fraction per repeat",
        }
    )
    return rows


# np=2 targets for pyrotrain on torch.distributed (allreduce=fused), by rows per rank
SCALING_EFFICIENCY_TARGET = {50000: 0.85}
SCALING_CEILING_TARGET = {10000: 0.8, 50000: 0.9}
SCALING_VS_HOROVOD_OPTIMIZER_TARGET = 1.3


def _rows_scaling(report: dict) -> list[dict]:
    rows = []
    by_batch: dict[int, dict] = {}
    for r in report["table"]:
        by_batch.setdefault(r["batch_per_rank"], {})[(r["engine"], r["strategy"])] = r
    for batch, entries in sorted(by_batch.items()):
        torch_ = entries.get(("torch", "fused"))
        hvd = entries.get(("horovod", "fused"))
        pyro_ = entries.get(("pyro", "HorovodOptimizer"))
        ceiling = entries.get(("ceiling", "2 processes"))
        if torch_ is not None:
            rows.append(
                {
                    "benchmark": f"scaling/np2 efficiency, torch, {batch} rows per rank",
                    "unit": "weak-scaling efficiency",
                    "pyrotrain": torch_["np2_efficiency"],
                    "reference": pyro_["np2_efficiency"] if pyro_ else None,
                    "reference_name": "pyro.optim.HorovodOptimizer SVI loop",
                    "ratio": torch_["np2_efficiency"] / pyro_["np2_efficiency"] if pyro_ else None,
                    "spread": torch_["np2_efficiency_spread"],
                    "target": None,
                    "absolute_target": SCALING_EFFICIENCY_TARGET.get(batch),
                }
            )
            rows.append(
                {
                    "benchmark": f"scaling/np2 share of the ceiling, torch, {batch} rows per rank",
                    "unit": "samples/s over 2 independent processes' sum",
                    "pyrotrain": torch_["np2_samples_per_s"],
                    "reference": ceiling["np2_samples_per_s"] if ceiling else None,
                    "reference_name": "two single processes side by side",
                    "ratio": torch_["share_of_ceiling"],
                    "spread": torch_["share_of_ceiling_spread"],
                    "target": SCALING_CEILING_TARGET.get(batch),
                }
            )
            if pyro_ is not None:
                rows.append(
                    {
                        "benchmark": f"scaling/np2 samples/s, torch vs HorovodOptimizer, {batch} "
                        "rows per rank",
                        "unit": "samples/s",
                        "pyrotrain": torch_["np2_samples_per_s"],
                        "reference": pyro_["np2_samples_per_s"],
                        "reference_name": "pyro.optim.HorovodOptimizer SVI loop",
                        "ratio": torch_["vs_horovod_optimizer"],
                        "spread": torch_["vs_horovod_optimizer_spread"],
                        "target": SCALING_VS_HOROVOD_OPTIMIZER_TARGET,
                    }
                )
        if hvd is not None and pyro_ is not None:
            rows.append(
                {
                    "benchmark": f"scaling/np2 efficiency, horovod, {batch} rows per rank",
                    "unit": "weak-scaling efficiency",
                    "pyrotrain": hvd["np2_efficiency"],
                    "reference": pyro_["np2_efficiency"],
                    "reference_name": "pyro.optim.HorovodOptimizer SVI loop",
                    "ratio": hvd["np2_efficiency"] / pyro_["np2_efficiency"],
                    "spread": hvd["np2_efficiency_spread"],
                    "target": None,
                }
            )
    return rows


def _rows_convergence(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        rec, ref = r["optimizers"][r["recommended"]], r["optimizers"][r["reference"]]
        per_seed = [
            b / a if a > 0 else math.inf
            for a, b in zip(rec["steps_to_target"], ref["steps_to_target"], strict=True)
        ]
        per_seed = [0.0 if math.isnan(x) else x for x in per_seed]  # inf / inf: neither reached
        rows.append(
            {
                "benchmark": f"{r['benchmark']}: {r['recommended']} vs {r['reference']}",
                "unit": "steps to target loss (lower is better)",
                "pyrotrain": rec["steps_to_target_median"],
                "reference": ref["steps_to_target_median"],
                "reference_name": f"{r['reference']} at its best lr",
                "ratio": r["ratio"],
                # per seed (both optimizers ran the same seeds): reference steps over ours
                "spread": [min(per_seed), max(per_seed)],
                "target": None,
                "note": f"target loss {r['target_loss']:.6g}; best lr {rec['best_lr']} vs "
                f"{ref['best_lr']}; {'wins' if r['recommended_wins'] else 'does not win'}",
            }
        )
    return rows


ROWS = {
    "optim": _rows_optim,
    "e2e": _rows_e2e,
    "scaling": _rows_scaling,
    "convergence": _rows_convergence,
    "sparse": _rows_sparse,
}


def _fmt(x: object) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            return str(x)
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def _meets(row: dict) -> str:
    if row.get("absolute_target") is not None:
        return "yes" if row["pyrotrain"] >= row["absolute_target"] else "no"
    if row.get("target") is None:
        return ""
    return "yes" if row["ratio"] >= row["target"] else "no"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# pyrotrain benchmarks",
        "",
        f"Run {results['date']} on {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
        f"torch {m['torch']}, pyro {m['pyro']}{' (--quick)' if results['quick'] else ''}; "
        f"load average before the run {m['load_average_before']}. "
        "Each ratio was measured in this run, pyrotrain and the reference side by side; "
        "ratio above 1 means pyrotrain is better (for times: reference / pyrotrain).",
    ]
    kept = {k: v["date"] for k, v in results["benchmarks"].items() if v.get("kept")}
    if kept:
        lines[-1] += (
            " Not re-run this time (`--only`), kept from an earlier run: "
            + ", ".join(f"{k} ({d})" for k, d in kept.items())
            + "."
        )
    lines += [
        "",
        "| benchmark | unit | pyrotrain | reference | ratio | spread | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        spread = r.get("spread")
        spread_s = f"{_fmt(spread[0])}–{_fmt(spread[1])}" if spread else ""
        target = r.get("absolute_target")
        target_s = f"≥ {target} (pyrotrain)" if target is not None else _fmt(r.get("target"))
        if r.get("target") is not None and target is None:
            target_s = f"ratio ≥ {_fmt(r['target'])}"
        lines.append(
            f"| {r['benchmark']} | {r['unit']} | {_fmt(r['pyrotrain'])} | {_fmt(r['reference'])} "
            f"| {_fmt(r['ratio'])} | {spread_s} | {target_s} | {_meets(r)} |"
        )
    notes = [r for r in results["rows"] if r.get("note")]
    if notes:
        lines += ["", *[f"- {r['benchmark']}: {r['note']}." for r in notes]]
    failed = [k for k, v in results["benchmarks"].items() if v["returncode"] != 0]
    if failed:
        lines += ["", f"Failed benchmarks (see their output): {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's --quick")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset")
    parser.add_argument(
        "--no-run", action="store_true", help="only gather the JSON files already in bench/"
    )
    args = parser.parse_args()
    import pyro
    import torch

    BENCH.mkdir(exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    ran: dict[str, dict] = {}
    rows: list[dict] = []
    previous = BENCH / "results.json"
    old = json.loads(previous.read_text()) if previous.exists() else None
    now = datetime.datetime.now().isoformat(timespec="seconds")
    only = args.only.split(",")
    unknown = [n for n in only if n not in SCRIPTS]
    if unknown:
        parser.error(f"--only: unknown benchmark {unknown[0]!r}; valid: {', '.join(SCRIPTS)}")
    for name in SCRIPTS:
        out = BENCH / f"{name}.json"
        if name not in only:
            # not run this time: keep the last run's figures, marked with that run's date
            kept = (old or {}).get("benchmarks", {}).get(name)
            if kept and kept["returncode"] == 0 and old["quick"] == args.quick and out.exists():
                ran[name] = {**kept, "date": kept.get("date", old["date"]), "kept": True}
                rows += ROWS[name](json.loads(out.read_text()))
            continue
        cmd = [sys.executable, str(ROOT / "scripts" / SCRIPTS[name]), "--out", str(out)]
        if args.quick:
            cmd.append("--quick")
        if args.no_run:
            ran[name] = {"returncode": 0, "seconds": 0.0, "file": str(out.relative_to(ROOT))}
        else:
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, check=False)
            ran[name] = {
                "returncode": proc.returncode,
                "seconds": time.perf_counter() - start,
                "date": now,
            }
        if ran[name]["returncode"] == 0:
            rows += ROWS[name](json.loads(out.read_text()))
    results = {
        "date": now,
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "load_average_before": load_before,
        },
        "benchmarks": ran,
        "rows": rows,
    }
    if args.no_run and old is not None:  # the figures are the earlier run's: so is its header
        results.update({k: old[k] for k in ("date", "quick", "machine", "benchmarks")})
    (BENCH / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (BENCH / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {BENCH / 'results.json'} and {BENCH / 'results.md'}")
    sys.exit(1 if any(v["returncode"] for v in ran.values()) else 0)


if __name__ == "__main__":
    main()
