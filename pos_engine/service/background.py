"""A background thread started once in each process that uses it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class _Process:
    """A token that is new in each forked child: comparing it costs less than os.getpid(), a system call, on every swipe."""

    current = object()


def _forked() -> None:
    _Process.current = object()


os.register_at_fork(after_in_child=_forked)


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
        self._started_in: object = None  # the _Process token of the process that started it

    def ensure_started(self) -> None:
        if self._started_in is _Process.current:
            return
        with self._lock:
            if self._started_in is _Process.current:
                return
            if self._before_start is not None:
                self._before_start()
            threading.Thread(target=self._target, name=self.name, daemon=True).start()
            self._started_in = _Process.current

    def driven_by_hand(self) -> None:
        """Never start the thread in this process: the caller runs the work itself (tests, one-off tools)."""
        self._started_in = _Process.current
