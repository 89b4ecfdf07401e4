"""A user's data from a file, read by the library that wrote it: ``.npz``/``.npy`` (numpy),
``.pt`` (torch), ``.parquet`` (pyarrow).

An ``.npz`` gives its arrays by name (keyword arguments), or, when numpy named them itself
(``np.savez(file, a, b)`` writes ``arr_0``, ``arr_1``), in order (positional arguments). A parquet
file gives its columns by name. A ``.pt`` file gives what ``torch.save`` was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PyrotrainError
from ..targets import start_directory

READERS = (".npz", ".npy", ".pt", ".parquet")


def read_file(path: str, key: str = "data.path") -> Any:
    """The data object a file holds: an array, a tuple of arrays, or a dict of them."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = start_directory() / p
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise PyrotrainError(
            f"the data file {p} {what}",
            key=key,
            value=path,
            hint=f"Relative paths are read from where the command started, {start_directory()}",
        )
    suffix = p.suffix.lower()
    if suffix not in READERS:
        raise PyrotrainError(
            f"pyrotrain cannot read '{suffix or p.name}' files",
            key=key,
            value=path,
            choices=READERS,
            hint="Or write a function that returns the data and name it: data.target=file.py:NAME",
        )
    try:
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            numbered = [f"arr_{i}" for i in range(len(arrays))]
            return tuple(arrays[n] for n in numbered) if list(arrays) == numbered else arrays
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".pt":
            return torch.load(p, map_location="cpu", weights_only=True)
        return _read_parquet(p)
    except PyrotrainError:
        raise
    except Exception as e:
        raise PyrotrainError(
            f"{p} cannot be read as a {suffix} file: {type(e).__name__}: {e}",
            key=key,
            value=path,
        ) from e


def _read_parquet(p: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PyrotrainError(
            "reading parquet files needs pyarrow: pip install pyarrow", key="data.path"
        ) from None
    import pyarrow as pa

    table = pq.read_table(p)
    out = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            out[name] = np.array(column.to_pylist())  # a list per row: a matrix
        else:
            out[name] = column.to_numpy()
    return out
