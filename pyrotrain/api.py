"""The Python API: compose a config as the CLI would, and train from it."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from .loop import train


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``pyrotrain OVERRIDES...`` would run, e.g. ``compose(["optim=dct_adam"])``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="pyrotrain.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


__all__ = ["compose", "train"]
