"""Hydra's private API, in one place (``docs/design.md`` lists every library's shim).

Hydra offers no public way to do either of these, and both need what its basic sweeper does:

- under a launcher, non-main ranks must not write the sweep's ``multirun.yaml`` (the basic sweeper
  saves it whatever the config says: facebookresearch/hydra#1773 and #2341, "multirun.yaml will
  always be created"), and rank 0 writes the same file in the same directory;
- a sweep's jobs are checked before the first one runs, so we need the jobs the basic sweeper
  will make of the overrides, in its order.

``tests/test_compat_hydra.py`` fails when Hydra changes either.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def basic_sweep_jobs(overrides: list[Any]) -> list[list[str]]:
    """The jobs (each a list of ``key=value`` overrides) that Hydra's basic sweeper makes of
    parsed ``overrides`` (``hydra.core.override_parser`` ``Override`` objects), in its order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


class _NoSave:
    """OmegaConf as the basic sweeper's module sees it, less ``save``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(OmegaConf, name)

    @staticmethod
    def save(*args: Any, **kwargs: Any) -> None:
        return None


def skip_multirun_yaml() -> None:
    """Keep Hydra's basic sweeper in this process from saving ``multirun.yaml`` (it calls
    ``OmegaConf.save`` through its module's global ``OmegaConf`` for that file only)."""
    from hydra._internal.core_plugins import basic_sweeper
    from hydra.core.plugins import Plugins

    Plugins.instance()  # its plugin scan re-executes basic_sweeper: patch after it
    if getattr(basic_sweeper, "OmegaConf", None) is OmegaConf:
        # a stand-in, not the OmegaConf class the module's global is typed as
        basic_sweeper.OmegaConf = _NoSave()  # type: ignore[misc, assignment]
