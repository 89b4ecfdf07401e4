"""The shape the code promises: one step-size key, one validation path, accumulation in one
process, distribution kept inside its backends, settings documented from the code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import yaml
from helpers import QUICK, one_group
from omegaconf import open_dict

import pyrotrain
from pyrotrain.build import _scaled_rates
from pyrotrain.config import parse_config, trainer_defaults
from pyrotrain.errors import PyrotrainError
from pyrotrain.loop import train
from pyrotrain.optim import OptimizerStack
from pyrotrain.registry import OPTIMIZERS, rate_key

ROOT = Path(__file__).resolve().parent.parent


# -- one step-size key -----------------------------------------------------------------------------


def test_reduce_lr_lowers_eta_of_an_adagrad_rmsprop_group():
    cfg = pyrotrain.compose(
        [
            *QUICK,
            "model=custom",
            "model.target=toy_models:GoesNonFinite",
            "guide=model",
            "trainer.steps=12",
            "+model.nan_grad_at=[3,6]",
            "trainer.nan_policy=reduce_lr",
            "trainer.nan_lr_factor=0.1",
        ]
    )
    with open_dict(cfg):
        cfg.optim.groups = {
            "a": {"params": ["a"], "optimizer": {"name": "adam", "lr": 0.1}},
            "b": {"params": ["b"], "optimizer": {"name": "adagrad_rmsprop", "eta": 0.5}},
        }
    summary = train(cfg)
    assert summary["skipped_steps"] == 2
    assert summary["lr"] == {"a": pytest.approx(0.1), "b": pytest.approx(0.005)}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_registered_optimizers_rate_is_read_scaled_and_scheduled_or_refused(name):
    rate = rate_key(name)
    assert rate in ("lr", "eta"), (name, rate)
    scheduler = {"name": "exponential", "gamma": 0.5}
    if rate != "lr":
        with pytest.raises(PyrotrainError, match=f"step size is '{rate}'.*scheduler: none"):
            OptimizerStack.from_config(one_group(name, **{rate: 0.2}), scheduler)
        scheduler = None
    stack = OptimizerStack.from_config(one_group(name, **{rate: 0.2}), scheduler)
    assert stack.lrs() == {"all": pytest.approx(0.2)}  # before any parameter exists
    p = pyro.param("w", torch.ones(3)).unconstrained()
    p.grad = torch.ones(3)
    stack({p})
    optimizer = stack.groups[0].optimizer
    assert optimizer.param_groups[0][rate] == pytest.approx(0.2)
    stack.scale_lr(["all"], 0.5)
    assert optimizer.param_groups[0][rate] == pytest.approx(0.1)
    assert stack.lrs() == {"all": pytest.approx(0.1)}
    if scheduler is not None:
        stack.step()  # the schedule goes on from the scaled rate
        assert stack.lrs() == {"all": pytest.approx(0.05)}


def test_lr_scaling_multiplies_every_groups_step_size_or_its_default():
    cfg = parse_config(
        pyrotrain.compose(
            [
                "optim=multi",
                "optim.groups.locs.optimizer.name=adagrad_rmsprop",
                "~optim.groups.locs.optimizer.lr",
                "+optim.groups.locs.optimizer.eta=0.5",
                "+optim.groups.scales.frozen=true",
                "~optim.groups.weights.optimizer.lr",  # torch's default 0.001
            ]
        )
    )
    args = {s.name: s.optimizer_args for s in _scaled_rates(cfg, 4.0)}
    assert args["locs"]["eta"] == pytest.approx(2.0)
    assert args["scales"]["lr"] == 0.001  # frozen: untouched
    assert args["weights"]["lr"] == pytest.approx(0.004)
    assert {s.name: s.optimizer_args for s in cfg.groups}["locs"]["eta"] == 0.5  # not in place


# -- gradient accumulation ---------------------------------------------------------------------


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_two_accumulated_batches_equal_one_batch_of_twice_the_rows():
    """SGD on AutoDelta (no sampling): 2 passes of 50 rows = 1 pass of the same 100 rows."""
    base = [
        *QUICK,
        "data=synthetic_regression",
        "data.size=1000",  # 800 training rows: whole batches of 50 and 100 in every epoch
        "guide=auto_delta",
        "optim=sgd",
        "optim.lr=1e-5",
        "trainer.dtype=float64",
        "trainer.steps=20",  # two epochs
    ]
    train(pyrotrain.compose([*base, "trainer.batch_size=50", "trainer.accumulate_grad_batches=2"]))
    accumulated = _params()
    train(pyrotrain.compose([*base, "trainer.batch_size=100"]))
    big = _params()
    train(pyrotrain.compose([*base, "trainer.batch_size=50"]))
    small = _params()
    assert max((accumulated[k] - big[k]).abs().max().item() for k in big) < 1e-6
    assert max((small[k] - big[k]).abs().max().item() for k in big) > 1e-4  # tellable apart


def test_backward_passes_per_step_names_its_new_home():
    with pytest.raises(PyrotrainError, match="now trainer.accumulate_grad_batches"):
        parse_config(pyrotrain.compose(["+distributed.backward_passes_per_step=2"]))


# -- one validation path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.steps=abc", "'trainer.steps': 'abc'"),
        ("seed=4294967296", "Must be at most 4294967295"),
        ("scheduler=step scheduler.gamma=abc", "'scheduler.gamma': 'abc'"),
        ("scheduler=step scheduler.step_size=-5", "'scheduler.step_size': -5"),
        ("scheduler=plateau scheduler.factor=0", "'scheduler.factor': 0"),
        ("+optim.groups.all.optimizer.betaz=1", "takes no argument 'betaz'"),
        ("+optim.groups.all.clip.norm=-1", "'optim.groups.all.clip.norm': -1"),
        ("distributed.op=max", "Valid choices: average, sum, adasum"),
        ("model=custom model.target=math:pi", "must name a class or a function"),
    ],
)
def test_bad_values_are_refused_when_parsed_before_anything_is_built(override, expected):
    cfg = pyrotrain.compose(override.split())
    with pytest.raises(PyrotrainError) as e:
        parse_config(cfg)
    assert expected in str(e.value)


def test_trainer_yaml_lists_every_setting_with_the_codes_default():
    text = (ROOT / "conf" / "trainer" / "default.yaml").read_text()
    assert yaml.safe_load(text) == trainer_defaults()


def test_settings_tables_in_the_docs_are_generated_from_the_code():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_tables.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


# -- distribution stays in its backends --------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def test_only_the_horovod_backend_imports_horovod():
    package = ROOT / "pyrotrain"
    for path in package.rglob("*.py"):
        if path.name == "horovod.py" and path.parent.name == "distributed":
            continue
        imported = _imports(path)
        assert not any(n.split(".")[0] == "horovod" for n in imported), path
        if path.name in ("cli.py", "loop.py", "build.py"):
            engines = ("horovod", ".single", "distributed.torch")
            assert not any(e in n for e in engines for n in imported), path


def test_only_the_torch_backend_imports_torch_distributed():
    for path in (ROOT / "pyrotrain").rglob("*.py"):
        if path.name == "torch.py" and path.parent.name == "distributed":
            continue
        assert not any(n.startswith("torch.distributed") for n in _imports(path)), path


def test_only_search_and_tracking_import_optuna_and_mlflow():
    """The loop reports to a sweeper and a tracker without knowing either: Optuna lives in
    search.py (and the Hydra plugin, and the shim of the one Optuna API it does not recommend),
    MLflow in tracking.py."""
    allowed = {
        "optuna": {"search.py", "sweeper.py", "_compat_optuna.py"},
        "mlflow": {"tracking.py"},
    }
    for path in [*(ROOT / "pyrotrain").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]:
        imported = {n.split(".")[0] for n in _imports(path)}
        for package, files in allowed.items():
            if package in imported:
                assert path.name in files, (path, package)
    assert (ROOT / "hydra_plugins").is_dir() and not (
        ROOT / "hydra_plugins" / "__init__.py"
    ).exists()


def test_a_backend_module_is_all_an_engine_needs():
    from pyrotrain.distributed import Backend, base

    assert base.engine_modules() == ["horovod", "single", "torch"]
    for module_name in base.engine_modules():
        module = base._module(module_name)
        for attr in ("NAME", "LAUNCH_VARS", "Settings", "create", "share_start_time"):
            assert hasattr(module, attr), (module_name, attr)
        assert (ROOT / "conf" / "distributed" / f"{module.NAME}.yaml").exists()
    backend = base.create_backend(base.parse_distributed("none"))
    assert isinstance(backend, Backend)


# -- no import cycle inside pyrotrain --------------------------------------------------------------


def _package_modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name. ``pyrotrain.models`` lives in
    models/ (package-dir); the untracked pyrotrain/models and pyrotrain/conf links are skipped so
    nothing is counted twice."""
    modules = {}
    for package, root in (("pyrotrain", ROOT / "pyrotrain"), ("pyrotrain.models", ROOT / "models")):
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root)
            if package == "pyrotrain" and relative.parts[0] in ("models", "conf"):
                continue
            parts = [package, *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _internal_imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Every pyrotrain module ``name`` imports, wherever the statement sits (module level, in a
    function, under TYPE_CHECKING), with the line of its first import. A package counts as its
    ``__init__`` only; ``from pkg import sub`` counts as importing the submodule ``pkg.sub``."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in modules else source)
        for target in targets:
            if target in modules and target != name:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_sees_relative_function_level_and_submodule_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\nfrom ..top import X\n")
    (package / "sub" / "leaf.py").write_text("def f():\n    from pkg.sub import leaf, Y\n")
    (package / "top.py").write_text("if False:\n    import pkg.sub.leaf\n")
    modules = {"pkg": package, "pkg.sub": package / "sub", "pkg.sub.leaf": 0, "pkg.top": 0}
    init = package / "sub" / "__init__.py"
    assert _internal_imports("pkg.sub", init, modules) == {"pkg.sub.leaf": 1, "pkg.top": 2}
    leaf = package / "sub" / "leaf.py"
    assert _internal_imports("pkg.sub.leaf", leaf, modules) == {"pkg.sub": 2}
    assert _internal_imports("pkg.top", package / "top.py", modules) == {"pkg.sub.leaf": 2}


def test_no_import_cycle_inside_pyrotrain():
    modules = _package_modules()
    assert "pyrotrain.models.timeseries" in modules and "pyrotrain.distributed.base" in modules
    imports = {name: _internal_imports(name, path, modules) for name, path in modules.items()}
    cycles = _cycles({name: set(found) for name, found in imports.items()})
    report = []
    for cycle in cycles:
        report.append(" <-> ".join(cycle))
        for name in cycle:
            where = modules[name].relative_to(ROOT)
            report += [
                f"    {where}:{line} imports {other}"
                for other, line in sorted(imports[name].items())
                if other in cycle
            ]
    assert not cycles, "import cycles inside pyrotrain:\n" + "\n".join(report)
