"""A background thread started once in each process that uses it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class _Process:
    current = object()


def _forked() -> None:
    _Process.current = object()


os.register_at_fork(after_in_child=_forked)


def this_process() -> object:
    """A token for the running process, new in each forked child.

    What a gunicorn worker must not share with the parent it was forked from
    (threads, connections, lock files) is kept with this token; comparing it
    costs less than os.getpid(), a system call, on every swipe.
    """
    return _Process.current


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
        self._started_in: object = None  # this_process() of the process that started it

    def ensure_started(self) -> None:
        if self._started_in is this_process():
            return
        with self._lock:
            if self._started_in is this_process():
                return
            if self._before_start is not None:
                self._before_start()
            threading.Thread(target=self._target, name=self.name, daemon=True).start()
            self._started_in = this_process()

    def driven_by_hand(self) -> None:
        """Never start the thread in this process: the caller runs the work itself (tests, one-off tools)."""
        self._started_in = this_process()
