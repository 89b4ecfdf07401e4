"""Plots of a run (loss, learning rates, gradient norms) and of a sweep (every job's loss).

Written at the end of each CLI run and on demand: ``pyrotrain-plot RUN_OR_SWEEP_DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot, imported on first use (half a second: not before the first step)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a crash ends the readable part
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and _finite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _positive(values: list[float]) -> bool:
    return bool(values) and min(values) > 0


def _title(ax: Any, text: str) -> None:
    """A title of several lines when it is long (a run's overrides can be)."""
    import textwrap

    lines = [textwrap.fill(line, 90) for line in text.split("\n")]
    ax.set_title("\n".join(lines), fontsize=9 if len(text) > 60 else None)


def save_figure(fig, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it; returns ``path``."""
    from .io import atomic_write

    if tight:
        fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    pyplot().close(fig)
    return path


def run_title(run_dir: Path) -> str:
    """What a run is, for its plots' titles: model, data, each group's optimizer (and the
    scheduler), then the command-line overrides; the directory's name when there is no config."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.exists():
        return Path(run_dir).name
    import yaml

    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    def name(section: Any) -> str | None:
        return section.get("name") if isinstance(section, dict) else section

    groups = (cfg.get("optim") or {}).get("groups") or {}
    optimizers = [
        f"{g}: {name(spec.get('optimizer'))}"
        if len(groups) > 1
        else str(name(spec.get("optimizer")))
        for g, spec in groups.items()
        if isinstance(spec, dict)
    ]
    scheduler = name(cfg.get("scheduler"))
    parts = [
        str(name(cfg.get("model"))),
        f"on {name(cfg.get('data'))}",
        ", ".join(optimizers) + (f" + {scheduler}" if scheduler not in (None, "none") else ""),
    ]
    title = " ".join(p for p in parts[:2]) + (f", {parts[2]}" if parts[2] else "")
    overrides = " ".join(job_overrides(Path(run_dir)))
    return f"{title}\n{overrides}" if overrides else title


# Groups whose lines coincide (equal learning rates) stay visible: each its own dash and marker.
_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v")]


def plot_run(run_dir: str | Path, log_scale: bool | None = None) -> list[Path]:
    """Write loss.png, lr.png, grad_norm.png (and eval.png with trainer.eval_every) into
    ``run_dir``; return the files written.

    ``log_scale=None`` uses a log loss axis when every loss is positive and they span more than
    a factor of 20.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return []
    written = []
    steps, loss = _series(rows, "loss")
    s_steps, smoothed = _series(rows, "smoothed_loss")
    if log_scale is None:
        log_scale = _positive(loss) and max(loss) / min(loss) > 20
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    ax.plot(steps, loss, color="tab:blue", alpha=0.35, lw=1, label="loss (mean per log row)")
    ax.plot(s_steps, smoothed, color="tab:blue", lw=2, label="smoothed loss")
    title = run_title(run_dir)
    ax.set(xlabel="step", ylabel="loss (negative ELBO)")
    _title(ax, f"Loss: {title}")
    if log_scale and _positive(loss):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(save_figure(fig, run_dir / "loss.png"))

    for prefix, ylabel, fname, what in [
        ("lr/", "learning rate", "lr.png", "Learning rate per group"),
        ("grad_norm/", "gradient L2 norm", "grad_norm.png", "Gradient norm per group"),
    ]:
        keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
        if not keys:
            continue
        fig, ax = pyplot().subplots(figsize=(7, 4.2))
        all_values = []
        for i, key in enumerate(keys):
            xs, ys = _series(rows, key)
            all_values += ys
            dash, marker = _STYLES[i % len(_STYLES)]
            # About 8 markers per line, each group's shifted so that they don't stack.
            every = max(len(keys), len(xs) // 8, 1)
            ax.plot(
                xs,
                ys,
                lw=1.5,
                ls=dash,
                marker=marker,
                markevery=(i * every // len(keys), every),
                ms=5,
                label=key[len(prefix) :],
            )
        if prefix == "grad_norm/" and _positive(all_values):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=ylabel)
        _title(ax, f"{what}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(title="group")
        written.append(save_figure(fig, run_dir / fname))
    evaluated = _plot_eval(run_dir, rows)
    return written + ([evaluated] if evaluated else [])


def _monitor(run_dir: Path) -> tuple[str | None, str]:
    """trainer.early_stopping's monitor and mode, from the run's saved config."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return None, "min"
    import yaml

    rule = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("early_stopping")
    rule = rule or {}
    return rule.get("monitor"), rule.get("mode", "min")


def _plot_eval(run_dir: Path, rows: list[dict]) -> Path | None:
    """eval.png: each held-out metric of trainer.eval_every over the steps, one panel each;
    metrics that never change (baselines) are listed, and the monitored one's best is marked."""
    keys = sorted({k for r in rows for k in r if k.startswith("eval/")})
    if not keys:
        return None
    courses = {k: _series(rows, k)[1] for k in keys}
    constant = {k: v[0] for k, v in courses.items() if len(v) > 1 and len(set(v)) == 1}
    keys = [k for k in keys if k not in constant] or keys
    monitor, mode = _monitor(run_dir)
    plt = pyplot()
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.3 * nrows + 0.6), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker="o", ms=3, lw=1.5, color="tab:green")
        title = key[len("eval/") :]
        if key == monitor and ys:
            pick = min if mode == "min" else max
            best = pick(range(len(ys)), key=ys.__getitem__)
            ax.plot(
                [xs[best]],
                [ys[best]],
                marker="*",
                ms=14,
                color="tab:red",
                ls="none",
                label=f"best {ys[best]:.4g} (step {xs[best]})",
            )
            ax.legend(fontsize="small")
            title += " (monitored)"
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"Held-out evaluation during training: {run_dir.name}")
    if constant:
        fixed = ", ".join(f"{k[len('eval/') :]} {v:.4g}" for k, v in constant.items())
        fig.text(0.5, 0.01, f"unchanged over the run: {fixed}", ha="center", fontsize="small")
    fig.tight_layout(rect=(0, 0.04 if constant else 0, 1, 1))
    return save_figure(fig, run_dir / "eval.png", tight=False)


def job_overrides(job_dir: Path) -> list[str]:
    """A job's command-line overrides, read from Hydra's .hydra/overrides.yaml."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    import yaml

    return [o for o in yaml.safe_load(path.read_text()) or [] if not o.startswith("hydra.")]


def job_labels(jobs: list[Path]) -> dict[Path, str]:
    """Each job's overrides, less those every job of the sweep shares."""
    overrides = {job: job_overrides(job) for job in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(jobs) > 1 else set()
    return {
        job: " ".join(o for o in ov if o not in shared) or job.name for job, ov in overrides.items()
    }


_JOB_FILES = ("metrics.jsonl", "summary.json", ".hydra")


def job_status(job_dir: Path) -> str:
    """``finished``, or what the job's summary.json says instead (``diverged``, ``failed``)."""
    path = job_dir / "summary.json"
    if not path.exists():
        return "unfinished"
    return str(json.loads(path.read_text(encoding="utf-8")).get("status", "finished"))


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """Job directories of a sweep, in job order."""
    jobs = [
        p
        for p in Path(sweep_dir).iterdir()
        if p.is_dir() and any((p / name).exists() for name in _JOB_FILES)
    ]
    return sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def plot_sweep(sweep_dir: str | Path, log_scale: bool | None = None) -> Path | None:
    """Every job's smoothed loss on one figure, labelled by its overrides: comparison.png."""
    sweep_dir = Path(sweep_dir)
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        return None
    fig, ax = pyplot().subplots(figsize=(8, 4.8))
    all_values = []
    labels = job_labels(jobs)
    not_drawn = []
    for job in jobs:
        xs, ys = _series(read_metrics(job), "smoothed_loss")
        status = job_status(job)
        if not xs:  # stopped before its first metrics row
            not_drawn.append(f"{job.name}: {labels[job]} [{status}]")
            continue
        all_values += ys
        if status == "finished":
            ax.plot(xs, ys, lw=1.5, label=f"{job.name}: {labels[job]}")
        else:  # what it did before it stopped, marked
            ax.plot(xs, ys, lw=1, ls=":", marker="x", label=f"{job.name}: {labels[job]} [{status}]")
    if log_scale is None:
        log_scale = _positive(all_values) and max(all_values) / min(all_values) > 20
    if log_scale and _positive(all_values):
        ax.set_yscale("log")
    ax.set(
        xlabel="step",
        ylabel="smoothed loss (negative ELBO)",
        title=f"Sweep {sweep_dir.name}: smoothed loss per job",
    )
    ax.grid(alpha=0.3)
    if all_values:
        ax.legend(fontsize="small", loc="upper right")
    if not_drawn:
        import textwrap

        note = textwrap.fill("Not drawn (no metrics row): " + "; ".join(not_drawn), 110)
        fig.text(0.01, 0.01, note, fontsize=8, va="bottom", color="tab:red")
        fig.tight_layout(rect=(0, 0.04 + 0.03 * note.count("\n"), 1, 1))
    return save_figure(fig, sweep_dir / "comparison.png", tight=not not_drawn)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pyrotrain-plot",
        description="Plot a run directory (loss.png, lr.png, grad_norm.png) or a sweep directory "
        "(comparison.png, plus each job's plots).",
    )
    parser.add_argument("path", type=Path, help="a run directory or a --multirun sweep directory")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--log", dest="log_scale", action="store_true", default=None, help="log-scale loss axis"
    )
    scale.add_argument(
        "--linear",
        dest="log_scale",
        action="store_false",
        help="linear loss axis (default: log when the loss spans >20x)",
    )
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"{args.path} is not a directory")
    written: list[Path | None] = []
    if (args.path / "metrics.jsonl").exists():
        written += plot_run(args.path, args.log_scale)
    else:
        jobs = sweep_jobs(args.path)
        if not jobs:
            parser.error(
                f"{args.path} has no metrics.jsonl and no job directories with one: "
                "give a pyrotrain run or sweep directory"
            )
        for job in jobs:
            written += plot_run(job, args.log_scale)
        written.append(plot_sweep(args.path, args.log_scale))
    for path in written:
        print(path)
    sys.exit(0)


if __name__ == "__main__":
    main()
