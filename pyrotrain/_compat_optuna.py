"""The one Optuna API pyrotrain uses that Optuna does not recommend: ``optuna.trial.Trial(study,
trial_id)``. A search's job runs in its own process (or a joblib worker) and must report to the
trial the sweeper asked for, so that the study's pruner can stop it; Optuna hands a ``Trial``
only to the process that asked (``study.ask``, ``study.optimize``), and its constructor is
documented but "not recommended". ``tests/test_compat.py`` fails when that constructor changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna


def running_trial(study: optuna.Study, trial_id: int) -> optuna.trial.Trial:
    """The running trial ``trial_id`` (the storage's id) of ``study``, to report to and ask
    ``should_prune``, in a process other than the one that asked for it."""
    import optuna

    return optuna.trial.Trial(study, trial_id)
