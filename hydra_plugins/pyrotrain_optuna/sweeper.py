"""A thin Hydra sweeper over current Optuna: one study in a database (a SQLite file unless
``storage`` names another SQLAlchemy URL), loaded if it exists, so a search that was stopped
resumes where it stopped and several processes can share one study; trials asked for
``n_jobs`` at a time and launched through Hydra's launcher; each trial told how its job ended:
complete with its objective, pruned, or failed (a job that diverged or failed returns NaN and
says why in its summary.json), so that no single trial ends the search.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from pyrotrain import search
from pyrotrain.console import screen
from pyrotrain.errors import PyrotrainError
from pyrotrain.io import write_text


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        direction: str = "minimize",
        study_name: str = "pyrotrain",
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: Any = None,
        pruner: Any = None,
        params: DictConfig | None = None,
        trial_id: int | None = None,  # set on each job's overrides, for the job; unused here
    ) -> None:
        if direction not in ("minimize", "maximize"):
            raise PyrotrainError(
                "the direction of the search",
                key="hydra.sweeper.direction",
                value=direction,
                choices=["minimize", "maximize"],
            )
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PyrotrainError(
                    "must be a positive integer", key=f"hydra.sweeper.{key}", value=value
                )
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler = sampler  # Hydra has instantiated the _target_ nodes already
        self.pruner = pruner
        self.params = params

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def _study(self, storage: Any) -> Any:
        import optuna
        from optuna.study import StudyDirection

        return optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            pruner=search.make_pruner(self.pruner),
            direction=StudyDirection[self.direction.upper()],
            load_if_exists=True,
        )

    def sweep(self, arguments: list[str]) -> None:
        from optuna.trial import TrialState

        params = {str(k): str(v) for k, v in (self.params or {}).items()}
        space, fixed = search.distributions(params)
        for line in arguments:  # the command line's overrides: sweeps join the space
            key, _, value = line.partition("=")
            more, kept = search.distributions({key: value})
            space.update(more)
            fixed += kept if not more else []
        url = search.storage_url(self.storage, self.sweep_dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # storage null: the study is in it
        storage = search.open_storage(url)
        study = self._study(storage)
        console = screen()
        done = search.trials_done(study)
        console.print(
            f"optuna study '{self.study_name}' in {url}: {done} of {self.n_trials} trials done"
            + (" (resuming)" if done else ""),
            highlight=False,
        )
        while (done := search.trials_done(study)) < self.n_trials:
            trials = [
                self._ask(study, space) for _ in range(min(self.n_jobs, self.n_trials - done))
            ]
            jobs = [
                [
                    *search.trial_overrides(t.params),
                    *fixed,
                    f"hydra.sweeper.trial_id={search.trial_id(storage, self.study_name, t.number)}",
                    f"hydra.sweep.subdir={t.number}",
                ]
                for t in trials
            ]
            assert self.launcher is not None
            try:
                returns = self.launcher.launch(jobs, initial_job_idx=trials[0].number)
            except BaseException:  # Ctrl-C, SIGTERM, exit 2: these trials run again on resume
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                numbers = {r.number for r in running}
                for t in trials:
                    if t.number in numbers:
                        t.set_user_attr(search.INTERRUPTED, True)
                        study.tell(t, state=TrialState.FAIL)
                raise
            for t, ret in zip(trials, returns, strict=True):
                self._tell(study, t, ret, console)
        self._results(study, url, console)

    def _ask(self, study: Any, space: dict[str, Any]) -> Any:
        from optuna.trial import TrialState

        trial = study.ask()
        try:
            search.suggest(trial, space)
        except ValueError as exc:  # a search space the stored study cannot take
            trial.set_user_attr(search.INTERRUPTED, True)
            study.tell(trial, state=TrialState.FAIL)
            raise PyrotrainError(
                f"study '{self.study_name}' in {self.storage or 'the sweep directory'} was run "
                f"with another search space, and Optuna cannot change it ({exc})",
                key="hydra.sweeper.params",
                value={k: str(v) for k, v in (self.params or {}).items()},
                hint="Keep the study's choices, or start a new study: "
                "hydra.sweeper.study_name=NEW_NAME",
            ) from None
        return trial

    def _tell(self, study: Any, trial: Any, ret: JobReturn, console: Any) -> None:
        from optuna.trial import TrialState

        if ret.status != JobStatus.COMPLETED:
            study.tell(trial, state=TrialState.FAIL)
            ret.return_value  # noqa: B018 -- raises the job's exception, as Hydra's sweepers do
        status = _job_status(ret)
        value = ret.return_value
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if status == search.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
            state = "pruned"
        elif finite:
            study.tell(trial, float(value))
            state = f"complete, value {float(value):.6g}"
        else:  # diverged, failed, or an objective that is not a number
            study.tell(trial, state=TrialState.FAIL)
            state = f"failed ({status})"
        console.print(f"optuna trial {trial.number}: {state}", highlight=False)

    def _results(self, study: Any, url: str, console: Any) -> None:
        """optimization_results.yaml in the sweep directory, from the trials that completed."""
        from optuna.trial import TrialState

        counts = search.counts(study)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.study_name,
            "storage": url,
            "direction": self.direction,
            "trials": counts,
        }
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = study.best_trial
            results.update(
                best_trial=best.number, best_params=dict(best.params), best_value=best.value
            )
            console.print(f"Best parameters: {best.params}", highlight=False)
            console.print(f"Best value: {best.value:.6g} (trial {best.number})", highlight=False)
        else:
            console.print("no trial of the study completed", highlight=False)
        console.print(
            f"study '{self.study_name}' in {url}: "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f"; to browse it: optuna-dashboard {url}",
            highlight=False,
        )
        write_text(
            self.sweep_dir / "optimization_results.yaml",
            OmegaConf.to_yaml(OmegaConf.create(results)),
        )


def _job_status(ret: JobReturn) -> str:
    """What the job's summary.json says: finished, pruned, diverged, failed."""
    assert ret.hydra_cfg is not None
    path = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) / "summary.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("status", "finished"))
    except (OSError, ValueError):
        return "failed"
