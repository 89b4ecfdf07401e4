"""Sharding and the ``distributed`` section's checks: pure Python, no Horovod needed (the tests
that launch ``horovodrun`` are in test_horovod.py)."""

from __future__ import annotations

import signal

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


TORCH_BAD_SETTINGS = [
    ({"backend": "mpi"}, ["distributed.backend", "'mpi'", "auto, gloo, nccl"]),
    ({"op": "adasum"}, ["distributed.op", "'adasum'", "average, sum"]),
    ({"allreduce": "grouped"}, ["distributed.allreduce", "fused, per_tensor"]),
    ({"timeout": 0}, ["distributed.timeout", "0"]),
    ({"compression": "gzip"}, ["distributed.compression", "none, fp16"]),
    ({"gradient_predivide_factor": 2.0, "op": "sum"}, ["op=average", "'sum'"]),
]


@pytest.mark.parametrize(
    "settings,expected", TORCH_BAD_SETTINGS, ids=[str(s) for s, _ in TORCH_BAD_SETTINGS]
)
def test_bad_torch_settings_name_key_value_and_choices(settings, expected, monkeypatch):
    from pyrotrain.distributed import parse_distributed

    with pytest.raises(PyrotrainError) as e:
        parse_distributed({"name": "torch", **settings})
    for text in expected:
        assert text in str(e.value), (text, str(e.value))
    # under torchrun, auto checks the same keys against torch's choices
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if "backend" not in settings and "timeout" not in settings:  # torch's own keys: not in auto
        with pytest.raises(PyrotrainError) as e:
            parse_distributed({"name": "auto", **settings})
        for text in expected:
            assert text in str(e.value), (text, str(e.value))


def test_auto_under_torchrun_is_torch_and_other_engines_are_refused(monkeypatch):
    from pyrotrain.distributed import launch_env, parse_distributed

    for var in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launch = launch_env()
    assert launch is not None and (launch.rank, launch.size, launch.engine) == (1, 2, "torch")
    config = parse_distributed({"name": "auto", "allreduce": "per_tensor"})
    assert config.engine == "torch" and config.settings.allreduce == "per_tensor"
    for other in ("none", "horovod"):
        with pytest.raises(PyrotrainError) as e:
            parse_distributed(other)
        assert "rank 1 of 2 started by torch's launcher" in str(e.value)
        assert "Valid choices: auto, torch" in str(e.value)


def test_distributed_torch_without_a_launcher_is_one_process():
    from pyrotrain.distributed import Backend, create_backend, parse_distributed

    backend = create_backend(parse_distributed("torch"))
    assert isinstance(backend, Backend)
    assert (backend.name, backend.rank, backend.size, backend.is_main) == ("torch", 0, 1, True)
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.full((3,), 2.0)
    assert backend.reduce([p], 1.5, 0) == (1.5, 0) and torch.equal(p.grad, torch.full((3,), 2.0))
    assert backend.gather_object("x") == ["x"] and backend.params_in_sync()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for hosts without CUDA")
def test_nccl_without_cuda_is_refused_with_the_alternatives():
    from pyrotrain.distributed import create_backend, parse_distributed

    with pytest.raises(PyrotrainError) as e:
        create_backend(parse_distributed({"name": "torch", "backend": "nccl"}))
    assert "distributed.backend" in str(e.value) and "Valid choices: auto, gloo" in str(e.value)


def test_a_resume_at_another_world_size_goes_on_in_the_same_epoch_at_the_same_fraction():
    two = BatchOrder(1000, 50, 7, 0, 2)  # 10 steps per epoch per rank
    one = BatchOrder(1000, 50, 7)  # 20 steps per epoch
    assert one.resharded(34, 2) == 3 * 20 + 8  # epoch 3, 4 of 10 steps done -> 8 of 20
    assert two.resharded(48, 1) == 2 * 10 + 4  # epoch 2, 8 of 20 -> 4 of 10
    assert two.resharded(48, 2) == 48
    epoch, _ = next(one.iter_from(one.resharded(34, 2)))
    assert epoch == 3


def test_stop_counts_summed_over_ranks_decode_to_the_signal_not_a_threshold():
    """Each signal has its own count: eight SIGINTs stay SIGINT; any SIGTERM wins."""
    from pyrotrain.distributed.base import stop_counts, stop_signal

    def decoded(*stops: int) -> int:
        return stop_signal([round(sum(c)) for c in zip(*map(stop_counts, stops), strict=True)])

    assert decoded(*[signal.SIGINT] * 8) == signal.SIGINT
    assert decoded(*[signal.SIGINT] * 7, signal.SIGTERM) == signal.SIGTERM
    assert decoded(0, 0, signal.SIGTERM) == signal.SIGTERM
    assert decoded(0, 0) == 0
    with pytest.raises(ValueError, match="stop is 0 or one of"):
        stop_counts(9)
