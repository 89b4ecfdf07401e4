"""The ``pyrotrain`` command as a subprocess: outputs on disk, determinism, help, bad input."""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import BIN, metrics_rows, run_summary, saved_params


def test_run_writes_outputs_and_loss_falls(cli, tmp_path):
    run_dir = tmp_path / ("a-long-directory-name-" * 4) / "run"
    r = cli("trainer.steps=100", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    # Piped output is never hard-wrapped: the long path stays on its line.
    assert "final loss" in r.stdout and f"\nrun dir: {run_dir}\n" in r.stdout
    # Not a terminal: plain progress lines rather than a bar.
    assert "step 100/100" in r.stdout
    for name in ("metrics.jsonl", "params.pt", "summary.json", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name

    rows = metrics_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(10, 101, 10))
    for key in ("loss", "lr/all", "grad_norm/all", "time", "samples_per_s", "smoothed_loss"):
        assert key in rows[0], key
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"]

    summary = run_summary(run_dir)
    assert summary["steps"] == 100 and summary["world_size"] == 1
    assert summary["status"] == "finished"
    assert summary["final_loss"] == pytest.approx(summary["final_loss"])  # finite
    assert set(summary["versions"]) >= {"pyrotrain", "pyro", "torch"}
    assert summary["eval"]["rmse"] > 0

    store = pyro.get_param_store()
    store.load(run_dir / "params.pt")
    assert "AutoNormal.locs.weight" in store.keys()


def test_same_seed_gives_bitwise_identical_params(cli, tmp_path):
    runs = []
    for name in ("a", "b"):
        r = cli("trainer.steps=30", "seed=3", f"hydra.run.dir={tmp_path / name}")
        assert r.returncode == 0, r.stderr
        runs.append(tmp_path / name)
    a, b = (saved_params(run) for run in runs)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (runs[0] / "params.pt").read_bytes() == (runs[1] / "params.pt").read_bytes()
    r = cli("trainer.steps=30", "seed=4", f"hydra.run.dir={tmp_path / 'c'}")
    c = saved_params(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_help_lists_groups_and_cfg_prints_config(cli):
    r = cli("--help")
    assert r.returncode == 0
    for line in (
        "optim: adagrad_rmsprop, adagrad_rmsprop_sparse, adam, clipped_adam, dct_adam, multi, sgd",
        "scheduler: cosine, exponential, none, plateau, step, warmup_cosine",
        "guide: auto_delta",
    ):
        assert line in r.stdout
    r = cli("--cfg", "job", "optim=dct_adam")
    assert r.returncode == 0
    assert "name: dct_adam" in r.stdout and "plate: time" in r.stdout


BAD_INPUTS = [
    (["trainer.steps=abc"], ["trainer.steps", "'abc'", "integer"]),
    (
        ["model=nope"],
        ["'model'", "'nope'", "Valid choices: custom, hierarchical, neural, regression"],
    ),
    (["trainer.device=tpu"], ["trainer.device", "'tpu'", "Valid choices: cpu, cuda, auto"]),
    (["trainer.steps=0"], ["trainer.steps", "at least 1"]),
    (
        ["distributed.backward_passes_per_step=2"],
        ["'distributed.backward_passes_per_step'", "now trainer.accumulate_grad_batches"],
    ),
    (["scheduler=step", "scheduler.gamma=abc"], ["'scheduler.gamma'", "'abc'", "number"]),
    (["scheduler=step", "scheduler.step_size=-5"], ["'scheduler.step_size'", "at least 1"]),
    (["model=sparse", "scheduler=cosine"], ["adagrad_rmsprop's step size is 'eta'"]),
    (["elbo.num_particles=0"], ["'elbo.num_particles'", "at least 1"]),
    (["model=custom", "model.target=math:pi"], ["must name a class or a function"]),
    (["seed=4294967296"], ["'seed'", "at most 4294967295"]),
    (["model=custom", "model.target=bad_models:NeedsAnArgument"], ["+model.required=VALUE"]),
    (["model=custom", "model.target=os:getcwd"], ["created no Pyro parameter"]),
    (["optim.lr=-1"], ["optim.groups.all.optimizer.lr", "-1", "positive"]),
    (["optim.lr=fast"], ["optim.groups.all.optimizer.lr", "'fast'", "positive number"]),
    (
        ["optim.groups.all.optimizer.name=adamz"],
        ["optim.groups.all.optimizer.name", "'adamz'", "Valid choices: adagrad_rmsprop"],
    ),
    (
        ["+optim.groups.all.optimizer.bogus=1"],
        ["optim.groups.all.optimizer.bogus", "Valid choices: lr, betas"],
    ),
    (["scheduler=cosinus"], ["'scheduler'", "'cosinus'", "warmup_cosine"]),
    (["trainer.batch_size=100000"], ["trainer.batch_size", "100000", "354 rows"]),
    (["optim.groups.all.params=[nothing]"], ["AutoNormal.locs.bias", "matches no group"]),
    (["trainer.nonsense=1"], ["trainer.nonsense", "+"]),
    (["trainer.steps=[1"], ["trainer.steps=[1", "parse"]),
    (["model=custom"], ["model.target", "required"]),
    (["model=custom", "model.target=no_such_module:Model"], ["model.target", "no_such_module"]),
    (["trainer.batch_size=-5"], ["trainer.batch_size", "-5", "at least 1"]),
    (["trainer.dtype=float16"], ["trainer.dtype", "float32, float64"]),
    (["trainer.smoothing=1.5"], ["trainer.smoothing", "less than 1"]),
    (["trainer.nan_policy=ignore"], ["trainer.nan_policy", "stop, skip, reduce_lr"]),
    (["+trainer.nonsense=1"], ["trainer.nonsense", "not a trainer setting", "steps, epochs"]),
    (["seed=-1"], ["'seed'", "-1", "non-negative"]),
    (["optim.lr=0"], ["optim.groups.all.optimizer.lr", "positive"]),
    (
        ["data=csv", "data.path=missing.csv", "data.target=y"],
        ["data.path", "'missing.csv'", "does not exist"],
    ),
    (["trainer.resume=/no/such/run"], ["trainer.resume", "no such file or directory"]),
    (["trainer.resume={tmp}/corrupt.pt"], ["corrupt.pt cannot be read", "corrupt or truncated"]),
]


@pytest.mark.parametrize("args,expected", BAD_INPUTS, ids=[a[0][-1] for a in BAD_INPUTS])
def test_bad_input_exits_2_with_one_paragraph(cli, tmp_path, args, expected):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    args = [a.format(tmp=tmp_path) for a in args]
    r = cli(*args, "trainer.progress=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    message = r.stderr.strip()
    assert message.startswith("error:")
    assert "\n\n" not in message
    for text in expected:
        assert text in message, (text, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt"]  # nothing written


def test_full_error_env_shows_traceback(cli):
    r = cli("trainer.device=tpu", env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "PyrotrainError" in r.stderr


def test_multi_stack_logs_each_groups_lr_and_grad_norm(cli, tmp_path):
    run_dir = tmp_path / "run"
    r = cli(
        "optim=multi",
        "model=custom",
        "model.target=toy_models:NetRegression",
        "data=synthetic_regression",
        "data.size=500",
        "trainer.steps=20",
        f"hydra.run.dir={run_dir}",
    )
    assert r.returncode == 0, r.stderr
    row = metrics_rows(run_dir)[-1]
    assert row["lr/locs"] == 0.01 and row["lr/scales"] == 0.001 and row["lr/weights"] == 0.001
    assert {"grad_norm/locs", "grad_norm/scales", "grad_norm/weights"} <= set(row)
    groups = run_summary(run_dir)["groups"]
    assert groups["weights"]["params"] == 4 and groups["locs"]["optimizer"] == "adam"
    assert groups["scales"]["optimizer"] == "sgd"


def test_scheduler_from_cli_changes_lr(cli, tmp_path):
    run_dir = tmp_path / "run"
    r = cli("scheduler=cosine", "trainer.steps=40", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    lrs = [row["lr/all"] for row in metrics_rows(run_dir)]
    assert lrs[0] < 0.01 and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert lrs == sorted(lrs, reverse=True)


def test_list_command_shows_registries():
    import subprocess

    exe = BIN / "pyrotrain-list"
    r = subprocess.run([str(exe)], capture_output=True, text=True, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for name in (
        "adagrad_rmsprop",
        "dct_adam",
        "cosine_warm_restarts",
        "warmup",
        "regression",
        "auto_normal",
        "trace_meanfield",
        "diabetes",
    ):
        assert name in r.stdout
    r = subprocess.run([str(exe), "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "optimizers" in r.stderr


def test_users_own_model_file_and_csv_through_the_cli(cli, tmp_path):
    (tmp_path / "my_models.py").write_text(
        "import pyro, pyro.distributions as dist, torch\n"
        "class Line:\n"
        "    def __init__(self, data):\n"
        "        self.features = data.train['x'].shape[-1]\n"
        "    def __call__(self, x, y=None, index=None, size=None):\n"
        "        w = pyro.sample('w', dist.Normal(torch.zeros(self.features), 1.0).to_event(1))\n"
        "        with pyro.plate('data', size, subsample=index):\n"
        "            pyro.sample('obs', dist.Normal(x @ w, 0.5), obs=y)\n"
        "def broken(x, y=None):\n"
        "    raise ValueError('my model cannot handle this')\n"
    )
    rows = ["a,b,target"] + [
        f"{i / 10},{(i % 7) / 7},{0.3 * i / 10 - (i % 7) / 7}" for i in range(60)
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    common = [
        "data=csv",
        "data.path=data.csv",
        "data.target=target",
        "trainer.steps=40",
        "trainer.batch_size=16",
    ]
    r = cli(
        "model=custom", "model.target=my_models:Line", *common, "hydra.run.dir=run", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert run_summary(tmp_path / "run")["steps"] == 40
    # A model that fails on its first batch: its own message, exit 2, no traceback.
    r = cli(
        "model=custom", "model.target=my_models:broken", *common, "hydra.run.dir=run2", cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert "my model cannot handle this" in r.stderr and "Traceback" not in r.stderr
    assert "first batch" in r.stderr


def test_a_users_broken_module_and_an_uncreatable_run_dir_get_one_paragraph(cli, tmp_path):
    (tmp_path / "broken.py").write_text("import pyro\n\ndef Model(:\n    pass\n")
    (tmp_path / "confs").mkdir()
    (tmp_path / "confs" / "broken.yaml").write_text("defaults: [config, _self_]\nsteps: [1, 2\n")
    (tmp_path / "confs" / "bare.yaml").write_text("seed: 5\n")  # no defaults list
    confs = str(tmp_path / "confs")
    cases = [
        (["model=custom", "model.target=broken:Model"], ["syntax error", "broken.py, line 3"]),
        (["hydra.run.dir=/proc/pyrotrain/run"], ["'hydra.run.dir'", "cannot be created"]),
        (
            ["--config-dir", confs, "--config-name", "broken"],
            ["broken.yaml, line 3, column 1 is not valid YAML", "expected ',' or ']'"],
        ),
        (
            ["--config-path", confs, "--config-name", "broken"],
            ["broken.yaml, line 3, column 1 is not valid YAML"],
        ),
        (
            ["--config-path", confs, "--config-name", "bare"],
            ["no model, data, optim, trainer section", "defaults: [config, _self_]"],
        ),
    ]
    for args, expected in cases:
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
        message = r.stderr.strip()
        assert message.startswith("error:") and "\n\n" not in message
        for text in expected:
            assert text in message, (text, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.py", "confs"]  # nothing written
