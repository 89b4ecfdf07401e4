"""``pyrotrain-predict RUN_DIR``: posterior predictions and forecasts from a trained run.

The run's model and guide are rebuilt from ``RUN_DIR/.hydra/config.yaml`` and their parameters
loaded from ``params.pt`` (or a checkpoint); Pyro's ``Predictive`` then draws samples of the
model's observation site for the input rows: the run's held-out split, or new rows given as data
overrides (``data.path=new.csv``), whose target column may be missing. A model with a
``forecast`` method (``model=timeseries``) forecasts instead, and ``--horizon H`` forecasts H steps
past the end of the data.

The contract for a user's model (docs/models.md): the observation is the sample site ``obs`` (or
the model's ``obs_site`` attribute), and it observes the data tensor ``y`` (or the model's
``target`` attribute); an optional ``predict(guide, rows, num_samples)`` replaces ``Predictive``;
an optional ``forecast(guide, data, horizon, num_samples)`` makes ``--horizon`` work.

One module per job: :mod:`.run` rebuilds the run, :mod:`.inputs` picks the rows, :mod:`.sampling`
draws the samples, :mod:`.outputs` turns them into tables, scores and forecast.png, and
:mod:`.cli` is the command.
"""

from .cli import Options, main, parse_args, predict
from .inputs import Rows, future_labels, input_rows, labelled
from .outputs import (
    BAND,
    DEFAULT_QUANTILES,
    plot_forecast,
    quantile_name,
    scores,
    summarize,
    table_text,
)
from .run import load_run, parameter_file
from .sampling import obs_site, predictive_samples, target_name, unstandardize

__all__ = [
    "BAND",
    "DEFAULT_QUANTILES",
    "Options",
    "Rows",
    "future_labels",
    "input_rows",
    "labelled",
    "load_run",
    "main",
    "obs_site",
    "parameter_file",
    "parse_args",
    "plot_forecast",
    "predict",
    "predictive_samples",
    "quantile_name",
    "scores",
    "summarize",
    "table_text",
    "target_name",
    "unstandardize",
]
