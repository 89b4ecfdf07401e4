"""Data: the built-in sets, CSV tables, date columns, and a user's own data from Python or files.

- :mod:`.dataset`: :class:`Dataset` (named tensors sharing their rows, split into train and eval)
  and :class:`BatchOrder` (the seeded minibatch order, sharded over ranks);
- :mod:`.builtin`: ``diabetes`` and ``synthetic_regression``;
- :mod:`.tables`: ``data=csv``, a numeric table with a header row;
- :mod:`.dates`: ISO date columns as step numbers and back;
- :mod:`.python`, :mod:`.files`: a user's own data (`data=python`), from Python or a file.
"""

from .builtin import load_diabetes, make_regression, sklearn_data_file
from .dataset import BatchOrder, CallSpec, Dataset, split
from .dates import Calendar, parse_dates
from .tables import load_csv, read_columns

__all__ = [
    "BatchOrder",
    "CallSpec",
    "Calendar",
    "Dataset",
    "load_csv",
    "load_diabetes",
    "make_regression",
    "parse_dates",
    "read_columns",
    "sklearn_data_file",
    "split",
]
