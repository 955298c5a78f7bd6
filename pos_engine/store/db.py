"""Engines and units of work for PostgreSQL and the embedded SQLite default."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import orjson
import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.json import Json
from sqlalchemy import JSON, Connection, Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.limits import SQLITE_BUSY_TIMEOUT_MS
from pos_engine.service.cards import CardChangesCursor, CardRowTuple
from pos_engine.service.errors import DuplicateKey
from pos_engine.store.repository import Repository, declines, idempotency_records, is_unique_violation, ledger


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


def make_engine(url: str, *, immediate: bool = True, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and write transactions that lock at BEGIN.

    Several gunicorn workers share one SQLite file. `BEGIN IMMEDIATE` takes the
    write lock when a transaction starts, so the check-reserve-insert sequence
    of a swipe runs serialised across processes, never interleaved.
    """
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
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            # A forked worker opens its own file: a descriptor shared across a fork shares its lock.
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
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


class DirectRepository:
    """The two statements of a single-statement unit of work, on a driver connection (PostgreSQL).

    The swipe path's one write (`record`) and the wait for a concurrent duplicate
    (`idempotency`), sent straight to psycopg as prepared statements: SQLAlchemy's
    connection checkout, compilation cache and result machinery cost more than
    the statement itself (measured: see docs/performance.md).
    """

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def record(self, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> Any:
        """Both rows in one statement (a data-modifying CTE): both or neither."""
        params = {f"row_{key}": Json(value, dumps=_json_text) if key in _JSON_FIELDS else value for key, value in fields.items()}
        params.update({f"idem_{key}": value for key, value in idempotency.items()})
        try:
            self.connection.execute(_DIRECT_RECORD_SQL[table_name], params, prepare=True)
        except psycopg.errors.UniqueViolation as error:
            raise DuplicateKey(str(error)) from error
        return SimpleNamespace(**fields)

    def idempotency(self, terminal_id: str, request_id: str) -> Any:
        cursor = self.connection.cursor(row_factory=namedtuple_row)
        return cursor.execute(_DIRECT_IDEMPOTENCY_SQL, (terminal_id, request_id), prepare=True).fetchone()


class DirectUnitOfWork:
    """A single-statement unit of work on PostgreSQL: one autocommit driver connection per thread."""

    def __init__(self, connections: _DirectConnections) -> None:
        self._connections = connections
        self.session = None  # no transaction for a counter store to join: each statement commits itself

    def __enter__(self) -> DirectUnitOfWork:
        self.repo = DirectRepository(self._connections.get())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            self._connections.discard()  # broken: the next unit of work connects afresh

    def commit(self) -> None:
        """Nothing to do: the one statement committed itself."""


class _DirectConnections:
    """One autocommit psycopg connection per thread and process, opened on first use."""

    def __init__(self, url: str) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[tuple[int, psycopg.Connection[Any]]] = []
        # Close what is still open when this is dropped without `close_all` (psycopg warns otherwise).
        weakref.finalize(self, _close_connections, self._opened)

    def get(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed or self._local.pid != os.getpid():
            connection = psycopg.connect(self._conninfo, autocommit=True)
            self._local.connection, self._local.pid = connection, os.getpid()
            with self._lock:
                self._opened[:] = [(pid, opened) for pid, opened in self._opened if not opened.closed] + [(os.getpid(), connection)]
        return connection

    def discard(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None and self._local.pid == os.getpid():
            connection.close()

    def close_all(self) -> None:
        with self._lock:
            _close_connections(self._opened)


def _close_connections(opened: list[tuple[int, psycopg.Connection[Any]]]) -> None:
    for pid, connection in opened:
        if pid == os.getpid():  # a connection inherited across a fork belongs to the parent
            connection.close()
    opened.clear()


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
            sql, processors = _sqlite_insert(table, self._dialect)
            row = [values[name] if processor is None else processor(values[name]) for name, processor in processors]
            try:
                self.connection.execute(sql, row)
            except sqlite3.IntegrityError as error:
                if "UNIQUE constraint failed" in str(error):
                    raise DuplicateKey(str(error)) from error
                raise
        return SimpleNamespace(**fields)

    def idempotency(self, terminal_id: str, request_id: str) -> Any:
        names = [column.name for column in idempotency_records.columns]
        row = self.connection.execute(_SQLITE_IDEMPOTENCY_SQL, (terminal_id, request_id)).fetchone()
        if row is None:
            return None
        values = {}
        for column, value in zip(idempotency_records.columns, row, strict=True):
            processor = column.type.dialect_impl(self._dialect).result_processor(self._dialect, None)
            values[column.name] = value if processor is None else processor(value)
        assert list(values) == names
        return SimpleNamespace(**values)


class SqliteSwipeTransaction:
    """A swipe's transaction on SQLite on a per-thread driver connection: write lock, BEGIN IMMEDIATE, commit.

    The same transaction as `UnitOfWork`, without SQLAlchemy's connection
    checkout and statement machinery, which cost more than SQLite does here;
    the SQL counter store joins it through `session` (the sqlite3 connection).
    """

    def __init__(self, database: Database, write_lock: SqliteWriteLock) -> None:
        self._database = database
        self._write_lock = write_lock

    def __enter__(self) -> SqliteSwipeTransaction:
        self._write_lock.__enter__()
        try:
            self.session = self._database.sqlite_driver_connection()
            self.session.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._write_lock.__exit__()
            raise
        self.repo = SqliteDirectRepository(self.session, self._database.engine.dialect)
        self._committed = False
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if not self._committed and self.session.in_transaction:
                self.session.rollback()
        finally:
            self._write_lock.__exit__()

    def commit(self) -> None:
        try:
            self.session.commit()
        except sqlite3.IntegrityError as error:
            self.session.rollback()
            if "UNIQUE constraint failed" in str(error):
                raise DuplicateKey(str(error)) from error
            raise
        self._committed = True


_TABLES = {table.name: table for table in (ledger, declines)}
_SQLITE_IDEMPOTENCY_SQL = (  # names from the schema
    f"SELECT {', '.join(column.name for column in idempotency_records.columns)} "  # noqa: S608
    "FROM idempotency_records WHERE terminal_id = ? AND request_id = ?"
)
_SQLITE_INSERTS: dict[str, tuple[str, list[tuple[str, Any]]]] = {}


def _sqlite_insert(table: Table, dialect: Any) -> tuple[str, list[tuple[str, Any]]]:
    """The INSERT for `table` with qmark parameters, and each column's bind processor (or None), built once."""
    found = _SQLITE_INSERTS.get(table.name)
    if found is None:
        names = [column.name for column in table.columns]
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"  # noqa: S608  (schema names)
        found = sql, [(column.name, column.type.dialect_impl(dialect).bind_processor(dialect)) for column in table.columns]
        _SQLITE_INSERTS[table.name] = found
    return found


def _direct_record_sql(table: Table) -> str:
    row_columns = ", ".join(column.name for column in table.columns)
    row_values = ", ".join(f"%(row_{column.name})s" for column in table.columns)
    idem_columns = ", ".join(column.name for column in idempotency_records.columns)
    idem_values = ", ".join(f"%(idem_{column.name})s" for column in idempotency_records.columns)
    # Names from the schema, values as parameters.
    return (
        f"WITH recorded_row AS (INSERT INTO {table.name} ({row_columns}) VALUES ({row_values})) "  # noqa: S608
        f"INSERT INTO {idempotency_records.name} ({idem_columns}) VALUES ({idem_values})"
    )


_DIRECT_RECORD_SQL = {table.name: _direct_record_sql(table) for table in (ledger, declines)}
_DIRECT_IDEMPOTENCY_SQL = (  # names from the schema
    f"SELECT {', '.join(column.name for column in idempotency_records.columns)} "  # noqa: S608
    "FROM idempotency_records WHERE terminal_id = %s AND request_id = %s"
)
_JSON_FIELDS = frozenset(column.name for column in ledger.columns if isinstance(column.type, JSON))


class Database:
    """The engine and its session factory."""

    def __init__(self, url: str, **kwargs: Any) -> None:
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
        self._direct = _DirectConnections(self.url) if self.is_postgresql else None
        self._sqlite_local = threading.local()
        self._sqlite_lock = threading.Lock()
        self._sqlite_opened: list[tuple[int, sqlite3.Connection]] = []

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.engine, write_lock=self.write_lock)

    def swipe_transaction(self) -> SqliteSwipeTransaction | UnitOfWork:
        """A swipe's transaction with the SQL counter store: on an SQLite file, on the driver connection."""
        if self.write_lock is not None:
            return SqliteSwipeTransaction(self, self.write_lock)
        return self.unit_of_work()

    def sqlite_driver_connection(self) -> sqlite3.Connection:
        """This thread's own sqlite3 connection (configured like every other), kept open for its life."""
        local = self._sqlite_local
        if getattr(local, "pid", None) != os.getpid():
            # Outside the pool: a thread holds it for its life (closed when the thread ends).
            database_path = make_url(self.url).database
            assert database_path
            local.connection = sqlite3.connect(database_path, check_same_thread=False)
            configure_sqlite(local.connection)
            local.pid = os.getpid()
            with self._sqlite_lock:
                self._sqlite_opened.append((os.getpid(), local.connection))
        connection: sqlite3.Connection = local.connection
        return connection

    def single_statement(self) -> DirectUnitOfWork | UnitOfWork:
        """For one statement: on PostgreSQL an autocommit driver connection (one round trip), else a transaction."""
        if self._direct is not None:
            return DirectUnitOfWork(self._direct)
        return self.unit_of_work()

    def dispose(self) -> None:
        if self._direct is not None:
            self._direct.close_all()
        with self._sqlite_lock:
            for pid, connection in self._sqlite_opened:
                if pid == os.getpid():
                    connection.close()
            self._sqlite_opened.clear()
        self._sqlite_local = threading.local()
        self.engine.dispose()
        self.read_engine.dispose()


_ALL_CARD_ROWS_SQL = (
    "SELECT c.card_hash, c.card_id, c.last4, c.status, m.member_id, m.groups, m.in_service, m.annual_review_year, m.district "
    "FROM cards AS c JOIN members AS m ON m.member_id = c.member_id ORDER BY {order}"
)
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

REGISTRY_FINGERPRINT_SQL = """
SELECT md5(
  coalesce((SELECT string_agg(concat_ws(':', terminal_id, merchant_id, status, md5(secret)), ',' ORDER BY terminal_id)
            FROM terminals), '')
  || '|' ||
  coalesce((SELECT string_agg(concat_ws(':', merchant_id, name, category, district, status), ',' ORDER BY merchant_id)
            FROM merchants), ''))
"""


class SqlRegistry:
    """Registry lookups for the swipe path, each in a short read transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def terminal(self, terminal_id: str) -> Terminal | None:
        with self.database.read_engine.connect() as connection:
            return Repository(connection).terminal(terminal_id)

    def merchant(self, merchant_id: str) -> Merchant | None:
        with self.database.read_engine.connect() as connection:
            return Repository(connection).merchant(merchant_id)

    def card_holder(self, card_hash: str) -> CardHolder | None:
        with self.database.read_engine.connect() as connection:
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
                    cursor.execute(_ALL_CARD_ROWS_SQL.format(order='c.card_hash COLLATE "C"'))
                    yield from cursor
            return
        with self.database.read_engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            cursor = driver.cursor()
            try:
                cursor.execute(_ALL_CARD_ROWS_SQL.format(order="c.card_hash"))
                while batch := cursor.fetchmany(batch_rows):
                    for card_hash, card_id, last4, status, member_id, groups, in_service, year, district in batch:
                        yield card_hash, card_id, last4, status, member_id, groups, bool(in_service), year, district
            finally:
                cursor.close()

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
        """On PostgreSQL, an md5 over every terminal and merchant, computed by the server; elsewhere None."""
        if not self.database.is_postgresql:
            return None
        with self.database.read_engine.connect() as connection:
            return str(connection.exec_driver_sql(REGISTRY_FINGERPRINT_SQL).scalar_one())
