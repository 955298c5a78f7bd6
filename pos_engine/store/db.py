"""Engines and units of work for PostgreSQL and the embedded SQLite default."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.limits import SQLITE_BUSY_TIMEOUT_MS
from pos_engine.service.errors import DuplicateKey
from pos_engine.store.repository import Repository


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for a plain postgresql:// URL."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def make_engine(url: str, *, immediate: bool = True, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and write transactions that lock at BEGIN.

    Several gunicorn workers share one SQLite file. `BEGIN IMMEDIATE` takes the
    write lock when a transaction starts, so the check-reserve-insert sequence
    of a swipe runs serialised across processes, never interleaved.
    """
    url = normalise_url(url)
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
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

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _is_unique_violation(error: IntegrityError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None)  # psycopg
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(error.orig)


class UnitOfWork:
    """One database transaction; it rolls back unless `commit()` is called."""

    session: Session
    repo: Repository

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def __enter__(self) -> UnitOfWork:
        self.session = self._session_factory()
        self.repo = Repository(self.session)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.session.rollback()
        finally:
            self.session.close()

    def commit(self) -> None:
        """Commit; a unique-key clash (a concurrent duplicate request) becomes DuplicateKey."""
        try:
            self.session.commit()
        except IntegrityError as error:
            self.session.rollback()
            if _is_unique_violation(error):
                raise DuplicateKey(str(error.orig)) from error
            raise

    def rollback(self) -> None:
        self.session.rollback()


class Database:
    """The engine and its session factory."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, **kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_sqlite = is_sqlite(self.url)
        # SQLite reads need no write lock: they get an engine whose transactions begin deferred.
        self.read_engine = make_engine(self.url, immediate=False, **kwargs) if self.is_sqlite else self.engine
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self.is_postgresql = self.engine.dialect.name == "postgresql"

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.sessions)

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


class SqlRegistry:
    """Registry lookups for the swipe path, each in a short read transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def terminal(self, terminal_id: str) -> Terminal | None:
        with self.database.read_sessions() as session:
            return Repository(session).terminal(terminal_id)

    def merchant(self, merchant_id: str) -> Merchant | None:
        with self.database.read_sessions() as session:
            return Repository(session).merchant(merchant_id)

    def card_holder(self, card_hash: str) -> CardHolder | None:
        with self.database.read_sessions() as session:
            return Repository(session).card_holder(card_hash)
