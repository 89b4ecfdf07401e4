"""The shared test helpers and conftest's fixtures: what the other tests rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import registries, registries_restored, same

from pyrotrain.registry import DATASETS, ELBOS, GUIDES, MODELS, OPTIMIZERS, SCHEDULERS


def test_registries_finds_every_registry():
    assert {OPTIMIZERS, SCHEDULERS, MODELS, DATASETS, GUIDES, ELBOS} <= set(registries())


def test_registries_restored_undoes_additions_replacements_and_removals():
    entries = {registry: registry._entries for registry in registries()}
    before = {registry: dict(registry._entries) for registry in registries()}
    with registries_restored():
        OPTIMIZERS.register("added_for_test", torch.optim.SGD)
        ELBOS.register("trace", "not.a.module:Elbo")
        del MODELS._entries["regression"]
        GUIDES._entries.clear()
    assert "added_for_test" not in OPTIMIZERS
    for registry in registries():
        assert registry._entries is entries[registry]  # restored in place
        assert registry._entries == before[registry]
        assert list(registry._entries) == list(before[registry])  # and in order


def test_registries_restored_after_an_exception_too():
    with pytest.raises(ValueError), registries_restored():
        SCHEDULERS.register("added_for_test", object())
        raise ValueError
    assert "added_for_test" not in SCHEDULERS


def test_every_test_runs_with_the_registries_restored_after_it(request):
    # conftest's autouse fixture does it with registries_restored, tested above
    assert "isolated_registries" in request.fixturenames


EQUAL = {
    "tensor-with-nan": (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")])),
    "nested": ({"a": [1, (2.5, "s")], "b": None}, {"b": None, "a": [1, (2.5, "s")]}),
    "numpy-array": (np.arange(3, dtype=np.uint32), np.arange(3, dtype=np.uint32)),
    "optimizer-state": (
        {"state": {0: {"step": torch.tensor(3.0)}}},
        {"state": {0: {"step": torch.tensor(3.0)}}},
    ),
    "bool-tensor": (torch.tensor(True), torch.tensor(True)),
    "empty-tensor": (torch.zeros(0, 3), torch.zeros(0, 3)),
}
DIFFERENT = {
    "tensor-last-bits": (torch.tensor([1.0]), torch.tensor([1.0 + 2**-20])),
    "tensor-signed-zero": (torch.tensor([0.0]), torch.tensor([-0.0])),
    "tensor-dtype": (torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64)),
    "tensor-shape": (torch.tensor([1.0]), torch.tensor([[1.0]])),
    "tensor-vs-int": (torch.tensor(3), 3),
    "int-vs-float": (1, 1.0),
    "int-vs-bool": (1, True),
    "signed-zero": (0.0, -0.0),
    "nan-vs-zero": (float("nan"), 0.0),
    "list-vs-tuple": ([1, 2], (1, 2)),
    "list-length": ([1, 2], [1, 2, 3]),
    "dict-keys": ({"a": 1}, {"a": 1, "b": 2}),
    "nested-tensor": ({"a": {"b": [torch.zeros(2)]}}, {"a": {"b": [torch.ones(2)]}}),
    "numpy-dtype": (np.arange(3, dtype=np.uint32), np.arange(3, dtype=np.int64)),
}


@pytest.mark.parametrize("x,y", EQUAL.values(), ids=EQUAL.keys())
def test_same_holds_for_equal_state(x, y):
    assert same(x, y)


@pytest.mark.parametrize("x,y", DIFFERENT.values(), ids=DIFFERENT.keys())
def test_same_fails_on_any_difference(x, y):
    assert not same(x, y) and not same(y, x)
