from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest

TESTS = Path(__file__).parent
PYROTRAIN = Path(sys.executable).with_name("pyrotrain")


@pytest.fixture(autouse=True)
def fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the installed ``pyrotrain`` command as a user would (stdout is not a terminal)."""
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [str(PYROTRAIN), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli
