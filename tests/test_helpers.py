"""The shared test helpers: what the other tests rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import same

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
