"""Sharding and the ``distributed`` section's checks: pure Python, no Horovod needed (the tests
that launch ``horovodrun`` are in test_horovod.py)."""

from __future__ import annotations

import pytest
import torch

from pyrotrain.data import BatchOrder
from pyrotrain.errors import PyrotrainError

# -- sharding -----------------------------------------------------------------------------------


def test_rank_shards_are_disjoint_and_their_union_is_the_big_batch():
    n, batch, seed = 803, 25, 7
    ranks = [BatchOrder(n, batch, seed, rank, 2) for rank in range(2)]
    one = BatchOrder(n, 2 * batch, seed)
    for epoch in range(3):
        shards = [torch.cat(o.epoch(epoch)) for o in ranks]
        assert len(shards[0]) == len(shards[1]) == n // 2
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
        # step s of 2 ranks with batch B sees the rows of step s of one process with batch 2B
        for s, big in enumerate(one.epoch(epoch)[: ranks[0].steps_per_epoch - 1]):
            mine = torch.cat([o.epoch(epoch)[s] for o in ranks])
            assert sorted(mine.tolist()) == sorted(big.tolist())
    assert not torch.equal(torch.cat(ranks[0].epoch(0)), torch.cat(ranks[0].epoch(1)))


# -- config checks ------------------------------------------------------------------------------

BAD_SETTINGS = [
    ({"compression": "gzip"}, ["distributed.compression", "'gzip'", "none, fp16"]),
    ({"op": "max"}, ["distributed.op", "'max'", "average, sum, adasum"]),
    ({"lr_scaling": "cubic"}, ["distributed.lr_scaling", "'cubic'", "none, linear, sqrt"]),
    ({"allreduce": "ring"}, ["distributed.allreduce", "fused, grouped, per_tensor"]),
    (
        {"backward_passes_per_step": 2},
        ["distributed.backward_passes_per_step", "trainer.accumulate_grad_batches"],
    ),
    ({"gradient_predivide_factor": -1}, ["distributed.gradient_predivide_factor", "-1"]),
    ({"gradient_predivide_factor": 2.0, "op": "sum"}, ["op=average", "'sum'"]),
    ({"bogus": 1}, ["distributed.bogus", "Valid choices: name, compression"]),
]


@pytest.mark.parametrize("settings,expected", BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
def test_bad_distributed_settings_name_key_value_and_choices(settings, expected):
    from pyrotrain.distributed import parse_distributed

    for name in ("auto", "horovod"):  # checked even when auto runs one process
        with pytest.raises(PyrotrainError) as e:
            parse_distributed({"name": name, **settings})
        for text in expected:
            assert text in str(e.value), (text, str(e.value))
