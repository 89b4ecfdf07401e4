"""The ``pyrotrain`` command: Hydra composes the config, :func:`pyrotrain.train` runs it.

User mistakes (bad overrides, unknown config options, invalid values) end with one paragraph on
stderr and exit code 2; ``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from .errors import PyrotrainError
from .trainer import train

EXIT_USAGE = 2
_show_traceback = False  # HYDRA_FULL_ERROR=1 as the user set it


@hydra.main(version_base="1.3", config_path="pkg://pyrotrain.conf", config_name="config")
def _job(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = train(cfg, run_dir)
    except PyrotrainError as exc:
        if _show_traceback:
            raise
        # Exit here: an exception would make Hydra print its own report before ours.
        _report(str(exc))
    console = Console()
    console.print(
        f"final loss {summary['final_loss']:.6g} (smoothed {summary['smoothed_loss']:.6g}) "
        f"after {summary['steps']} steps, {summary['steps_per_s']:.1f} steps/s"
    )
    if summary.get("eval"):
        console.print(
            "eval "
            + "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in summary["eval"].items()
            )
        )
    console.print(f"run dir: {run_dir}")
    return summary["smoothed_loss"]


def _one_paragraph(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def user_error_message(exc: BaseException) -> str | None:
    """The one-paragraph message for a mistake the user made, or None for anything else."""
    if isinstance(exc, PyrotrainError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        if group and exc.options is not None:
            return PyrotrainError(
                f"config group '{group}' has no option '{option}'",
                key=group,
                value=option,
                choices=exc.options,
            ).message()
        return _one_paragraph(str(exc).split("Config search path")[0])
    if isinstance(exc, OverrideParseException):
        return _one_paragraph(f"Cannot parse the override '{exc.override}': {exc.message}")
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        detail = f" ({_one_paragraph(str(cause))})" if cause is not None else ""
        hint = ""
        if "not in struct" in detail:
            hint = " To add a new key, prefix it with '+' (e.g. +trainer.new_key=1)."
        return _one_paragraph(f"{exc}{detail}.{hint}")
    if isinstance(exc, OmegaConfBaseException):
        return _one_paragraph(str(exc))
    return None


def _report(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(EXIT_USAGE)


def main() -> None:
    # Users' own models and data (model.target=mymodule:Model) import from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    global _show_traceback
    user_wants_trace = _show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then re-raises instead of printing its own multi-paragraph report and exiting 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _job()
    except Exception as exc:
        message = user_error_message(exc)
        if message is None or user_wants_trace:
            raise
        _report(message)
    finally:
        if not user_wants_trace:
            os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
