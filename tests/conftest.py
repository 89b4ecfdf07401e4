from __future__ import annotations

import pyro
import pytest
from helpers import run_cli


@pytest.fixture(autouse=True)
def fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def cli():
    return run_cli
