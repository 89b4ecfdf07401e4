"""``pyrotrain-list``: what the config can name (optimizers, schedulers, models, ...)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from .registry import DATASETS, ELBOS, GUIDES, MODELS, OPTIMIZERS, SCHEDULERS, Registry

REGISTRIES: dict[str, tuple[Registry, str]] = {
    "optimizers": (OPTIMIZERS, "optim.groups.<group>.optimizer.name"),
    "schedulers": (SCHEDULERS, "scheduler.name or optim.groups.<group>.scheduler.name"),
    "models": (MODELS, "model=<name> (or model=custom model.target=pkg.module:Name)"),
    "datasets": (DATASETS, "data.name"),
    "guides": (GUIDES, "guide=<name> (or guide=model)"),
    "elbos": (ELBOS, "elbo=<name>"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pyrotrain-list",
        description="List what pyrotrain's config can name. Any of these keys also takes an "
        "import path 'package.module:Name'.",
    )
    parser.add_argument(
        "kinds",
        nargs="*",
        metavar="KIND",
        help=f"one or more of: {', '.join(REGISTRIES)} (default: all)",
    )
    args = parser.parse_args(argv)
    for kind in args.kinds:
        if kind not in REGISTRIES:
            parser.error(f"unknown KIND {kind!r}; valid choices: {', '.join(REGISTRIES)}")
    console = Console()
    for kind in args.kinds or REGISTRIES:
        registry, where = REGISTRIES[kind]
        table = Table(title=f"{kind}  [dim]({where})[/]", title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("implementation")
        for name in registry.names():
            table.add_row(name, registry.describe(name))
        if kind == "schedulers":
            table.add_row("warmup", "linear warmup, then any scheduler given as 'then'")
        console.print(table)


if __name__ == "__main__":
    main()
