"""One driver connection per thread and process, for the swipe path's own round trips."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from pos_engine.service.background import this_process


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)  # a driver connection (psycopg, sqlite3, redis-py)


class ThreadConnections(Generic[C]):
    """One driver connection per thread and process, opened on first use and kept for the thread's life.

    The swipe path's own connections, outside SQLAlchemy's pool: `connect` opens
    one, `is_closed` says whether it broke. `close_all` closes every one this
    process opened (those inherited across a fork belong to the parent).
    """

    def __init__(self, connect: Callable[[], C], is_closed: Callable[[C], bool]) -> None:
        self._connect = connect
        self._is_closed = is_closed
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[tuple[object, C]] = []  # (this_process() of the opener, connection)
        # Close what is still open when this is dropped without `close_all` (drivers warn otherwise).
        weakref.finalize(self, _close_connections, self._opened)

    def get(self) -> C:
        connection: C | None = getattr(self._local, "connection", None)
        if connection is None or self._local.process is not this_process() or self._is_closed(connection):
            connection = self._connect()
            self._local.connection, self._local.process = connection, this_process()
            with self._lock:
                self._opened[:] = [(process, opened) for process, opened in self._opened if not self._is_closed(opened)]
                self._opened.append((this_process(), connection))
        return connection

    def discard(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None and self._local.process is this_process():
            connection.close()

    def close_all(self) -> None:
        with self._lock:
            _close_connections(self._opened)


def _close_connections(opened: list[tuple[object, Any]]) -> None:
    for process, connection in opened:
        if process is this_process():
            connection.close()
    opened.clear()
