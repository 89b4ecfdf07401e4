"""Checkpoints, exact resume, non-finite losses, interrupts and hostile input (issue 8)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pyro
import pytest
import torch
from helpers import PYROTRAIN, QUICK, assert_same_run, cli_env, metrics_rows
from omegaconf import open_dict

from pyrotrain.api import compose
from pyrotrain.checkpoint import list_checkpoints, load_checkpoint
from pyrotrain.errors import PyrotrainError, TrainingStopped
from pyrotrain.loop import train

RESUME_CASES = {
    "regression-adam": ["model=regression"],
    "timeseries-dct_adam": ["experiment=timeseries_dct"],
    "sparse-adagrad_rmsprop": ["model=sparse"],
    # 5000 items: row-tracked item tables, with per-row step counters in the state
    "sparse-rows": ["model=sparse", "data.items=5000", "data.observations=4000"],
    "neural-multi-warmup_cosine": ["experiment=neural_multi", "trainer.batch_size=64"],
    "regression-step_scheduler": ["model=regression", "scheduler=step"],
}


@pytest.mark.parametrize("overrides", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_ten_steps_then_resume_equals_twenty_straight(tmp_path, overrides):
    base = [*QUICK, *overrides, "trainer.checkpoint_every=5"]
    train(compose([*base, "trainer.steps=20"]), tmp_path / "straight")
    train(compose([*base, "trainer.steps=10"]), tmp_path / "first")
    summary = train(
        compose([*base, "trainer.steps=20", f"trainer.resume={tmp_path / 'first'}"]),
        tmp_path / "second",
    )
    assert summary["resumed_from_step"] == 10
    assert_same_run(tmp_path / "straight", tmp_path / "second", 20)
    # the metrics of the resumed run start after the checkpoint
    steps = [row["step"] for row in metrics_rows(tmp_path / "second")]
    assert steps == [15, 20]


def test_checkpoints_every_k_steps_keep_the_last_k(tmp_path):
    train(
        compose(
            [*QUICK, "trainer.steps=23", "trainer.checkpoint_every=5", "trainer.keep_checkpoints=2"]
        ),
        tmp_path,
    )
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000023.pt", "step-00000020.pt"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / names[0])
    assert ckpt["step"] == 23 and ckpt["loop"]["consumed"] == 23
    assert set(ckpt["rng"][0]) >= {"torch", "random", "numpy"}
    assert ckpt["config"]["trainer"]["steps"] == 23
    assert len(ckpt["shape"]) > 0
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary file left behind


def test_resume_auto_in_the_same_run_dir_and_fallback_past_a_corrupt_file(tmp_path):
    base = [*QUICK, "trainer.checkpoint_every=5"]
    train(compose([*base, "trainer.steps=20"]), tmp_path / "straight")
    # auto with no checkpoint yet: starts from step 0
    first = train(compose([*base, "trainer.steps=15", "trainer.resume=auto"]), tmp_path / "run")
    assert first["resumed_from_step"] is None
    # the newest checkpoint is damaged: auto warns and takes the one before
    newest = tmp_path / "run" / "checkpoints" / "step-00000015.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="step-00000015.pt"):
        second = train(
            compose([*base, "trainer.steps=20", "trainer.resume=auto"]), tmp_path / "run"
        )
    assert second["resumed_from_step"] == 10
    assert_same_run(tmp_path / "straight", tmp_path / "run", 20)
    # metrics.jsonl keeps the first run's rows up to the checkpoint, then the resumed run's
    steps = [row["step"] for row in metrics_rows(tmp_path / "run")]
    assert steps == [5, 10, 15, 20]


def test_a_named_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "step-00000010.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(PyrotrainError, match=r"step-00000010\.pt cannot be read; it is corrupt"):
        train(compose([*QUICK, f"trainer.resume={bad}"]))


@pytest.mark.parametrize(
    "change,key",
    [
        (["model=sparse"], "model"),
        (["optim=multi"], "optim.groups"),
        (["trainer.batch_size=50"], "trainer.batch_size"),
    ],
)
def test_resume_with_an_incompatible_config_is_refused(tmp_path, change, key):
    train(compose([*QUICK, "trainer.steps=5"]), tmp_path / "first")
    with pytest.raises(PyrotrainError) as info:
        train(
            compose([*QUICK, *change, "trainer.steps=10", f"trainer.resume={tmp_path / 'first'}"])
        )
    assert info.value.key.startswith(key), info.value
    assert "does not fit this run" in str(info.value)


def test_resume_applies_a_changed_learning_rate(tmp_path):
    train(compose([*QUICK, "trainer.steps=5"]), tmp_path / "first")
    summary = train(
        compose(
            [*QUICK, "trainer.steps=10", "optim.lr=0.001", f"trainer.resume={tmp_path / 'first'}"]
        )
    )
    assert summary["lr"] == {"all": pytest.approx(0.001)}


def test_resume_past_the_end_is_refused(tmp_path):
    train(compose([*QUICK, "trainer.steps=5"]), tmp_path / "first")
    with pytest.raises(PyrotrainError, match="nothing left to train"):
        train(compose([*QUICK, "trainer.steps=5", f"trainer.resume={tmp_path / 'first'}"]))


def _files(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_resume_with_another_seed_is_refused_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    train(compose([*QUICK, "trainer.steps=5", "seed=3"]), run)
    before = _files(run)
    for resume, into in (("auto", run), (str(run), tmp_path / "second")):
        with pytest.raises(PyrotrainError) as info:
            train(compose([*QUICK, "trainer.steps=10", f"trainer.resume={resume}"]), into)
        assert info.value.exit_code == 2 and info.value.key == "seed", info.value
        assert "seed=3, this config has seed=0" in str(info.value)
        assert "Resume with seed=3" in str(info.value)
    assert _files(run) == before
    assert not (tmp_path / "second").exists()
    summary = train(compose([*QUICK, "trainer.steps=10", "seed=3", "trainer.resume=auto"]), run)
    assert summary["resumed_from_step"] == 5


def test_a_checkpoint_from_before_the_split_is_refused_with_another_seed(tmp_path):
    """Its shape holds no seed: the seed comes from the config it saved (seed=0)."""
    old = tmp_path / "old" / "checkpoints"
    old.mkdir(parents=True)
    fixture = Path(__file__).parent / "data" / "pre_refactor" / "step-00000010.pt"
    (old / fixture.name).write_bytes(fixture.read_bytes())
    overrides = ["trainer.batch_size=50", "optim=multi", "scheduler=step", "trainer.steps=20"]
    with pytest.raises(PyrotrainError, match="seed=0, this config has seed=1") as info:
        train(compose([*QUICK, *overrides, "seed=1", f"trainer.resume={old.parent}"]))
    assert info.value.key == "seed"


# Each of a run's outputs on its own marks a directory as used; Hydra's files alone do not.
OUTPUTS = {
    "metrics.jsonl": '{"step": 10, "loss": 1.0}\n',
    "params.pt": "x",
    "summary.json": "{}",
    "checkpoints/step-00000010.pt": "x",
}


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_new_run_in_a_directory_with_another_runs_outputs_is_refused(tmp_path, name):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "pyrotrain.log").write_text("")
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_text(OUTPUTS[name])
    before = _files(run)
    with pytest.raises(PyrotrainError) as info:
        train(compose([*QUICK, "trainer.steps=3"]), run)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert f"The run directory {run} already holds another run's outputs" in message
    assert name.split("/")[0] in message
    assert "trainer.resume=auto" in message and "hydra.run.dir" in message
    assert "remove this one" in message
    assert _files(run) == before


def test_hydras_files_alone_do_not_make_a_directory_used(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "pyrotrain.log").write_text("")
    (run / "metrics.jsonl").write_text("")  # a run that failed before its first row
    train(compose([*QUICK, "trainer.steps=5"]), run)
    assert [row["step"] for row in metrics_rows(run)] == [5]


def test_a_second_run_into_the_same_directory_is_refused_and_resume_continues(tmp_path):
    """Issue 16: a second run appended its rows to the first one's metrics.jsonl."""
    run = tmp_path / "run"
    train(compose([*QUICK, "trainer.steps=10"]), run)
    before = _files(run)
    with pytest.raises(PyrotrainError, match="already holds another run's outputs"):
        train(compose([*QUICK, "trainer.steps=5"]), run)
    # resuming a checkpoint of another run into it would mix them as well
    train(compose([*QUICK, "trainer.steps=5"]), tmp_path / "other")
    other = f"trainer.resume={tmp_path / 'other'}"
    with pytest.raises(PyrotrainError, match="already holds another run's outputs") as info:
        train(compose([*QUICK, "trainer.steps=10", other]), run)
    assert info.value.key == "trainer.resume"
    assert _files(run) == before
    # continuing the run that is there is allowed, by auto or by naming its own checkpoint
    summary = train(compose([*QUICK, "trainer.steps=15", "trainer.resume=auto"]), run)
    assert summary["resumed_from_step"] == 10
    own = run / "checkpoints" / "step-00000015.pt"
    summary = train(compose([*QUICK, "trainer.steps=20", f"trainer.resume={own}"]), run)
    assert summary["resumed_from_step"] == 15
    assert [row["step"] for row in metrics_rows(run)] == [5, 10, 15, 20]


def test_resume_auto_without_a_checkpoint_starts_over_without_old_rows(tmp_path):
    """A run that stopped before its first checkpoint: auto starts at step 0 and its rows
    replace the ones the stopped run logged."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 5, "loss": 9.0}\n')
    summary = train(compose([*QUICK, "trainer.steps=10", "trainer.resume=auto"]), run)
    assert summary["resumed_from_step"] is None
    rows = metrics_rows(run)
    assert [row["step"] for row in rows] == [5, 10] and rows[0]["loss"] != 9.0


# -- non-finite losses and gradients ---------------------------------------------------------------

TOY = [
    *QUICK,
    "model=custom",
    "model.target=toy_models:GoesNonFinite",
    "guide=model",
    "trainer.steps=12",
    "trainer.checkpoint_every=4",
]


def toy(*overrides: str):
    """GoesNonFinite with its parameters a and b in groups of their own."""
    cfg = compose([*TOY, *overrides])
    with open_dict(cfg):
        cfg.optim.groups = {
            name: {"params": [name], "optimizer": {"name": "adam", "lr": 0.1}} for name in "ab"
        }
    return cfg


def test_nan_policy_stop_before_any_checkpoint_does_not_advise_resuming(tmp_path):
    with pytest.raises(TrainingStopped) as info:
        train(toy("+model.nan_loss_at=[3]"), tmp_path)
    message = str(info.value)
    assert "No checkpoint was saved" in message and "start again" in message
    assert "trainer.resume" not in message
    assert list_checkpoints(tmp_path) == []


def test_nan_policy_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingStopped) as info:
        train(toy("+model.nan_loss_at=[7]"), tmp_path)
    message = str(info.value)
    assert info.value.exit_code == 1
    assert "step 7: the loss (a distribution was given non-finite values" in message
    assert "step-00000004.pt" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004.pt"]
    assert torch.isfinite(
        load_checkpoint(list_checkpoints(tmp_path)[0])["param_store"]["params"]["a"]
    )


def test_nan_gradient_names_its_group(tmp_path):
    with pytest.raises(TrainingStopped, match=r"step 3: the gradient of group 'b' is not finite"):
        train(toy("+model.nan_grad_at=[3]"), tmp_path)


def test_nan_policy_skip_skips_and_counts_then_gives_up_after_max_bad_steps(tmp_path):
    summary = train(toy("+model.nan_loss_at=[3,4]", "trainer.nan_policy=skip"))
    assert summary["skipped_steps"] == 2
    store = pyro.get_param_store()
    assert torch.isfinite(store["a"]) and torch.isfinite(store["b"])
    with pytest.raises(TrainingStopped, match="after 2 non-finite steps in a row"):
        train(
            toy("+model.nan_loss_at=[3,4,5]", "trainer.nan_policy=skip", "trainer.max_bad_steps=2")
        )


def test_nan_policy_reduce_lr_lowers_the_lr_of_the_group_at_fault():
    summary = train(
        toy("+model.nan_grad_at=[3,6]", "trainer.nan_policy=reduce_lr", "trainer.nan_lr_factor=0.1")
    )
    assert summary["skipped_steps"] == 2
    assert summary["lr"] == {"a": pytest.approx(0.1), "b": pytest.approx(0.001)}


# -- signals ---------------------------------------------------------------------------------------


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(PYROTRAIN), *args],
        cwd=cwd,
        env=cli_env({"OMP_NUM_THREADS": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SIGNAL_RUN = ["trainer.steps=1500", "trainer.progress=plain", "trainer.log_every=1"]


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_training_checkpoints_and_resume_matches_an_uninterrupted_run(
    tmp_path, cli, signum, code
):
    proc = _start([*SIGNAL_RUN, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("step 20/"):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"trainer.resume={tmp_path / 'run'}" in err
    stopped_at = load_checkpoint(list_checkpoints(tmp_path / "run")[0])["step"]
    assert 20 <= stopped_at < 1500
    assert not (tmp_path / "run" / "params.pt").exists()

    r = cli(*SIGNAL_RUN, f"hydra.run.dir={tmp_path / 'run'}", "trainer.resume=auto")
    assert r.returncode == 0, r.stderr
    r = cli(*SIGNAL_RUN, f"hydra.run.dir={tmp_path / 'straight'}")
    assert r.returncode == 0, r.stderr
    assert_same_run(tmp_path / "straight", tmp_path / "run", 1500)
    steps = [row["step"] for row in metrics_rows(tmp_path / "run")]
    assert steps == list(range(1, 1501))


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    """A model with a 40 MB parameter and a checkpoint every step: most of the time goes into
    writing, and the test kills the run once a temporary checkpoint file is seen."""
    run = tmp_path / "run"
    proc = _start(
        [
            "model=custom",
            "model.target=toy_models:BigParameter",
            "guide=model",
            "trainer.steps=1000",
            "trainer.checkpoint_every=1",
            "trainer.progress=none",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    deadline = time.monotonic() + 120
    killed_during_write = False
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = run / "checkpoints"
        if list_checkpoints(run) and ckpts.is_dir() and list(ckpts.glob(".step-*.tmp*")):
            proc.kill()
            killed_during_write = True
            break
        time.sleep(0.005)
    proc.communicate(timeout=60)
    assert killed_during_write
    assert proc.returncode == -signal.SIGKILL
    good = list_checkpoints(run)
    assert good, "no complete checkpoint"
    payload = load_checkpoint(good[0])
    assert payload["step"] >= 1
    summary = train(
        compose(
            [
                "model=custom",
                "model.target=toy_models:BigParameter",
                "guide=model",
                f"trainer.steps={payload['step'] + 2}",
                "trainer.progress=none",
                "trainer.resume=auto",
            ]
        ),
        run,
    )
    assert summary["resumed_from_step"] == payload["step"]
    assert not list((run / "checkpoints").glob(".step-*.tmp*"))  # the next write cleans up


# -- bad input writes nothing ----------------------------------------------------------------------


def test_bad_input_leaves_no_directory_behind(cli, tmp_path):
    r = cli("trainer.steps=0", cwd=tmp_path)
    assert r.returncode == 2
    assert list(tmp_path.iterdir()) == []
    r = cli(
        "--multirun", "optim.lr=0.01,-1", "trainer.steps=3", "trainer.progress=none", cwd=tmp_path
    )
    assert r.returncode == 2
    assert list(tmp_path.iterdir()) == []  # refused before job 0 ran


def test_bad_input_in_an_existing_run_dir_loses_nothing(cli, tmp_path):
    run = tmp_path / "run"
    r = cli("trainer.steps=5", "trainer.progress=none", f"hydra.run.dir={run}")
    assert r.returncode == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = cli("trainer.steps=5", "optim.lr=-1", "trainer.resume=auto", f"hydra.run.dir={run}")
    assert r.returncode == 2
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
