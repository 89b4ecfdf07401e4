"""What pyrotrain prints on the terminal: the console it prints through, the one-paragraph exit
for errors, and pyrotrain's warnings as one line."""

from __future__ import annotations

import sys
import warnings
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from .distributed import process_rank
from .errors import PyrotrainWarning


def screen(stderr: bool = False) -> Console:
    """The console pyrotrain prints through: lines are never hard-wrapped (piped output keeps
    each message on one line; a terminal wraps long lines itself)."""
    return Console(stderr=stderr, soft_wrap=True)


def exit_with(message: str, exit_code: int = 2) -> NoReturn:
    """Print ``message`` as one paragraph on stderr (``error:`` for bad input, ``stopped:`` for
    anything else; ``[rank R]`` on ranks other than 0) and end the process with ``exit_code``."""
    rank = process_rank()
    tag = escape(f"[rank {rank}] ") if rank else ""
    screen(stderr=True).print(
        f"[bold red]{'error' if exit_code == 2 else 'stopped'}:[/] {tag}{escape(message)}",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(exit_code)


def show_warnings_plainly() -> None:
    """Print pyrotrain's warnings as ``warning: MESSAGE`` (no file, line and source line);
    other warnings keep Python's format."""
    plain = warnings.formatwarning
    if getattr(plain, "_pyrotrain", False):
        return

    def formatwarning(message: Any, category: Any, *args: Any, **kwargs: Any) -> str:
        if issubclass(category, PyrotrainWarning):
            return f"warning: {message}\n"
        return plain(message, category, *args, **kwargs)

    formatwarning._pyrotrain = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning
