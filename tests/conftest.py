from __future__ import annotations

import pyro
import pytest
from helpers import registries_restored, run_cli


@pytest.fixture(autouse=True)
def fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def isolated_registries():
    """Whatever a test registers (``register_optimizer(...)``) is gone before the next one."""
    with registries_restored():
        yield


@pytest.fixture
def cli():
    return run_cli
