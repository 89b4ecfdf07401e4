"""The one error type for mistakes a user can fix: bad config, unknown names, missing files."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class PyrotrainError(Exception):
    """A user-fixable error. The CLI prints it as one paragraph and exits with code 2.

    ``key`` is the config key at fault (``trainer.steps``), ``value`` the bad value, ``problem``
    what is wrong with it, ``choices`` the valid values when there is a finite set, ``hint`` how
    to fix it when that is not obvious from the rest.
    """

    _NO_VALUE = object()
    exit_code = 2

    def __init__(
        self,
        problem: str,
        *,
        key: str | None = None,
        value: Any = _NO_VALUE,
        choices: Iterable[Any] | None = None,
        hint: str | None = None,
    ):
        self.problem = problem
        self.key = key
        self.value = value
        self.choices = list(choices) if choices is not None else None
        self.hint = hint
        super().__init__(self.message())

    def message(self) -> str:
        parts = []
        if self.key is not None and self.value is not self._NO_VALUE:
            parts.append(f"Invalid value for '{self.key}': {self.value!r}.")
        elif self.key is not None:
            parts.append(f"Problem with '{self.key}':")
        parts.append(_sentence(self.problem))
        if self.choices is not None:
            shown = ", ".join(str(c) for c in self.choices) if self.choices else "(none)"
            parts.append(f"Valid choices: {shown}.")
        if self.hint:
            parts.append(_sentence(self.hint))
        return " ".join(parts)


class TrainingStopped(PyrotrainError):
    """Training ended early on purpose (non-finite loss, a signal) after saving what it could.

    The CLI prints the message and exits with ``exit_code``: 1 for a non-finite loss or gradient,
    128 + the signal number for SIGINT (130) and SIGTERM (143).
    """

    def __init__(self, problem: str, *, exit_code: int, hint: str | None = None):
        self.exit_code = exit_code
        super().__init__(problem, hint=hint)


class PyrotrainWarning(UserWarning):
    """Something a user should know that does not stop the run. The CLI prints it as one line,
    ``warning: MESSAGE`` (see :func:`pyrotrain.console.show_warnings_plainly`)."""


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
