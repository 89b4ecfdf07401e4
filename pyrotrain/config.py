"""The composed config, parsed once into a typed :class:`RunConfig` before anything is built.

Every section is a frozen dataclass checked by :func:`pyrotrain.schema.parse`: ``trainer`` here,
``optim`` and schedulers in :mod:`pyrotrain.optim.spec`, ``distributed`` by its engine's
``Settings``; ``model``, ``data``, ``guide``, ``elbo`` and ``logger`` name a registered thing and
pass the rest of their keys to it. Anything a user can get wrong fails here, with a message that
names the key, the value and the valid choices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from .distributed.base import DistributedConfig, parse_distributed
from .errors import PyrotrainError
from .optim.spec import DCTMark, GroupSpec, OptimConfig, SchedulerSpec, group_specs
from .registry import DATASETS, ELBOS, GUIDES, MODELS, check_kwargs, import_object
from .schema import Named, coerce, parse, parse_named, setting, to_plain

LOGGERS = ("jsonl", "csv", "tensorboard", "mlflow")
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
SEED_HELP = "a non-negative integer; seeds torch, numpy, random and the minibatch order"


@dataclass(frozen=True)
class EarlyStopping:
    """The ``trainer.early_stopping`` section: what to watch, and when to give up."""

    SECTION = "trainer.early_stopping"

    monitor: str | None = setting(
        "smoothed_loss, or eval/METRIC (needs trainer.eval_every); null: no early stopping and "
        "no checkpoints/best.pt",
        default=None,
    )
    mode: Literal["min", "max"] = setting(
        "min: lower is better (loss, rmse, mae); max: higher is better (lppd, accuracy)",
        default="min",
    )
    patience: int = setting(
        "checks of the monitor (logging steps for smoothed_loss, evaluations for eval/*) "
        "without improvement before the run stops",
        default=5,
        minimum=1,
    )
    min_delta: float = setting(
        "how much better than the best so far a value must be to count as an improvement",
        default=0.0,
        minimum=0,
    )

    def check(self, key: str) -> None:
        m = self.monitor
        if m is not None and m != "smoothed_loss" and not (m.startswith("eval/") and m[5:]):
            raise PyrotrainError(
                "the monitor is smoothed_loss or eval/METRIC (a key of the model's evaluate)",
                key=f"{key}.monitor",
                value=m,
                choices=["smoothed_loss", "eval/METRIC"],
            )

    def improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return (
            value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta
        )


@dataclass(frozen=True)
class TrainerConfig:
    """The ``trainer`` section (conf/trainer/default.yaml lists the same defaults)."""

    steps: int | None = setting("number of optimizer steps", default=1000, minimum=1)
    epochs: int | None = setting(
        "number of passes over the data; when set, overrides steps", default=None, minimum=1
    )
    batch_size: int | None = setting(
        "rows per minibatch (per rank); null means the full data", default=100, minimum=1
    )
    accumulate_grad_batches: int = setting(
        "minibatches whose gradients are averaged before each optimizer step and allreduce; "
        "steps still counts optimizer steps",
        default=1,
        minimum=1,
    )
    device: Literal["cpu", "cuda", "auto"] = setting(
        "where tensors live; auto picks cuda when available", default="cpu"
    )
    dtype: Literal["float32", "float64"] = setting(
        "floating-point precision of data and parameters", default="float32"
    )
    log_every: int = setting(
        "steps between metrics rows and plain progress lines", default=10, minimum=1
    )
    progress: Literal["auto", "bar", "plain", "none"] = setting(
        "auto: a progress bar on a terminal, plain lines otherwise", default="auto"
    )
    smoothing: float = setting(
        "weight of the past in the exponentially smoothed loss", default=0.9, minimum=0, below=1
    )
    objective: str = setting(
        "what a run returns to a sweeper: smoothed_loss, final_loss, eval.<metric>, or best (the "
        "best value of trainer.early_stopping.monitor)",
        default="smoothed_loss",
    )
    eval_num_samples: int = setting(
        "posterior samples drawn for the held-out evaluation", default=100, minimum=1
    )
    eval_every: int | None = setting(
        "steps between held-out evaluations during training (eval/METRIC in metrics.jsonl, "
        "eval.png); null: only at the end",
        default=None,
        minimum=1,
    )
    early_stopping: EarlyStopping = setting(
        "stop when the monitor stops improving; keep the best state in checkpoints/best.pt "
        "(see the table below)",
        default_factory=EarlyStopping,
    )
    checkpoint_every: int | None = setting(
        "steps between checkpoints in checkpoints/ (one is always written at the end); "
        "null: only the end",
        default=500,
        minimum=1,
    )
    keep_checkpoints: int = setting(
        "how many of the newest checkpoints to keep", default=3, minimum=1
    )
    resume: str | None = setting(
        "a run directory or checkpoint file to continue from, or auto (this run directory's "
        "newest readable checkpoint, if any)",
        default=None,
    )
    nan_policy: Literal["stop", "skip", "reduce_lr"] = setting(
        "on a non-finite loss or gradient: stop (exit 1, checkpoints kept), skip the step, or "
        "skip it and reduce_lr of the groups at fault",
        default="stop",
    )
    max_bad_steps: int = setting(
        "skip and reduce_lr stop after this many non-finite steps in a row", default=10, minimum=1
    )
    nan_lr_factor: float = setting(
        "what reduce_lr multiplies the step size of the groups at fault by",
        default=0.5,
        minimum=0,
        exclusive=True,
        below=1,
    )

    def check(self, key: str) -> None:
        if self.steps is None and self.epochs is None:
            raise PyrotrainError(
                "set trainer.steps or trainer.epochs", key=f"{key}.steps", value=None
            )
        monitor = self.early_stopping.monitor
        if monitor is not None and monitor.startswith("eval/") and self.eval_every is None:
            raise PyrotrainError(
                f"the monitor {monitor} is an evaluation during training, and there is none",
                key=f"{key}.early_stopping.monitor",
                value=monitor,
                hint="Set trainer.eval_every=N too, or monitor smoothed_loss",
            )
        objective = self.objective
        if objective == "best":
            if monitor is None:
                raise PyrotrainError(
                    "objective=best is the best value of the early-stopping monitor, and none "
                    "is set",
                    key=f"{key}.objective",
                    value=objective,
                    hint="Set trainer.early_stopping.monitor=smoothed_loss (or eval/METRIC)",
                )
        elif objective not in ("smoothed_loss", "final_loss") and not (
            objective.startswith("eval.") and len(objective) > len("eval.")
        ):
            raise PyrotrainError(
                "a run returns one number from its summary to a sweeper",
                key=f"{key}.objective",
                value=objective,
                choices=[
                    "smoothed_loss",
                    "final_loss",
                    "eval.<metric> (e.g. eval.rmse)",
                    "best (the early-stopping monitor's best value)",
                ],
            )


@dataclass(frozen=True)
class MlflowConfig:
    """``logger.mlflow`` (conf/logger/mlflow.yaml)."""

    SECTION = "logger.mlflow"

    tracking_uri: str = setting(
        "where runs are recorded: a SQLite file, a directory, or an MLflow server's URL",
        default="sqlite:///mlflow.db",
    )
    experiment_name: str = setting("the MLflow experiment runs go to", default="pyrotrain")
    run_name: str | None = setting("the run's name; null: its run directory", default=None)


@dataclass(frozen=True)
class LoggerConfig:
    """The ``logger`` section: which metrics sinks a run writes to besides metrics.jsonl."""

    names: tuple[str, ...] = ("jsonl",)
    mlflow: MlflowConfig | None = None


def parse_loggers(node: Any, key: str = "logger") -> LoggerConfig:
    """``logger``: a name (``csv``), a list of names, ``{name: csv}`` (older configs), or the
    mapping that ``logger=[csv,mlflow]`` composes (``{csv: {}, mlflow: {...}}``)."""
    if node is None:
        node = {}
    if isinstance(node, str):
        node = {node: {}}
    elif isinstance(node, list):
        node = {n: {} for n in node}
    elif isinstance(node, dict) and isinstance(node.get("name"), str):
        node = {node["name"]: {k: v for k, v in node.items() if k != "name"}}
    if not isinstance(node, dict):
        raise PyrotrainError(
            "must name one metrics logger or a list of them", key=key, value=node, choices=LOGGERS
        )
    for name, settings in node.items():
        if name not in LOGGERS:
            raise PyrotrainError("unknown metrics logger", key=key, value=name, choices=LOGGERS)
        if name != "mlflow" and settings not in (None, {}):
            raise PyrotrainError(
                f"the {name} logger has no settings", key=f"{key}.{name}", value=settings
            )
    mlflow = None
    if "mlflow" in node:
        mlflow = parse(MlflowConfig, node["mlflow"], f"{key}.mlflow")
    return LoggerConfig(names=tuple(node), mlflow=mlflow)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is built from, checked. ``plain`` is the resolved config as plain
    Python (saved in checkpoints, compared on resume)."""

    model: Named
    data: Named
    guide: Named
    elbo: Named
    groups: list[GroupSpec]
    dct_marks: list[DCTMark]
    distributed: DistributedConfig
    trainer: TrainerConfig
    seed: int
    logger: LoggerConfig
    plain: dict[str, Any]


TOP_LEVEL_KEYS = (
    "model",
    "data",
    "guide",
    "elbo",
    "optim",
    "scheduler",
    "distributed",
    "trainer",
    "seed",
    "logger",
)


def parse_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Check a composed config (what ``pyrotrain.compose`` or Hydra gives) and type it."""
    plain = to_plain(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg), "config")
    for key in plain:
        if key not in TOP_LEVEL_KEYS:
            raise PyrotrainError(
                f"'{key}' is not a pyrotrain setting",
                key=str(key),
                value=plain[key],
                choices=TOP_LEVEL_KEYS,
            )
    missing = [k for k in ("model", "data", "optim", "trainer") if k not in plain]
    if missing:
        raise PyrotrainError(
            f"the config has no {', '.join(missing)} section",
            key=missing[0],
            hint="A config file of your own (--config-name) builds on pyrotrain's: begin it with "
            "'defaults: [config, _self_]' (docs/configuration.md, 'Your own config file')",
        )
    trainer = parse(TrainerConfig, plain.get("trainer"), "trainer")
    seed = coerce(plain.get("seed", 0), int, "seed", {"help": SEED_HELP, "minimum": 0})
    if seed > MAX_SEED:
        raise PyrotrainError(f"must be at most {MAX_SEED}", key="seed", value=seed)
    optim = parse(OptimConfig, plain.get("optim"), "optim")
    groups, marks = group_specs(optim, SchedulerSpec.parse(plain.get("scheduler"), "scheduler"))
    distributed = parse_distributed(plain.get("distributed", "auto"))
    logger = parse_loggers(plain.get("logger", "jsonl"))
    model = _required(plain, "model")
    if model.name == "custom":
        _user_target(model.kwargs.get("target"), "model.target", "model=custom", pair=True)
    else:
        MODELS.get(model.name, "model.name")
    data = _required(plain, "data")
    DATASETS.get(data.name, "data.name")
    if data.name == "python" and data.kwargs.get("target") is not None:
        _user_target(data.kwargs.get("target"), "data.target", "data=python", callable_=False)
    guide = parse_named(plain.get("guide", "auto_normal"), "guide")
    if guide.name == "custom":
        _user_target(guide.kwargs.get("target"), "guide.target", "guide=custom")
    elif guide.name != "model":
        GUIDES.get(guide.name, "guide.name")
    elbo = parse_named(plain.get("elbo", "trace"), "elbo")
    check_kwargs(ELBOS.get(elbo.name, "elbo.name"), elbo.kwargs, "elbo")
    particles = elbo.kwargs.get("num_particles", 1)
    coerce(particles, int, "elbo.num_particles", {"help": "samples per step", "minimum": 1})
    if trainer.nan_policy == "reduce_lr":
        for g in groups:
            if not g.frozen and g.rate is None:
                raise PyrotrainError(
                    f"nan_policy=reduce_lr lowers each group's step size, and group '{g.name}' "
                    f"({g.optimizer}) has none",
                    key="trainer.nan_policy",
                    value=trainer.nan_policy,
                    choices=["stop", "skip"],
                )
    return RunConfig(
        model=model,
        data=data,
        guide=guide,
        elbo=elbo,
        groups=groups,
        dct_marks=marks,
        distributed=distributed,
        trainer=trainer,
        seed=seed,
        logger=logger,
        plain=plain,
    )


def _user_target(
    target: Any, key: str, what: str, callable_: bool = True, pair: bool = False
) -> None:
    """Import a user's target up front, so a wrong name is refused before anything is built."""
    if not isinstance(target, str) or not target:
        raise PyrotrainError(
            f"{what} needs {key}=package.module:NAME or {key}=path/to/file.py:NAME",
            key=key,
            value=target,
        )
    obj = import_object(target, key)
    has_pair = callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None))
    if callable_ and not callable(obj) and not (pair and has_pair):
        raise PyrotrainError(
            f"{key} must name a class or a function; it names a {type(obj).__name__}, which "
            "cannot be called",
            key=key,
            value=target,
            hint="Name a class or a function"
            + (", or an object with model and guide methods" if pair else ""),
        )


def _required(plain: dict[str, Any], key: str) -> Named:
    if plain.get(key) is None:
        raise PyrotrainError(f"the config has no {key}", key=key, hint=f"Choose one: {key}=NAME")
    return parse_named(plain[key], key)


def trainer_defaults() -> dict[str, Any]:
    """Every trainer setting's default, as conf/trainer/default.yaml must list them."""
    return {
        f.name: dataclasses.asdict(f.default_factory())  # type: ignore[misc]
        if f.default_factory is not dataclasses.MISSING
        else f.default
        for f in dataclasses.fields(TrainerConfig)
    }


def moved_keys() -> dict[str, str]:
    """Keys that moved to another section (``distributed.backward_passes_per_step``), old full key
    -> new, for the message a user with an old command line gets."""
    from .distributed.base import _module, engine_modules

    moved = {}
    for module_name in engine_modules():
        for old, new in getattr(_module(module_name).Settings, "MOVED", {}).items():
            moved[f"distributed.{old}"] = new
    return moved
