"""The trained run, rebuilt in this process: its config, its model and guide, and the parameters
of ``params.pt`` or a checkpoint loaded into the Pyro param store."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyro
import torch
from omegaconf import OmegaConf

from ..errors import PyrotrainError


def hydra_cwd(run_dir: Path) -> Path | None:
    """The working directory the run was started from (Hydra records it), if known."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd", default=None)
    return Path(cwd) if cwd else None


def parameter_file(run_dir: Path, checkpoint: str | None) -> tuple[Path, dict[str, Any]]:
    """The file holding the parameters to use and the param store state in it."""
    from ..checkpoint import DIRNAME, list_checkpoints, load_checkpoint

    if checkpoint is None:
        path = run_dir / "params.pt"
        if not path.is_file():
            raise PyrotrainError(
                f"{run_dir} has no params.pt: the run did not finish",
                key="RUN_DIR",
                value=str(run_dir),
                hint="Use one of its checkpoints with --checkpoint last (or best, or a file)",
            )
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise PyrotrainError(
                f"{path} cannot be read ({type(e).__name__})", key="RUN_DIR", value=str(run_dir)
            ) from e
    if checkpoint == "best":
        path = run_dir / DIRNAME / "best.pt"
        if not path.is_file():
            raise PyrotrainError(
                f"{run_dir} has no {DIRNAME}/best.pt: it is written when "
                "trainer.early_stopping.monitor is set",
                key="--checkpoint",
                value=checkpoint,
                choices=["last", "a checkpoint file"],
            )
    elif checkpoint == "last":
        found = list_checkpoints(run_dir)
        if not found:
            raise PyrotrainError(
                f"{run_dir} has no checkpoint", key="--checkpoint", value=checkpoint
            )
        path = found[0]
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise PyrotrainError(
                "no such checkpoint file",
                key="--checkpoint",
                value=checkpoint,
                choices=["best", "last", "a checkpoint file"],
            )
    return path, load_checkpoint(path)["param_store"]


def load_run(run_dir: str | Path, checkpoint: str | None = None) -> Any:
    """The run in ``run_dir`` rebuilt in this process, its parameters in the Pyro param store."""
    from ..build import build, torch_defaults
    from ..config import parse_config
    from ..loop import batch_of
    from ..params import create_params, load_param_values

    run_dir = Path(run_dir).expanduser()
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        what = "does not exist" if not run_dir.exists() else "has no .hydra/config.yaml"
        raise PyrotrainError(
            f"{run_dir} {what}: it is not a pyrotrain run directory",
            key="RUN_DIR",
            value=str(run_dir),
            hint="Give the directory a pyrotrain run printed at its end ('run dir: ...')",
        )
    plain: dict[str, Any] = OmegaConf.to_container(  # type: ignore[assignment]
        OmegaConf.load(config_file), resolve=True
    )
    cwd = hydra_cwd(run_dir)
    if cwd is not None:  # relative paths of the run's own data and code are the run's
        path = plain.get("data", {}).get("path")
        if isinstance(path, str) and not Path(path).expanduser().is_absolute():
            plain["data"]["path"] = str(cwd / path)
        if str(cwd) not in sys.path:
            sys.path.append(str(cwd))
    plain["distributed"] = {"name": "none"}
    config = parse_config(plain)
    config = replace(config, trainer=replace(config.trainer, resume=None))
    source, saved = parameter_file(run_dir, checkpoint)
    pyro.clear_param_store()
    run = build(config)
    with torch_defaults(run.dtype, run.device):
        pyro.set_rng_seed(config.seed)
        first = next(iter(run.order))[1]
        create_params(run, batch_of(run, first))
        load_param_values(saved, "--checkpoint", str(source))
    return run
