"""SIGINT and SIGTERM during training: the loop stops after the current step, with a checkpoint
(``Trainer._stop``), rather than dying between two writes."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopSignals:
    """SIGINT and SIGTERM ask the loop to stop after the current step (``signum`` says which);
    a second SIGINT stops at once. Handlers exist only while training, in the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            "(Ctrl-C again stops at once)\n"
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
