"""Reload the rulebook when its files change; a broken one is refused and the old one kept."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pos_engine.domain.rulebook import Rulebook
from pos_engine.service.background import ProcessThread, yielding_to_requests

log = logging.getLogger(__name__)

RULES_RELOAD_INTERVAL_S = 5.0
# How long a worker waits for the others on its host to finish their reloads before it loads anyway.
RELOAD_TURN_WAIT_S = 30.0
RELOAD_TURN_POLL_S = 0.05


class ReloadDeferred(Exception):  # not an error of the files: a reload put off
    """A load that gave no verdict on the files, for a reason that may pass: the watcher tries again at its next poll."""


@contextmanager
def reload_turn(directory: Path) -> Iterator[None]:
    """One process of this host at a time loads the rulebook of `directory` again.

    gunicorn's workers all see a change within the same poll interval, and each load is about 0.8 s of CPU on
    a 5,000-rule book: loaded together, they took the cores from the swipes (docs/performance-rounds.md, twentieth
    round). Since the twenty-fifth round that CPU is spent in a child process at nice 19 (pos_engine.rules_build),
    and the turn keeps the children from running all at once. The turn is an flock on a file in the temporary
    directory, named after the rules directory; the kernel lets it go when its holder exits, however. A worker
    that waits longer than RELOAD_TURN_WAIT_S (a holder stopped, say), or cannot open the file, loads without
    its turn, and says so.
    """
    path = reload_turn_path(directory)
    wait_s = RELOAD_TURN_WAIT_S
    try:
        turn = path.open("a")
    except OSError as error:
        log.warning("rulebook reload without waiting for the other workers: %s: %s", path, error)
        yield
        return
    with turn:
        held = _take_turn(turn.fileno(), wait_s)
        if not held:
            log.warning("rulebook reload without its turn: another process held %s over %.0f s", path, wait_s)
        try:
            yield
        finally:
            if held:
                fcntl.flock(turn.fileno(), fcntl.LOCK_UN)


def reload_turn_path(directory: Path) -> Path:
    """The file whose flock is the reload turn for the rules in `directory`."""
    name = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pos-engine-rulebook-{name}.lock"


def _take_turn(fd: int, wait_s: float) -> bool:
    """Whether this process took the flock on `fd` within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(RELOAD_TURN_POLL_S)


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any YAML file under `directory` is added, removed or edited."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".yaml", ".yml") and path.is_file():
            stat = path.stat()
            found.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class RulebookWatcher:
    """Checks the rules directory every few seconds, off the swipe path, in a daemon thread.

    A valid new rulebook replaces the running one (swipes already under way keep
    the one they started with); an invalid one is logged with file, line and
    reason, shown by /healthz, and the engine keeps the rulebook it had.
    """

    def __init__(
        self,
        directory: Path,
        load: Callable[[Path], Rulebook],
        install: Callable[[Rulebook], None],
        interval_s: float = RULES_RELOAD_INTERVAL_S,
        *,
        seen: tuple[tuple[str, int, int], ...] | None = None,
        load_at_start: Callable[[Path], Rulebook] | None = None,
    ) -> None:
        """`seen`: the files' fingerprint from before the running rulebook was read (else taken now).

        `load_at_start` (default: `load`) is what `catch_up` loads with: a worker that serves nothing yet has no
        swipe to spare its CPU for, and gunicorn's timeout runs.
        """
        self.directory = directory
        self.load = load
        self.load_at_start = load_at_start or load
        self.install = install
        self.interval_s = interval_s
        self.last_error: str | None = None
        # Whether the last refusal was the files not being readable (an OSError: permissions, a lost mount, the
        # reload turn's lock), rather than a rulebook refused: an operator mends the one and the other differently.
        self.last_error_unreadable = False
        self._seen: tuple[tuple[str, int, int], ...] | None = seen if seen is not None else fingerprint(directory)
        self._stop = threading.Event()
        # A thread in each process that serves: `gunicorn --preload` builds the app in the master and forks the
        # workers, which do not inherit the master's threads.
        self.thread = ProcessThread("rulebook-watcher", self._run, before_start=self._new_stop_event)
        # Whether `catch_up` found the files changed and their rulebook broken: this process then holds the
        # rulebook of the moment the app was built, which the other workers may have replaced since.
        self.refused_at_start = False

    def check_now(self) -> bool:
        """Reload if the files changed; return True if a new rulebook was installed."""
        return self._check(self.load) == "installed"

    def _check(self, load: Callable[[Path], Rulebook]) -> Literal["unchanged", "installed", "refused", "deferred"]:
        """Reload if the files changed: what came of it.

        "refused": unreadable, or a rulebook refused (not loaded again until the files change again);
        "deferred": the load gave no verdict (ReloadDeferred), and the next poll loads the same files again.
        """
        try:
            current = fingerprint(self.directory)
        except OSError as error:
            self.last_error = f"{self.directory}: {error}"
            self.last_error_unreadable = True
            self._seen = None  # whatever the files are once readable again, they are checked (and the error cleared)
            return "refused"
        if current == self._seen:
            return "unchanged"
        try:
            # One worker of the host at a time, and its swipes go first: the app's `load` builds the book in a child
            # process at nice 19 (pos_engine.rules_build), and indexing it here is Python that yields the GIL.
            with reload_turn(self.directory), yielding_to_requests():
                rulebook = load(self.directory)
        except ReloadDeferred as error:  # no verdict on the files: `_seen` stays, so the next poll tries them again
            self.last_error = str(error)
            self.last_error_unreadable = False
            log.warning("rulebook reload from %s put off: %s", self.directory, error)
            return "deferred"
        except Exception as error:  # a RulebookError, or anything else the loader raised: keep the old rulebook
            self.last_error = str(error)
            self.last_error_unreadable = isinstance(error, OSError)
            self._seen = current  # refused once: not loaded again until the files change again
            if self.last_error_unreadable:
                log.error("rule files in %s could not be read; keeping the running rulebook: %s", self.directory, error)
            else:
                log.error("new rulebook in %s refused; keeping the running one:\n%s", self.directory, error)
            return "refused"
        self.last_error = None
        self.install(rulebook)
        # Only now: a worker forked from this process while it loaded (--preload) has the old rulebook, and so
        # must see the files as changed.
        self._seen = current
        log.info("rulebook %s installed from %s", rulebook.version, self.directory)
        return "installed"

    def stop(self) -> None:
        self._stop.set()

    def catch_up(self) -> None:
        """In a process forked from the one that built the app, before it serves: load the files if they changed since.

        Such a process (`gunicorn --preload`; a worker started again after a timeout or a crash, days
        later) holds the rulebook of that moment: it must not serve it for a poll interval, or at all if
        the files are broken now (`refused_at_start`). pos_engine.serving.start_forked_worker calls it
        before the worker serves; a process forked some other way catches up at its watcher's first poll.
        """
        self.refused_at_start = self._check(self.load_at_start) == "refused"

    def _new_stop_event(self) -> None:
        # The parent's thread may have been waiting on the event as the process forked: the child waits on its own.
        if not self._stop.is_set():
            self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_now()
