#!/usr/bin/env python
"""Convergence: does each recommended optimizer reach a good ELBO in fewer steps on its model?

Two comparisons, as docs/optimizers.md recommends them: DCTAdam against Adam on the time-series
model (whose guide's locations and scales are time series), AdagradRMSProp against Adam on the
sparse ratings model (infrequent, very different gradients). For each optimizer, every learning rate
of a small grid is run with several seeds; the best lr is the one with the lowest median final
smoothed loss. The target is the worse of the two optimizers' medians at their best lr, so both
reach it; the figure is the median over seeds of the first step whose smoothed loss is at or below
it.

Usage::

    python scripts/bench_convergence.py [--quick] [--out bench/convergence.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (model overrides, {optimizer: (overrides, lr grid)}); the recommended optimizer comes first.
# Each grid starts with the config's default lr; --quick tries the first two.
CASES = {
    "timeseries": (
        ["model=timeseries"],
        {
            "dct_adam": (["optim=dct_adam"], [0.05, 0.01, 0.2]),
            "adam": (["optim=adam"], [0.05, 0.01, 0.2]),
        },
    ),
    "sparse": (
        ["model=sparse"],
        {
            "adagrad_rmsprop": (["optim=adagrad_rmsprop"], [0.3, 0.1, 1.0]),
            "adam": (["optim=adam"], [0.03, 0.01, 0.1]),
        },
    ),
}


def trajectory(overrides: list[str], steps: int, seed: int) -> list[float]:
    """The smoothed loss after every step of one pyrotrain run."""
    import pyrotrain

    with tempfile.TemporaryDirectory() as tmp:
        cfg = pyrotrain.compose(
            [
                *overrides,
                f"trainer.steps={steps}",
                f"seed={seed}",
                "trainer.log_every=1",
                "trainer.progress=none",
                "trainer.checkpoint_every=null",
            ]
        )
        pyrotrain.train(cfg, tmp)
        rows = (Path(tmp) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["smoothed_loss"] for r in rows]


def first_step_at_or_below(curve: list[float], target: float) -> float:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), math.inf)


def run_case(name: str, steps: int, seeds: list[int], grid_size: int) -> dict:
    base, optimizers = CASES[name]
    best: dict[str, dict] = {}
    for opt, (overrides, grid) in optimizers.items():
        grid = grid[:grid_size]
        per_lr = {}
        for lr in grid:
            curves = [trajectory([*base, *overrides, f"optim.lr={lr}"], steps, s) for s in seeds]
            final = statistics.median(c[-1] for c in curves)
            per_lr[lr] = {"curves": curves, "final_median": final}
            print(f"  {name:10s} {opt:16s} lr {lr:<6g} final smoothed loss {final:.6g}", flush=True)
        lr = min(per_lr, key=lambda k: per_lr[k]["final_median"])
        best[opt] = {
            "lr": lr,
            **per_lr[lr],
            "grid": {k: v["final_median"] for k, v in per_lr.items()},
        }
    target = max(b["final_median"] for b in best.values())
    row = {"benchmark": f"convergence/{name}", "target_loss": target, "optimizers": {}}
    for opt, b in best.items():
        steps_needed = [first_step_at_or_below(c, target) for c in b["curves"]]
        row["optimizers"][opt] = {
            "best_lr": b["lr"],
            "final_loss_median": b["final_median"],
            "steps_to_target_median": statistics.median(steps_needed),
            "steps_to_target": steps_needed,
            "lr_grid": b["grid"],
        }
    recommended, reference = list(optimizers)
    ours = row["optimizers"][recommended]["steps_to_target_median"]
    ref = row["optimizers"][reference]["steps_to_target_median"]
    row.update(
        recommended=recommended,
        reference=reference,
        # steps the reference needs per step the recommended one needs: above 1, it wins
        ratio=ref / ours if math.isfinite(ours) and ours > 0 else 0.0,
        spread=[
            min(row["optimizers"][recommended]["steps_to_target"]),
            max(row["optimizers"][recommended]["steps_to_target"]),
        ],
        steps=steps,
        seeds=seeds,
    )
    row["recommended_wins"] = ours < ref
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, 2 lrs, fewer steps")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "convergence.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    seeds = [0, 1, 2] if args.quick else [0, 1, 2, 3, 4]
    grid_size = 2 if args.quick else 3
    steps = {"timeseries": 200 if args.quick else 600, "sparse": 100 if args.quick else 400}
    results = []
    for name in args.cases.split(","):
        row = run_case(name, steps[name], seeds, grid_size)
        results.append(row)
        rec, ref = row["recommended"], row["reference"]
        o = row["optimizers"]
        print(
            f"{name}: target {row['target_loss']:.6g}; {rec} (lr {o[rec]['best_lr']}) "
            f"{o[rec]['steps_to_target_median']} steps, {ref} (lr {o[ref]['best_lr']}) "
            f"{o[ref]['steps_to_target_median']} steps: "
            f"{'recommended optimizer wins' if row['recommended_wins'] else 'it does not win'}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "quick": args.quick}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
