"""Engines and units of work for PostgreSQL and the embedded SQLite default."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import orjson
import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn, PGresult
from psycopg.rows import namedtuple_row
from sqlalchemy import JSON, Column, Connection, Engine, Integer, LargeBinary, String, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.limits import (
    LOST_ANSWER_WAIT_S_MAX,
    POSTGRESQL_CONNECT_TIMEOUT_S,
    POSTGRESQL_DEAD_HOST_S,
    RECORD_ANSWER_S_MAX,
    SQLITE_BUSY_TIMEOUT_MS,
)
from pos_engine.service.background import this_process
from pos_engine.service.cards import CardChangesCursor, CardRowTuple
from pos_engine.service.errors import DuplicateKey, OutcomeUnknown
from pos_engine.store.connections import ThreadConnections
from pos_engine.store.models import UtcDateTime
from pos_engine.store.repository import CARD_ROWS, Repository, cards, declines, idempotency_records, is_unique_violation, ledger

log = logging.getLogger(__name__)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for a plain postgresql:// URL."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


# libpq's parameters that close a connection to a host that stopped acknowledging (POSTGRESQL_DEAD_HOST_S):
# keepalive probes after a third of it idle, then two more a third apart; sent data unacknowledged for all of it.
DEAD_HOST_PARAMS = {
    "keepalives": "1",
    "keepalives_idle": str(max(1, POSTGRESQL_DEAD_HOST_S // 3)),
    "keepalives_interval": str(max(1, POSTGRESQL_DEAD_HOST_S // 3)),
    "keepalives_count": "2",
    "tcp_user_timeout": str(POSTGRESQL_DEAD_HOST_S * 1000),
}


# Every engine this process made, so that a forked child stops using the connections pooled by its parent.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_parents_connections() -> None:
    """In a forked child: each engine starts a pool of its own, leaving the parent's connections to the parent.

    `gunicorn --preload` builds the app, and so its engines, in the master, and forks the workers from it: a
    pooled connection inherited by two workers would carry both one's statements on one socket. Closing
    it here would close it for the parent too (SQLAlchemy's "Using Connection Pools with os.fork()").
    """
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parents_connections)


def make_engine(url: str, *, immediate: bool = True, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and write transactions that lock at BEGIN.

    Several gunicorn workers share one SQLite file. `BEGIN IMMEDIATE` takes the
    write lock when a transaction starts, so the check-reserve-insert sequence
    of a swipe runs serialised across processes, never interleaved. A process
    forked after the engine was made opens connections of its own.
    """
    engine = _make_engine(url, immediate=immediate, **kwargs)
    _ENGINES.add(engine)
    return engine


def _make_engine(url: str, *, immediate: bool, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    kwargs.setdefault("json_serializer", _json_text)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if not is_sqlite(url):
        # No pre-ping: it costs a round trip per checkout on the swipe path. A connection
        # broken by a database restart fails one request (503, retried by the terminal)
        # and is discarded by the pool.
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_recycle", 3600)
        in_url = make_url(url).query
        dead_host = {name: value for name, value in DEAD_HOST_PARAMS.items() if name not in in_url}
        kwargs["connect_args"] = {**dead_host, **kwargs.get("connect_args", {})}
        return create_engine(url, **kwargs)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite(dbapi_connection)

    if immediate:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Without `immediate` (registry reads) no BEGIN is sent: each SELECT runs on its own,
    # in autocommit, which WAL mode serves without touching the write lock.

    return engine


def configure_sqlite(connection: sqlite3.Connection) -> None:
    """WAL, synchronous=NORMAL, a busy timeout, foreign keys; BEGIN issued by us, not by pysqlite (deferred)."""
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SqliteWriteLock:
    """Serialises SQLite write transactions across threads and processes, without polling.

    SQLite's own busy handler sleeps and retries (1, 2, 5 … 100 ms), so under
    load a writer can wait far longer than the lock is held. Taking an
    exclusive `flock` on a file beside the database first makes writers queue
    in the kernel and wake the moment the lock is free; BEGIN IMMEDIATE then
    never waits. Every process of the engine (gunicorn workers, the CLI) uses it.
    """

    def __init__(self, database_path: str) -> None:
        self._path = f"{database_path}.writelock"
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._process: object = None  # this_process() of the process that opened _fd

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            # A forked worker opens its own file: a descriptor shared across a fork shares its lock.
            if self._fd is None or self._process is not this_process():
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._process = this_process()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class UnitOfWork:
    """One database transaction on a Core connection; it rolls back unless `commit()` is called."""

    connection: Connection
    repo: Repository

    def __init__(self, engine: Engine, *, write_lock: SqliteWriteLock | None = None) -> None:
        self._engine = engine
        self._write_lock = write_lock

    @property
    def session(self) -> Connection:
        """The transaction handle the SQL counter store joins."""
        return self.connection

    def __enter__(self) -> UnitOfWork:
        if self._write_lock is not None:
            self._write_lock.__enter__()
        try:
            self._open()
        except BaseException:
            if self._write_lock is not None:
                self._write_lock.__exit__()
            raise
        return self

    def _open(self) -> None:
        self.connection = self._engine.connect()
        self._transaction = self.connection.begin()
        self.repo = Repository(self.connection)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            try:
                self.connection.close()
            finally:
                if self._write_lock is not None:
                    self._write_lock.__exit__()

    def commit(self) -> None:
        """Commit; a unique-key clash (a concurrent duplicate request) becomes DuplicateKey."""
        try:
            self._transaction.commit()
        except IntegrityError as error:
            if self._transaction.is_active:
                self._transaction.rollback()
            if is_unique_violation(error):
                raise DuplicateKey(str(error.orig)) from error
            raise


class SnapshotUnitOfWork(UnitOfWork):
    """A read-only transaction that sees the whole database at one moment, taking no write lock.

    PostgreSQL: REPEATABLE READ. SQLite: a deferred BEGIN, whose first read fixes the snapshot
    (WAL mode), so swipes keep being recorded meanwhile. `counters reconcile` reads the ledger
    and the SQL counters in one.
    """

    def __init__(self, engine: Engine, *, sqlite: bool) -> None:
        super().__init__(engine)
        self._sqlite = sqlite

    def _open(self) -> None:
        if self._sqlite:  # the deferred engine sends no BEGIN of its own
            self.connection = self._engine.connect()
            self._transaction = self.connection.begin()
            self.connection.exec_driver_sql("BEGIN")
        else:
            self.connection = self._engine.connect().execution_options(isolation_level="REPEATABLE READ")
            self._transaction = self.connection.begin()
        self.repo = Repository(self.connection)

    def commit(self) -> None:
        raise TypeError("a read snapshot commits nothing")


class DirectRepository:
    """The two statements of a single-statement unit of work, on a driver connection (PostgreSQL).

    The swipe path's one write (`record`) goes to libpq itself (psycopg's `pq`
    layer): a statement prepared once per connection, values encoded as text by
    one encoder per column (`_DirectStatement`). psycopg's query conversion,
    type dispatch and execute generators cost more CPU than the rest of the
    write (213 -> 80 µs per swipe), and SQLAlchemy's checkout and result
    machinery more again (see docs/performance.md). The wait for a concurrent
    duplicate (`idempotency`) is rare and uses a psycopg cursor.
    """

    def __init__(self, connection: psycopg.Connection[Any], conninfo: str, group: RecordGroup | None = None) -> None:
        self.connection = connection
        self._conninfo = conninfo
        self._group = group

    def record(self, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> Any:
        """Record a swipe (both rows, or neither), with the records of other threads that come meanwhile (RecordGroup).

        Raises as `record_alone` does.
        """
        if self._group is None:
            return self.record_alone(table_name, fields, idempotency)
        self._group.record(self, table_name, fields, idempotency)
        return SimpleNamespace(**fields)

    def record_group(self, group: list[_Waiting]) -> None:
        """Record every swipe in `group` on this connection, in one statement where it can, and give each its outcome."""
        ready = group
        if len(group) > 1:
            ready = []
            for waiting in group:
                try:
                    waiting.params = _GROUP_STATEMENTS.params(waiting.row)
                except Exception as error:  # a value the record refuses (a NUL in a text): that swipe's outcome
                    waiting.done, waiting.error = True, error
                else:
                    ready.append(waiting)
        # On a closed connection nothing can be sent: each alone, below, fails as a lone record does.
        if len(ready) > 1 and not self.connection.closed:
            backend_pid = self.connection.pgconn.backend_pid  # before the statement: a connection that breaks forgets it
            try:
                _GROUP_STATEMENTS.execute(self.connection, ready)
            except psycopg.OperationalError as error:
                if error.sqlstate is None or self.connection.pgconn.status != pq.ConnStatus.OK:
                    self._after_lost_group(ready, backend_pid, error)
                    return
                if error.sqlstate.startswith("57"):
                    # Cancelled (the statement limit, an operator): nothing was written, and sending each alone
                    # would wait as long again for each.
                    for waiting in ready:
                        waiting.done, waiting.error = True, type(error)(str(error))
                    return
                # Refused for one of its rows (a lock it could not take, a serialisation failure): each alone, below.
            except (psycopg.Error, DuplicateKey):
                pass  # refused for one of its rows (a duplicate request): nothing was written; each alone, below
            else:
                for waiting in ready:
                    waiting.done = True
                return
        for waiting in ready:
            try:
                self.record_alone(*waiting.row)
            except Exception as error:  # the outcome of that swipe, raised in its own thread
                waiting.error = error
            waiting.done = True

    def _after_lost_group(self, group: list[_Waiting], backend_pid: int, error: psycopg.Error) -> None:
        """Each swipe's outcome after the group's answer was lost: looked up as a lone record's (`record_alone`)."""
        keys = [_request_key(waiting) for waiting in group]
        try:
            session_over, stored_rows = _after_lost_answer(self._conninfo, backend_pid, keys)
        except psycopg.Error as lookup_error:
            for waiting in group:
                waiting.done, waiting.error = True, _unknown_after_lost_answer(error, lookup_error)
            return
        for waiting, stored in zip(group, stored_rows, strict=True):
            waiting.done, waiting.error = True, _outcome_after_lost_answer(error, session_over, stored, waiting.row[2])

    def record_alone(self, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> Any:
        """Both rows in one statement (a data-modifying CTE): both or neither.

        If the connection breaks once the statement may have reached the server,
        a new connection finds out what happened: the record is there (it
        committed: return as if nothing broke), another record holds the key
        (DuplicateKey), or the old session is over and left nothing (the
        psycopg error: nothing was written).

        Raises:
            DuplicateKey: the idempotency key is taken; nothing was written.
            psycopg.OperationalError: nothing was written (the connection was lost, or the server
                cancelled the statement: TERMINAL_STATEMENT_TIMEOUT_MS).
            OutcomeUnknown: the statement was sent and it cannot be told whether it committed.
        """
        pgconn = self.connection.pgconn
        backend_pid = pgconn.backend_pid
        try:
            _DIRECT_RECORD[table_name].execute(pgconn, fields, idempotency)
        except psycopg.OperationalError as error:
            if error.sqlstate is not None and pgconn.status == pq.ConnStatus.OK:
                # The server's own answer on a live connection (its statement timeout cancelled the
                # record): the statement's transaction rolled back, nothing was written.
                raise
            try:
                session_over, (stored,) = _after_lost_answer(
                    self._conninfo, backend_pid, [(idempotency["terminal_id"], idempotency["request_id"])]
                )
            except psycopg.Error as lookup_error:
                raise _unknown_after_lost_answer(error, lookup_error) from error
            outcome = _outcome_after_lost_answer(error, session_over, stored, idempotency)
            if outcome is not None:
                raise outcome from error
        return SimpleNamespace(**fields)

    def idempotency(self, terminal_id: str, request_id: str) -> Any:
        cursor = self.connection.cursor(row_factory=namedtuple_row)
        return cursor.execute(_DIRECT_IDEMPOTENCY_SQL, (terminal_id, request_id), prepare=True).fetchone()


def _outcome_after_lost_answer(error: psycopg.Error, session_over: bool, stored: Any, idempotency: Mapping[str, Any]) -> Exception | None:
    """What a swipe whose record's answer was lost gets, from what `_after_lost_answer` found: None if it is recorded."""
    if stored is not None and stored.resource_id == idempotency["resource_id"]:
        log.warning("the answer to a recorded swipe was lost (%s); found it recorded", error)
        return None
    if stored is not None:
        return DuplicateKey(f"request {idempotency['request_id']!r} is recorded by another request")
    if session_over:  # it committed or never will: it did not
        return psycopg.OperationalError(str(error))
    return OutcomeUnknown(f"the swipe's answer was lost ({error}) and its session is still open")


def _unknown_after_lost_answer(error: psycopg.Error, lookup_error: psycopg.Error) -> OutcomeUnknown:
    return OutcomeUnknown(f"the swipe's answer was lost ({error}) and it cannot be looked up: {lookup_error}")


def _after_lost_answer(conninfo: str, backend_pid: int, requests: list[tuple[str, str]]) -> tuple[bool, list[Any]]:
    """On a new connection: whether the session `backend_pid` is over (waiting a moment for it to end), and the
    stored answer (or None) of each request, given as (terminal id, request id).

    Read in that order: once the session is over, its statement has committed or never will.
    """
    with _connect(conninfo) as connection:
        deadline = time.monotonic() + LOST_ANSWER_WAIT_S_MAX
        while True:
            row = connection.execute("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (backend_pid,)).fetchone()
            session_over = bool(row and row[0])
            if session_over or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        cursor = connection.cursor(row_factory=namedtuple_row)
        return session_over, [cursor.execute(_DIRECT_IDEMPOTENCY_SQL, request).fetchone() for request in requests]


class DirectUnitOfWork:
    """A single-statement unit of work on PostgreSQL: one autocommit driver connection per thread."""

    def __init__(self, connections: ThreadConnections[psycopg.Connection[Any]], conninfo: str, group: RecordGroup | None = None) -> None:
        self._connections = connections
        self._conninfo = conninfo
        self._group = group
        self.session = None  # no transaction for a counter store to join: each statement commits itself

    def __enter__(self) -> DirectUnitOfWork:
        self.repo = DirectRepository(self._connections.get(), self._conninfo, self._group)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OutcomeUnknown):
            self._connections.discard()  # broken: the next unit of work connects afresh

    def commit(self) -> None:
        """Nothing to do: the one statement committed itself."""


def _sqlite_is_closed(connection: sqlite3.Connection) -> bool:
    try:
        connection.total_changes  # noqa: B018  (raises ProgrammingError once closed)
    except sqlite3.ProgrammingError:
        return True
    return False


class SqliteDirectRepository:
    """A swipe's record on SQLite, on the driver connection: two inserts in the swipe's transaction.

    Values go through the columns' own SQLAlchemy bind processors, so they are
    stored exactly as the rest of the engine stores and reads them.
    """

    def __init__(self, connection: sqlite3.Connection, dialect: Any) -> None:
        self.connection = connection
        self._dialect = dialect

    def record(self, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> Any:
        for table, values in ((_TABLES[table_name], fields), (idempotency_records, idempotency)):
            processors = _processors(table, self._dialect, "bind")
            row = [values[name] if processor is None else processor(values[name]) for name, processor in processors]
            try:
                self.connection.execute(_SQLITE_INSERT_SQL[table.name], row)
            except sqlite3.IntegrityError as error:
                if is_unique_violation(error):
                    raise DuplicateKey(str(error)) from error
                raise
        return SimpleNamespace(**fields)

    def idempotency(self, terminal_id: str, request_id: str) -> Any:
        row = self.connection.execute(_SQLITE_IDEMPOTENCY_SQL, (terminal_id, request_id)).fetchone()
        if row is None:
            return None
        processors = _processors(idempotency_records, self._dialect, "result")
        return SimpleNamespace(
            **{name: value if processor is None else processor(value) for (name, processor), value in zip(processors, row, strict=True)}
        )


class SqliteSwipeTransaction:
    """A swipe's transaction on SQLite on a per-thread driver connection: write lock, BEGIN IMMEDIATE, commit.

    The same transaction as `UnitOfWork`, without SQLAlchemy's connection
    checkout and statement machinery, which cost more than SQLite does here;
    the SQL counter store joins it through `session` (the sqlite3 connection).
    """

    def __init__(self, connections: ThreadConnections[sqlite3.Connection], write_lock: SqliteWriteLock, dialect: Any) -> None:
        self._connections = connections
        self._write_lock = write_lock
        self._dialect = dialect

    def __enter__(self) -> SqliteSwipeTransaction:
        self._write_lock.__enter__()
        try:
            self.session = self._connections.get()
            self.session.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._write_lock.__exit__()
            raise
        self.repo = SqliteDirectRepository(self.session, self._dialect)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self.session.in_transaction:  # not committed
                self.session.rollback()
        finally:
            self._write_lock.__exit__()

    def commit(self) -> None:
        try:
            self.session.commit()
        except sqlite3.IntegrityError as error:
            self.session.rollback()
            if is_unique_violation(error):
                raise DuplicateKey(str(error)) from error
            raise


_TABLES = {table.name: table for table in (ledger, declines)}


def _idempotency_select(placeholder: str) -> str:
    """A stored answer by (terminal, request id), as driver SQL with the driver's `placeholder` (names from the schema)."""
    columns = ", ".join(column.name for column in idempotency_records.columns)
    return f"SELECT {columns} FROM {idempotency_records.name} WHERE terminal_id = {placeholder} AND request_id = {placeholder}"  # noqa: S608


_SQLITE_IDEMPOTENCY_SQL = _idempotency_select("?")
_PROCESSORS: dict[tuple[str, str], list[tuple[str, Any]]] = {}


def _processors(table: Table, dialect: Any, kind: str) -> list[tuple[str, Any]]:
    """Each column's SQLAlchemy bind or result processor (or None) for `dialect`, built once per table."""
    found = _PROCESSORS.get((table.name, kind))
    if found is None:
        found = []
        for column in table.columns:
            impl = column.type.dialect_impl(dialect)
            found.append((column.name, impl.bind_processor(dialect) if kind == "bind" else impl.result_processor(dialect, None)))
        _PROCESSORS[(table.name, kind)] = found
    return found


def _sqlite_insert_sql(table: Table) -> str:
    names = [column.name for column in table.columns]
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"  # noqa: S608  (schema names)


_SQLITE_INSERT_SQL = {table.name: _sqlite_insert_sql(table) for table in (ledger, declines, idempotency_records)}


Encode = Callable[[Any], bytes]


def _utc_text(value: datetime) -> bytes:
    # UtcDateTime's own rule: timezone-aware only, stored as UTC.
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value.astimezone(UTC).isoformat().encode("ascii")


def _integer_text(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"an integer column got {type(value).__name__}")
    return str(value).encode("ascii")


def _text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"a text column got {type(value).__name__}")
    # libpq reads a text parameter up to its first NUL: refuse it rather than store a cut value.
    if "\x00" in value:
        raise ValueError("a text column got a NUL character")
    return value.encode("utf-8")


def _column_encoder(column: Column[Any]) -> tuple[Encode, int]:
    """How a value of `column` travels to libpq: (encoder, format), format 0 text, 1 binary."""
    column_type = column.type
    if isinstance(column_type, JSON):
        return orjson.dumps, 0
    if isinstance(column_type, LargeBinary):
        return bytes, 1  # bytea in binary format is the bytes themselves
    if isinstance(column_type, Integer):  # BigInteger is an Integer
        return _integer_text, 0
    if isinstance(column_type, UtcDateTime):
        return _utc_text, 0
    if isinstance(column_type, String):
        return _text, 0
    raise TypeError(f"no libpq encoder for {column.table.name}.{column.name} ({column_type!r})")


class _DirectStatement:
    """A ledger row (entry or decline) and its idempotency record, inserted by one prepared statement.

    The SQL names every column of both tables (names from the schema, values as
    $n parameters); each parameter has the encoder its column's type asks for.
    Errors are psycopg's own: a unique-key clash becomes DuplicateKey, a lost
    connection or no answer within RECORD_ANSWER_S_MAX psycopg.OperationalError
    (the unit of work then drops the connection).
    """

    def __init__(self, table: Table) -> None:
        self.name = f"pos_engine_record_{table.name}".encode("ascii")
        row_columns = list(table.columns)
        idem_columns = list(idempotency_records.columns)
        row_values = ", ".join(f"${index}" for index in range(1, len(row_columns) + 1))
        idem_values = ", ".join(f"${index}" for index in range(len(row_columns) + 1, len(row_columns) + len(idem_columns) + 1))
        self.sql = (
            f"WITH recorded_row AS (INSERT INTO {table.name} ({', '.join(column.name for column in row_columns)}) "  # noqa: S608
            f"VALUES ({row_values})) "
            f"INSERT INTO {idempotency_records.name} ({', '.join(column.name for column in idem_columns)}) VALUES ({idem_values})"
        ).encode()
        self._row = [(column.name, *_column_encoder(column)) for column in row_columns]
        self.row_formats = [format_ for _name, _encode, format_ in self._row]
        self._formats = self.row_formats + _IDEMPOTENCY_FORMATS

    def prepare(self, pgconn: PGconn) -> None:
        """Prepare on a new connection (once: a prepared statement lives as long as its connection)."""
        _check(pgconn, pgconn.prepare(self.name, self.sql))

    def execute(self, pgconn: PGconn, fields: dict[str, Any], idempotency: dict[str, Any]) -> None:
        params = self.row_params(fields) + _idempotency_params(idempotency)
        pgconn.send_query_prepared(self.name, params, self._formats)
        _check(pgconn, _answer_within(pgconn, RECORD_ANSWER_S_MAX))

    def row_params(self, fields: dict[str, Any]) -> list[bytes | None]:
        """The row's values as the statement's parameters, in column order."""
        return _encoded(fields, self._row)


def _encoded(values: Mapping[str, Any], columns: list[tuple[str, Encode, int]]) -> list[bytes | None]:
    params: list[bytes | None] = []
    for name, encode, _format in columns:
        value = values[name]  # every column named: a missing one is a bug, not a NULL
        params.append(None if value is None else encode(value))
    return params


def _answer_within(pgconn: PGconn, timeout_s: float) -> PGresult:
    """The statement's result, read as libpq's own blocking exec would, but waiting at most `timeout_s`.

    First the rest of the statement goes out: psycopg's connections are
    non-blocking, so libpq keeps whatever the socket did not take at once (a
    large record, a full send buffer) until it is flushed.

    A database that does not answer in time (a stopped server, a lock held by a
    stuck transaction) gets its connection closed and a psycopg.OperationalError:
    the statement may still commit, which the caller finds out on a new
    connection (DirectRepository.record).
    """
    deadline = time.monotonic() + timeout_s
    waiting = select.poll()
    waiting.register(pgconn.socket, select.POLLIN | select.POLLOUT)
    while pgconn.flush():  # 1: part of the statement is still in libpq's buffer
        _wait_for_socket(pgconn, waiting, deadline, timeout_s)
        pgconn.consume_input()  # what the server sent meanwhile (an error, a notice); it flushes too
    waiting.modify(pgconn.socket, select.POLLIN)
    first: PGresult | None = None
    while True:
        while pgconn.is_busy():
            _wait_for_socket(pgconn, waiting, deadline, timeout_s)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if first is None:
            first = result
    if first is None:
        raise psycopg.OperationalError(f"the connection to PostgreSQL was lost: {pgconn.get_error_message()}")
    return first


def _wait_for_socket(pgconn: PGconn, waiting: select.poll, deadline: float, timeout_s: float) -> None:
    """Wait until the connection's socket is ready as `waiting` asks; past `deadline`, close it and raise."""
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms <= 0 or not waiting.poll(remaining_ms):
        pgconn.finish()
        raise psycopg.OperationalError(f"PostgreSQL did not answer the swipe's record within {timeout_s} s")


def _check(pgconn: PGconn, result: PGresult) -> None:
    if result.status == pq.ExecStatus.COMMAND_OK:
        return
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(f"the connection to PostgreSQL was lost: {pgconn.get_error_message()}")
    error = psycopg.errors.error_from_result(result)
    if is_unique_violation(error):
        raise DuplicateKey(str(error)) from error
    raise error


def limited_params(params: Mapping[str, Any], statement_timeout_ms: int | None) -> dict[str, Any]:
    """libpq parameters `params` with limits: give up connecting after POSTGRESQL_CONNECT_TIMEOUT_S, close when
    the host stops acknowledging (DEAD_HOST_PARAMS) and, if given, have the server cancel any statement that
    runs longer than `statement_timeout_ms`.

    What `params` says itself wins: its own connect_timeout, keepalives* and tcp_user_timeout, and its own
    options, which come after ours.
    """
    limited = {"connect_timeout": str(POSTGRESQL_CONNECT_TIMEOUT_S), **DEAD_HOST_PARAMS, **params}
    if statement_timeout_ms is not None:
        ours = f"-c statement_timeout={int(statement_timeout_ms)}"
        limited["options"] = f"{ours} {params['options']}" if params.get("options") else ours
    return limited


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection, with the limits `conninfo` carries (`limited_params`)."""
    return psycopg.connect(conninfo, autocommit=True)


def _connect_direct(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection for the swipe path, its record statements prepared."""
    connection = _connect(conninfo)
    try:
        for statement in _DIRECT_RECORD.values():
            statement.prepare(connection.pgconn)
    except BaseException:
        connection.close()
        raise
    return connection


_IDEMPOTENCY_COLUMNS = [(column.name, *_column_encoder(column)) for column in idempotency_records.columns]
_IDEMPOTENCY_FORMATS = [format_ for _name, _encode, format_ in _IDEMPOTENCY_COLUMNS]
_DIRECT_RECORD = {table.name: _DirectStatement(table) for table in (ledger, declines)}


def _idempotency_params(idempotency: Mapping[str, Any]) -> list[bytes | None]:
    return _encoded(idempotency, _IDEMPOTENCY_COLUMNS)


RECORD_GROUP_MAX = 8  # swipes recorded by one statement at most


class _GroupStatements:
    """Statements that record several swipes at once: `entries` ledger entries and `declined` declines, then every
    idempotency record, in one data-modifying statement (all or nothing); each prepared on a connection the first
    time a group of its mix is sent on it (with one thread a worker, never)."""

    def __init__(self) -> None:
        self._statements = {
            (entries, size - entries): (
                f"pos_engine_record_group_{entries}_{size - entries}".encode("ascii"),
                _group_sql(entries, size - entries),
            )
            for size in range(2, RECORD_GROUP_MAX + 1)
            for entries in range(size + 1)
        }
        self._prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @staticmethod
    def params(row: tuple[str, dict[str, Any], dict[str, Any]]) -> tuple[list[bytes | None], list[bytes | None]]:
        """A swipe's parameters: its ledger entry's or decline's, and its idempotency record's."""
        table_name, fields, idempotency = row
        return _DIRECT_RECORD[table_name].row_params(fields), _idempotency_params(idempotency)

    def execute(self, connection: psycopg.Connection[Any], group: list[_Waiting]) -> None:
        """Record `group`, each with its `params`, in one statement; raises as _DirectStatement.execute does."""
        ordered = [waiting for waiting in group if waiting.row[0] == ledger.name]
        entries = len(ordered)
        ordered += [waiting for waiting in group if waiting.row[0] != ledger.name]
        name, sql = self._statements[entries, len(ordered) - entries]
        pgconn = connection.pgconn
        with self._lock:
            prepared = self._prepared.setdefault(connection, set())
        if name not in prepared:
            _check(pgconn, pgconn.prepare(name, sql))
            prepared.add(name)
        params: list[bytes | None] = []
        formats: list[int] = []
        for waiting in ordered:
            params += waiting.params[0]
            formats += _DIRECT_RECORD[waiting.row[0]].row_formats
        # Idempotency keys in one order in every statement, so that two statements that each hold a key the other
        # waits for (two repeats in flight at once) cannot deadlock.
        for waiting in sorted(ordered, key=_request_key):
            params += waiting.params[1]
            formats += _IDEMPOTENCY_FORMATS
        pgconn.send_query_prepared(name, params, formats)
        _check(pgconn, _answer_within(pgconn, RECORD_ANSWER_S_MAX))


def _request_key(waiting: _Waiting) -> tuple[str, str]:
    idempotency = waiting.row[2]
    return idempotency["terminal_id"], idempotency["request_id"]


def _group_sql(entries: int, declined: int) -> bytes:
    number = 0

    def values(table: Table, rows: int) -> str:
        nonlocal number
        groups = []
        columns = len(table.columns)
        for _row in range(rows):
            groups.append("(" + ", ".join(f"${index}" for index in range(number + 1, number + columns + 1)) + ")")
            number += columns
        return ", ".join(groups)

    def insert(table: Table, rows: int) -> str:
        return f"INSERT INTO {table.name} ({', '.join(column.name for column in table.columns)}) VALUES {values(table, rows)}"  # noqa: S608

    parts = []
    if entries:
        parts.append(f"recorded_entries AS ({insert(ledger, entries)})")
    if declined:
        parts.append(f"recorded_declines AS ({insert(declines, declined)})")
    return f"WITH {', '.join(parts)} {insert(idempotency_records, entries + declined)}".encode()


_GROUP_STATEMENTS = _GroupStatements()


class _Waiting:
    """A swipe's record waiting in a RecordGroup: its row, then its outcome (None: recorded) or whether it leads next."""

    __slots__ = ("done", "error", "leads", "params", "row", "wake")

    def __init__(self, row: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
        self.row = row
        self.wake: threading.Lock | None = None
        self.done = False
        self.error: BaseException | None = None
        self.leads = False
        self.params: tuple[list[bytes | None], list[bytes | None]] = ([], [])


class RecordGroup:
    """Group commit for one process: records that arrive while another thread's record is on its way to PostgreSQL
    wait, and go together in one statement (one commit, one WAL flush) once it is back.

    The thread whose record finds no group in flight leads: it sends its own record at once, on its own connection.
    Records that come meanwhile queue; once the leader's outcome is known it hands the lead to the first of
    them, which sends all that queued (up to RECORD_GROUP_MAX) in one statement and wakes the rest with their
    outcomes. A statement of several records is all or nothing. If PostgreSQL refuses it for one of its rows (a
    duplicate key), nothing was written, and each record is sent again alone for its own outcome; if it cancels
    it (the statement limit, an operator), nothing was written and each record gets the error; if its answer is
    lost, each record's outcome is looked up as a lone record's is (DirectRepository.record_group). Any other
    failure of the sender leaves every record of its group OutcomeUnknown (caps kept). With one thread per
    process nothing ever waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._leading = False

    def record(self, repository: DirectRepository, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> None:
        me = _Waiting((table_name, fields, idempotency))
        with self._lock:
            if self._leading:
                me.wake = threading.Lock()
                me.wake.acquire()
                self._queue.append(me)
            else:
                self._leading = True
        if me.wake is not None:
            me.wake.acquire()  # released by a leader: with this record's outcome, or to lead
            if not me.leads:
                if me.error is not None:
                    raise me.error
                return
            with self._lock:
                group = self._queue[:RECORD_GROUP_MAX]
                del self._queue[:RECORD_GROUP_MAX]
        else:
            group = [me]
        try:
            repository.record_group(group)
        except Exception:  # a bug, or the process failing (poll, memory): the statement may be on its way
            log.exception("recording a group of %d swipes failed: their outcome is unknown", len(group))
        finally:
            for waiting in group:
                if not waiting.done:  # the sender failed or was stopped with the statement perhaps on its way
                    waiting.done, waiting.error = True, OutcomeUnknown("the swipe's record was interrupted")
                if waiting is not me:
                    waiting.leads = False
                    assert waiting.wake is not None
                    waiting.wake.release()
            with self._lock:
                if self._queue:
                    following = self._queue[0]
                    following.leads = True
                    assert following.wake is not None
                    following.wake.release()
                else:
                    self._leading = False
        if me.error is not None:
            raise me.error


_DIRECT_IDEMPOTENCY_SQL = _idempotency_select("%s")


class Database:
    """The engine and its session factory."""

    def __init__(self, url: str, *, statement_timeout_ms: int | None = None, **kwargs: Any) -> None:
        """Open `url`; with `statement_timeout_ms` (the server: pos_engine.config.Settings), PostgreSQL
        cancels any statement of a terminal's request that runs longer, and its connections give up
        connecting after POSTGRESQL_CONNECT_TIMEOUT_S.

        Terminals' requests use `unit_of_work`, `single_statement`, `swipe_transaction` and
        `terminal_read_engine`; `engine` and `read_engine` have no statement limit, for the background
        loads of the card directory and the registry, and for the CLI.
        """
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, **kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_sqlite = is_sqlite(self.url)
        # Registry reads need no write lock (SQLite) and no transaction round trips (PostgreSQL):
        # a deferred-BEGIN engine on SQLite, autocommit connections on PostgreSQL.
        if self.is_sqlite:
            self.read_engine = make_engine(self.url, immediate=False, **kwargs)
        else:
            self.read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.is_postgresql = self.engine.dialect.name == "postgresql"
        database_path = make_url(self.url).database
        self.write_lock = SqliteWriteLock(database_path) if self.is_sqlite and database_path and database_path != ":memory:" else None
        self._conninfo = ""
        self.terminal_engine, self.terminal_read_engine = self.engine, self.read_engine
        if self.is_postgresql:
            # The URL's parameters as SQLAlchemy's own psycopg connections read them. (Not the URL rendered
            # back as text: that encodes a space in `options` as `+`, which libpq reads as a `+`.)
            _args, url_params = self.engine.dialect.create_connect_args(make_url(self.url))
            url_params.pop("context", None)
            limits = limited_params(url_params, statement_timeout_ms)
            self._conninfo = psycopg.conninfo.make_conninfo("", **limits)
            if statement_timeout_ms is not None:
                connect_args = {name: limits[name] for name in ("connect_timeout", "options")}
                self.terminal_engine = make_engine(self.url, connect_args=connect_args, **kwargs)
                self.terminal_read_engine = self.terminal_engine.execution_options(isolation_level="AUTOCOMMIT")
        direct_conninfo = self._conninfo
        self._direct = (
            ThreadConnections(lambda: _connect_direct(direct_conninfo), lambda connection: connection.closed)
            if self.is_postgresql
            else None
        )
        self._record_group = RecordGroup() if self.is_postgresql else None
        self._sqlite_direct = ThreadConnections(self._connect_sqlite, _sqlite_is_closed) if self.write_lock is not None else None

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.terminal_engine, write_lock=self.write_lock)

    def read_snapshot(self) -> SnapshotUnitOfWork:
        """A read-only transaction over one moment of the whole database, without the write lock."""
        return SnapshotUnitOfWork(self.read_engine if self.is_sqlite else self.engine, sqlite=self.is_sqlite)

    def swipe_transaction(self) -> SqliteSwipeTransaction | UnitOfWork:
        """A swipe's transaction with the SQL counter store: on an SQLite file, on the driver connection."""
        if self.write_lock is not None and self._sqlite_direct is not None:
            return SqliteSwipeTransaction(self._sqlite_direct, self.write_lock, self.engine.dialect)
        return self.unit_of_work()

    def _connect_sqlite(self) -> sqlite3.Connection:
        database_path = make_url(self.url).database
        assert database_path
        connection = sqlite3.connect(database_path, check_same_thread=False)
        configure_sqlite(connection)
        return connection

    def single_statement(self) -> DirectUnitOfWork | UnitOfWork:
        """For one statement: on PostgreSQL an autocommit driver connection (one round trip), else a transaction."""
        if self._direct is not None:
            return DirectUnitOfWork(self._direct, self._conninfo, self._record_group)
        return self.unit_of_work()

    def dispose(self) -> None:
        for connections in (self._direct, self._sqlite_direct):
            if connections is not None:
                connections.close_all()
        self.engine.dispose()
        self.read_engine.dispose()
        if self.terminal_engine is not self.engine:
            self.terminal_engine.dispose()


_CARD_CHANGES_CURSOR_SQL = """
SELECT coalesce((SELECT max(seq) FROM card_changes), 0),
       ARRAY(SELECT xid::text::bigint FROM pg_snapshot_xip(pg_current_snapshot()) AS xid)
"""
# One statement, one snapshot: the rows and the transactions still running when they were read.
_CARD_CHANGES_SQL = """
SELECT ARRAY(SELECT xid::text::bigint FROM pg_snapshot_xip(pg_current_snapshot()) AS xid), changes.seq, changes.card_hash
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
  SELECT seq, card_hash FROM card_changes
  WHERE seq > %(after)s OR xid = ANY(%(running)s::bigint[])
  ORDER BY seq LIMIT %(limit)s
) AS changes ON true
"""

REGISTRY_VERSION_SQL = "SELECT version FROM registry_version WHERE id = 1"  # raised by triggers (migration 0003)


class SqlRegistry:
    """Registry lookups for the swipe path, each in a short read transaction.

    One terminal, merchant or card at a time is a terminal's request waiting (with the database's
    statement limit); the whole registry and batches of cards are the background loads (without).
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    def terminal(self, terminal_id: str) -> Terminal | None:
        with self.database.terminal_read_engine.connect() as connection:
            return Repository(connection).terminal(terminal_id)

    def merchant(self, merchant_id: str) -> Merchant | None:
        with self.database.terminal_read_engine.connect() as connection:
            return Repository(connection).merchant(merchant_id)

    def card_holder(self, card_hash: str) -> CardHolder | None:
        with self.database.terminal_read_engine.connect() as connection:
            return Repository(connection).card_holder(card_hash)

    def card_holders(self, card_hashes: list[str]) -> dict[str, CardHolder]:
        with self.database.read_engine.connect() as connection:
            return Repository(connection).card_holders(card_hashes)

    def all_card_rows(self, batch_rows: int = 50_000) -> Iterator[CardRowTuple]:
        """Every card with its member as a plain tuple (CARD_ROW_COLUMNS), in byte order of the card hash.

        A million of them load in seconds only on the driver's own cursor: through
        SQLAlchemy rows and CardHolder objects it takes five times as long.
        """
        if self.database.is_postgresql:
            # A server-side cursor streams the rows; it needs a (read-only) transaction.
            with self.database.engine.connect() as connection:
                driver = connection.connection.driver_connection
                assert driver is not None
                with driver.cursor(name="all_card_rows") as cursor:
                    cursor.itersize = batch_rows
                    cursor.execute(self._all_card_rows_sql(cards.c.card_hash.collate("C")))
                    yield from cursor
            return
        with self.database.read_engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            cursor = driver.cursor()
            try:
                cursor.execute(self._all_card_rows_sql(cards.c.card_hash))
                while batch := cursor.fetchmany(batch_rows):
                    for card_hash, card_id, last4, status, member_id, groups, in_service, year, district in batch:
                        yield card_hash, card_id, last4, status, member_id, groups, bool(in_service), year, district
            finally:
                cursor.close()

    def _all_card_rows_sql(self, order: Any) -> str:
        """The registry's card query (`CARD_ROWS`) as this database's driver SQL, in `order`."""
        return str(CARD_ROWS.order_by(order).compile(dialect=self.database.engine.dialect))

    def card_changes_cursor(self) -> CardChangesCursor:
        """Where to start reading `card_changes` so that no change committed from now on is missed."""
        with self.database.read_engine.connect() as connection:
            if self.database.is_postgresql:
                newest, running = connection.exec_driver_sql(_CARD_CHANGES_CURSOR_SQL).one()
                return int(newest), tuple(int(xid) for xid in running)
            return int(connection.exec_driver_sql("SELECT coalesce(max(seq), 0) FROM card_changes").scalar_one()), ()

    def card_changes(self, cursor: CardChangesCursor, limit: int) -> tuple[list[tuple[int, str]], CardChangesCursor]:
        """Changes (seq, card hash) after `cursor`, in seq order, at most `limit`, and the cursor for the next call.

        PostgreSQL hands out sequence numbers before commit, so a transaction may
        commit after a later number was already read. The cursor is therefore the
        newest seq read plus the transactions still running when it was read
        (`pg_snapshot_xip`, in the same snapshot as the rows): a change not read
        yet either comes after that seq or belongs to one of those transactions.
        Each change is read once, however long another transaction stays open.
        On SQLite writers take turns, so seqs commit in order. When `limit` rows
        come back, the caller must not assume it saw every change (reload).
        """
        after, running = cursor
        with self.database.read_engine.connect() as connection:
            if self.database.is_postgresql:
                rows = connection.exec_driver_sql(_CARD_CHANGES_SQL, {"after": after, "running": list(running), "limit": limit}).all()
                now_running = tuple(int(xid) for xid in rows[0][0]) if rows else running
                changes = [(int(seq), str(card_hash)) for _running, seq, card_hash in rows if seq is not None]
            else:
                found = connection.exec_driver_sql(
                    "SELECT seq, card_hash FROM card_changes WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
                ).all()
                now_running, changes = (), [(int(seq), str(card_hash)) for seq, card_hash in found]
        newest = max([after, *(seq for seq, _card_hash in changes)])
        return changes, (newest, now_running)

    def prune_card_changes(self, older_than_s: int) -> None:
        """Forget changes older than `older_than_s` seconds: every reader has long seen them."""
        with self.database.read_engine.connect() as connection:
            if self.database.is_postgresql:
                sql = "DELETE FROM card_changes WHERE changed_at < CURRENT_TIMESTAMP - make_interval(secs => %(seconds)s)"
                connection.exec_driver_sql(sql, {"seconds": int(older_than_s)})
            else:
                sql = "DELETE FROM card_changes WHERE changed_at < datetime('now', ?)"
                connection.exec_driver_sql(sql, (f"-{int(older_than_s)} seconds",))
            connection.commit()

    def all_terminals(self) -> list[Terminal]:
        with self.database.read_engine.connect() as connection:
            return Repository(connection).all_terminals()

    def all_merchants(self) -> list[Merchant]:
        with self.database.read_engine.connect() as connection:
            return Repository(connection).all_merchants()

    def fingerprint(self) -> str | None:
        """The registry's version: database triggers raise it whenever a terminal or merchant changes.

        None (reload every time) if its row is gone: someone emptied the table by hand.
        """
        with self.database.read_engine.connect() as connection:
            version = connection.exec_driver_sql(REGISTRY_VERSION_SQL).scalar()
        return None if version is None else str(version)
