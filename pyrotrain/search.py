"""Optuna searches that last: a study in a database, its search space from Hydra's sweep syntax,
and the reporting that lets a pruner stop a hopeless trial.

The sweeper (``hydra_plugins/pyrotrain_optuna``) asks the study for trials and launches one job
per trial; each job finds its trial again from ``hydra.sweeper.trial_id`` and reports the
objective on every metrics row through :class:`TrialReporter`, a plain callable that the loop
calls without knowing what it is. Optuna is imported only where a search runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from ._compat_optuna import running_trial
from .errors import PyrotrainError

if TYPE_CHECKING:
    import optuna

PRUNED = "pruned"
# The metrics row's column that tracks each objective while training (eval.X: eval/X, when the
# run evaluates during training).
_ROW_KEY = {"smoothed_loss": "smoothed_loss", "final_loss": "loss"}


class TrialPruned(Exception):
    """The search's pruner stopped this trial: it was doing worse than earlier trials had done at
    the same step."""


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The study's SQLAlchemy URL: ``storage`` as given, or a SQLite file in the sweep
    directory when it is null."""
    if storage:
        return str(storage)
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def quiet_optuna() -> None:
    """Optuna's and Alembic's INFO lines (study created, trial finished, database migrations) go:
    pyrotrain prints its own one line per trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_storage(url: str, key: str = "hydra.sweeper.storage") -> optuna.storages.BaseStorage:
    """The study's storage, opened and checked: a URL that cannot be used is a user error."""
    import optuna

    quiet_optuna()
    try:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception:  # another process sharing the study may be creating its tables
            time.sleep(1.0)
            return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy's errors for bad URLs, missing drivers, unwritable files
        raise PyrotrainError(
            f"the Optuna storage cannot be opened ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            key=key,
            value=url,
            hint="Give a SQLAlchemy URL of a database you can write, e.g. sqlite:///optuna.db",
        ) from None


def make_pruner(node: Any) -> optuna.pruners.BasePruner:
    """``hydra.sweeper.pruner``: a ``_target_`` node (MedianPruner by default) or the pruner it
    made, null for none."""
    import optuna
    from hydra.utils import instantiate

    if node is None:
        return optuna.pruners.NopPruner()
    pruner = instantiate(node) if isinstance(node, (DictConfig, dict)) else node
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise PyrotrainError(
            "must name an Optuna pruner",
            key="hydra.sweeper.pruner._target_",
            value=OmegaConf.select(node, "_target_") if isinstance(node, DictConfig) else node,
            hint="e.g. optuna.pruners.MedianPruner, or hydra/sweeper/pruner=nop for none",
        )
    return pruner


def distributions(
    params: Mapping[str, str],
) -> tuple[dict[str, optuna.distributions.BaseDistribution], list[str]]:
    """Hydra's sweep syntax as Optuna distributions: ``choice(a, b)`` is categorical,
    ``interval(lo, hi)`` uniform (``tag(log, interval(lo, hi))`` log-uniform; integer bounds give
    integers), ``range(start, stop, step)`` integers from start below stop. Anything that is not a
    sweep is a fixed override, returned as given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import (
        ChoiceSweep,
        IntervalSweep,
        RangeSweep,
        Transformer,
    )
    from optuna.distributions import (
        BaseDistribution,
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    def categorical(override: Any, name: str) -> CategoricalDistribution:
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if any(isinstance(c, (list, dict)) for c in choices):
            raise PyrotrainError(
                "an Optuna choice takes single values (numbers, strings, null)",
                key=f"hydra.sweeper.params.{name}",
                value=override.get_value_element_as_str(),
            )
        return CategoricalDistribution(cast(list[str | int | float | bool | None], choices))

    lines = [f"{k}={v}" for k, v in params.items()]
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in OverridesParser.create().parse_overrides(lines):
        name = override.get_key_element()
        value = override.value()
        if not override.is_sweep_override():
            fixed.append(override.input_line or f"{name}={override.get_value_element_as_str()}")
        elif isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            space[name] = categorical(override, name)
        elif isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step
            assert start is not None and stop is not None
            if all(isinstance(x, int) for x in (start, stop, step)):
                last = start + step * ((stop - 1 - start) // step)
                space[name] = IntDistribution(int(start), int(last), step=int(step))
            else:
                space[name] = categorical(override, name)
        elif isinstance(value, IntervalSweep):
            lo, hi, log = value.start, value.end, "log" in value.tags
            assert lo is not None and hi is not None
            if isinstance(lo, int) and isinstance(hi, int):
                space[name] = IntDistribution(lo, hi, log=log)
            else:
                space[name] = FloatDistribution(float(lo), float(hi), log=log)
        else:
            raise PyrotrainError(
                "an Optuna search takes choice(...), range(...) or interval(...) "
                "(tag(log, interval(...)) for a log scale)",
                key=f"hydra.sweeper.params.{name}",
                value=override.get_value_element_as_str(),
            )
    return space, fixed


def objective_column(objective: str) -> str:
    """The metrics row's column that tracks ``trainer.objective`` during training."""
    if objective in _ROW_KEY:
        return _ROW_KEY[objective]
    return "eval/" + objective.removeprefix("eval.")


class TrialReporter:
    """Reports a job's objective to its Optuna trial on every metrics row and raises
    :class:`TrialPruned` when the study's pruner says the trial is hopeless. The loop calls it
    with each row; it is the only place a training job talks to Optuna."""

    def __init__(self, trial: optuna.trial.Trial, column: str):
        self.trial = trial
        self.column = column

    def __call__(self, row: Mapping[str, Any]) -> None:
        value = row.get(self.column)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return  # nothing to compare yet (a smoothed loss before its first finite step)
        step = int(row["step"])
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise TrialPruned(
                f"pruned at step {step}: {self.column} {value:.6g} was worse than the "
                "study's earlier trials at that step (hydra.sweeper.pruner)."
            )


def trial_reporter(sweeper: DictConfig, sweep_dir: str, objective: str) -> TrialReporter | None:
    """The reporter for a job of an Optuna search (``hydra.sweeper.trial_id`` set), else None."""
    trial_id = sweeper.get("trial_id")
    if trial_id is None:
        return None
    import optuna

    storage = open_storage(storage_url(sweeper.get("storage"), sweep_dir))
    study = optuna.load_study(
        study_name=sweeper.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # a job never samples: the sweeper did
        pruner=make_pruner(sweeper.get("pruner")),
    )
    trial = running_trial(study, int(trial_id))
    return TrialReporter(trial, objective_column(objective))


def suggest(trial: optuna.trial.Trial, space: Mapping[str, Any]) -> None:
    """Each parameter of ``space`` suggested for ``trial`` through its public ``suggest_*``
    method (what ``study.ask(fixed_distributions)`` does, except that a space the stored study
    cannot take raises here, where the caller holds the trial to tell it failed)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, FloatDistribution):
            trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        else:
            raise TypeError(f"no suggest method for {d!r} ({name})")


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of the study: what a job needs to find its trial."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's sampled values as Hydra overrides."""
    return [f"{k}={_override_value(v)}" for k, v in params.items()]


def _override_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, waiting)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.state.name.lower()
        out[name] = out.get(name, 0) + 1
    return out


INTERRUPTED = "pyrotrain_interrupted"  # user attribute of a trial whose search was stopped


def trials_done(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: complete, pruned and failed ones, less those failed
    because their search was stopped (Ctrl-C, SIGTERM), which a resumed search runs again."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=states)
        if not t.user_attrs.get(INTERRUPTED)
    )
