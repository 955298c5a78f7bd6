"""Engines and units of work for PostgreSQL and the embedded SQLite default."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.limits import SQLITE_BUSY_TIMEOUT_MS
from pos_engine.service.errors import DuplicateKey
from pos_engine.store.repository import Repository, is_unique_violation


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
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if immediate:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Without `immediate` (registry reads) no BEGIN is sent: each SELECT runs on its own,
    # in autocommit, which WAL mode serves without touching the write lock.

    return engine


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
    """One database transaction on a Core connection; it rolls back unless `commit()` is called.

    A `single_statement` unit of work promises to write with one statement
    (`Repository.record`): on PostgreSQL it then runs in autocommit, so that one
    statement is the whole transaction, in one round trip. Elsewhere it is an
    ordinary transaction.
    """

    connection: Connection
    repo: Repository

    def __init__(self, engine: Engine, *, single_statement: bool = False, write_lock: SqliteWriteLock | None = None) -> None:
        self._engine = engine
        self._autocommit = single_statement and engine.dialect.name == "postgresql"
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
        if self._autocommit:
            self.connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._transaction = None
        else:
            self.connection = self._engine.connect()
            self._transaction = self.connection.begin()
        self.repo = Repository(self.connection, single_statement=self._autocommit)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._transaction is not None and self._transaction.is_active:
                self._transaction.rollback()
        finally:
            try:
                self.connection.close()
            finally:
                if self._write_lock is not None:
                    self._write_lock.__exit__()

    def commit(self) -> None:
        """Commit; a unique-key clash (a concurrent duplicate request) becomes DuplicateKey."""
        if self._transaction is None:
            return  # autocommit: each statement committed itself
        try:
            self._transaction.commit()
        except IntegrityError as error:
            if self._transaction.is_active:
                self._transaction.rollback()
            if is_unique_violation(error):
                raise DuplicateKey(str(error.orig)) from error
            raise


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

    def unit_of_work(self, *, single_statement: bool = False) -> UnitOfWork:
        return UnitOfWork(self.engine, single_statement=single_statement, write_lock=self.write_lock)

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


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
