"""pyrotrain/_compat_hydra.py, the one place that uses Hydra's private API: these fail when Hydra
changes what the shim relies on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import cli_env
from hydra.core.override_parser.overrides_parser import OverridesParser

from pyrotrain._compat_hydra import basic_sweep_jobs

_APP = """
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore

from pyrotrain._compat_hydra import skip_multirun_yaml

ConfigStore.instance().store(name="app", node={"x": 0})


@hydra.main(version_base=None, config_name="app")
def job(cfg):
    Path(f"job-{cfg.x}").touch()


if __name__ == "__main__":
    if sys.argv.pop(1) == "skip":
        skip_multirun_yaml()
    job()
"""


def _sweep(tmp_path, mode: str):
    (tmp_path / "app.py").write_text(textwrap.dedent(_APP))
    sweep = tmp_path / mode
    r = subprocess.run(
        [sys.executable, "app.py", mode, "--multirun", "x=1,2", f"hydra.sweep.dir={sweep}",
         "hydra.job.chdir=false", "hydra.output_subdir=null", "hydra/job_logging=stdout"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return sweep


def test_skip_multirun_yaml_keeps_the_basic_sweeper_from_writing_it_and_nothing_else(tmp_path):
    """Hydra's basic sweeper writes multirun.yaml whatever the config says; after the shim it
    writes no file (the job dirs Hydra makes stay empty, as under a launcher), and the jobs
    still run."""
    assert (_sweep(tmp_path, "save") / "multirun.yaml").exists()  # what the shim is for
    skipped = _sweep(tmp_path, "skip")
    assert [p for p in skipped.rglob("*") if not p.is_dir()] == []  # job dirs only, empty
    assert (tmp_path / "job-1").exists() and (tmp_path / "job-2").exists()


def test_basic_sweep_jobs_are_the_basic_sweepers_cartesian_product_in_its_order():
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "c=p,q"])
    assert basic_sweep_jobs(parsed) == [
        ["a=1", "b=x", "c=p"],
        ["a=1", "b=x", "c=q"],
        ["a=2", "b=x", "c=p"],
        ["a=2", "b=x", "c=q"],
    ]
