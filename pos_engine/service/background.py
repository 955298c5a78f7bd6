"""A background thread started once in each process that uses it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class ProcessThread:
    """A daemon thread running `target`, started on first use in each process.

    gunicorn forks its workers after the app may have been built: a thread of
    the parent does not exist in the child, so each process starts its own
    (after `before_start`, run under the same lock, once per process).
    """

    def __init__(self, name: str, target: Callable[[], None], before_start: Callable[[], None] | None = None) -> None:
        self.name = name
        self._target = target
        self._before_start = before_start
        self._lock = threading.Lock()
        self._started_in = 0  # the pid that started it; 0: none

    def ensure_started(self) -> None:
        if self._started_in == os.getpid():
            return
        with self._lock:
            if self._started_in == os.getpid():
                return
            if self._before_start is not None:
                self._before_start()
            threading.Thread(target=self._target, name=self.name, daemon=True).start()
            self._started_in = os.getpid()

    def driven_by_hand(self) -> None:
        """Never start the thread in this process: the caller runs the work itself (tests, one-off tools)."""
        self._started_in = os.getpid()
