"""A background thread started once in each process that uses it."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class _Process:
    current = object()


def _forked() -> None:
    _Process.current = object()
    _Yielding.forked()


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

    def started_in_this_process(self) -> bool:
        return self._started_in is this_process()

    def driven_by_hand(self) -> None:
        """Never start the thread in this process: the caller runs the work itself (tests, one-off tools)."""
        self._started_in = this_process()


# While a background thread does a long stretch of CPU work, a thread waiting for the GIL gets it after this
# long (CPython's default is 5 ms): docs/performance-rounds.md, twentieth round.
YIELDING_SWITCH_INTERVAL_S = 0.0002
_YIELDING_US = round(YIELDING_SWITCH_INTERVAL_S * 1e6)


class _Yielding:
    """How many threads of this process are in `yielding_to_requests`, and the switch interval before the first."""

    lock = threading.Lock()
    inside = 0
    interval_before_us = 0  # CPython keeps the interval in whole microseconds

    @classmethod
    def set_us(cls, microseconds: int) -> None:
        sys.setswitchinterval((microseconds + 0.5) / 1e6)  # exactly `microseconds`: CPython truncates

    @classmethod
    def forked(cls) -> None:
        """A child forked while a thread was inside: that thread does not exist here, and neither does its work."""
        cls.lock = threading.Lock()
        if cls.inside:
            cls.inside = 0
            cls.set_us(cls.interval_before_us)


@contextmanager
def yielding_to_requests() -> Iterator[None]:
    """Run a background thread's long CPU work (a rulebook reload) without holding up the threads serving requests.

    A request thread that wakes from a wait (Redis, PostgreSQL, the client) needs the GIL back. While another
    thread runs Python, CPython hands it over only after the switch interval, 5 ms by default, and a swipe
    waits that long several times over. While any thread of the process is inside this, the interval is
    YIELDING_SWITCH_INTERVAL_S; when the last one leaves, it is put back as it was, unless someone set
    another meanwhile. A thread that needs no GIL meanwhile costs nothing: the interval counts only while
    another thread waits.
    """
    with _Yielding.lock:
        if _Yielding.inside == 0:
            _Yielding.interval_before_us = round(sys.getswitchinterval() * 1e6)
            _Yielding.set_us(_YIELDING_US)
        _Yielding.inside += 1
    try:
        yield
    finally:
        with _Yielding.lock:
            _Yielding.inside -= 1
            if _Yielding.inside == 0 and round(sys.getswitchinterval() * 1e6) == _YIELDING_US:
                _Yielding.set_us(_Yielding.interval_before_us)


REPEATED_FAILURE_QUIET_S = 300.0  # a failure that goes on is logged again, as one line, this often


class RepeatedFailure:
    """The log of a background task that retries: an outage is a few lines, not a traceback every poll.

    A new failure (an exception of another type than the last) is logged with
    its traceback; the same kind again only as one line every `quiet_s`, saying
    how many times it happened since; and the first success after it, once.
    A service that comes and goes (fails, works, fails again) shows each kind's
    traceback at most once every `quiet_s`: in between, a failure after a
    success is one line. Failures are told apart by type, not by message, which
    may name a changing address or process.
    """

    def __init__(
        self,
        log: logging.Logger,
        subject: str,
        consequence: str,
        quiet_s: float = REPEATED_FAILURE_QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._subject = subject
        self._consequence = consequence
        self._quiet_s = quiet_s
        self._clock = clock
        self._failing: tuple[str, ...] | None = None  # the kind of failure being repeated: its type, and its cause's
        self._logged_at = 0.0
        self._since = 0  # repeats not logged since
        self._traced: dict[tuple[str, ...], float] = {}  # when each kind's traceback was last logged

    def failed(self, error: BaseException) -> None:
        kind = (type(error).__name__, type(error.__cause__).__name__)
        now = self._clock()
        if kind != self._failing:
            traced_at = self._traced.get(kind)
            if traced_at is not None and now - traced_at < self._quiet_s:
                self._log.error("%s failed again; %s: %s", self._subject, self._consequence, _first_line(error))
            else:
                self._log.error("%s failed; %s", self._subject, self._consequence, exc_info=error)
                self._traced[kind] = now
            self._failing, self._logged_at, self._since = kind, now, 0
        elif now - self._logged_at >= self._quiet_s:
            self._log.error(
                "%s still failing (%d times more in %.0f s): %s",
                self._subject,
                self._since + 1,
                now - self._logged_at,
                _first_line(error),
            )
            self._logged_at, self._since = now, 0
        else:
            self._since += 1

    def succeeded(self) -> None:
        if self._failing is not None:
            self._log.warning("%s works again", self._subject)
            self._failing = None


def _first_line(error: BaseException) -> str:
    """'ConnectionRefusedError: connection to 10.0.0.1 refused': the type and the message's first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
