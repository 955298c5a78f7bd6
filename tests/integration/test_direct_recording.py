"""The swipe path's driver-level writes store exactly what the SQLAlchemy path stores and reads."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg import pq

from pos_engine.limits import TERMINAL_STATEMENT_TIMEOUT_MS
from pos_engine.service.errors import DuplicateKey
from pos_engine.store.db import Database
from tests.conftest import Backend
from tests.helpers import finishes_within, silent_server

SHANGHAI = timezone(timedelta(hours=8))


def _fields(entry_id: str, request_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    occurred = datetime(2026, 11, 29, 12, 30, 15, 123456, tzinfo=SHANGHAI)  # stored as UTC
    fields = {
        "entry_id": entry_id,
        "kind": "authorisation",
        "authorisation_id": entry_id,
        "terminal_id": "t-1",
        "request_id": request_id,
        "merchant_id": "m-1",
        "card_id": "card-1",
        "card_last4": "0001",
        "amount_fen": 10_000,
        "discount_fen": 500,
        "subsidy_fen": 950,
        "payable_fen": 8_550,
        "occurred_at": occurred,
        "recorded_at": occurred + timedelta(seconds=1),
        "rules_version": "v-1",
        "benefits": [{"campaign_id": "c", "rule_id": "r", "kind": "subsidy", "amount_fen": 950, "funders": {"city": 950}}],
        "counter_deltas": {"rule:c/r:card:card-1:month:2026-11:fen": 950, "rule:c/r:card:card-1:month:2026-11:uses": 1},
    }
    idempotency = {
        "terminal_id": "t-1",
        "request_id": request_id,
        "request_hash": "h" * 64,
        "status_code": 200,
        "response_body": b'{"status":"approved"}',
        "resource_id": entry_id,
        "created_at": occurred + timedelta(seconds=1),
    }
    return fields, idempotency


def _row(database: Database, entry_id: str) -> dict[str, Any]:
    with database.unit_of_work() as uow:
        row = uow.repo.authorisation(entry_id)
        assert row is not None
        return {key: value for key, value in row._asdict().items() if key not in ("entry_id", "authorisation_id", "request_id")}


def _stored(database: Database, entry_id: str) -> tuple[Any, ...]:
    """The stored values as the database holds them, without any type processing."""
    with database.engine.connect() as connection:
        ledger_row = connection.exec_driver_sql(
            "SELECT occurred_at, recorded_at, benefits, counter_deltas, amount_fen FROM ledger_entries WHERE entry_id = "
            + ("?" if database.is_sqlite else "%(id)s"),
            (entry_id,) if database.is_sqlite else {"id": entry_id},
        ).one()
        idempotency_row = connection.exec_driver_sql(
            "SELECT created_at, response_body, status_code FROM idempotency_records WHERE resource_id = "
            + ("?" if database.is_sqlite else "%(id)s"),
            (entry_id,) if database.is_sqlite else {"id": entry_id},
        ).one()
    return (*ledger_row, *(bytes(value) if isinstance(value, bytes | memoryview) else value for value in idempotency_row))


@pytest.mark.parametrize("kind", ["sqlite", "pg_redis"])
def test_a_swipe_recorded_on_the_driver_reads_back_as_one_recorded_through_sqlalchemy(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    from tests.conftest import open_backend

    with open_backend(kind, request, tmp_path) as backend:
        database = backend.database
        lighter = database.swipe_transaction if kind == "sqlite" else database.single_statement
        assert type(lighter()).__name__ in ("SqliteSwipeTransaction", "DirectUnitOfWork")  # the path under test
        fields, idempotency = _fields("au_direct", "req-direct")
        with lighter() as uow:
            uow.repo.record("ledger_entries", fields, idempotency)
            uow.commit()
        fields, idempotency = _fields("au_orm", "req-orm")
        with database.unit_of_work() as uow:
            uow.repo.record("ledger_entries", fields, idempotency)
            uow.commit()

        direct, orm = _row(database, "au_direct"), _row(database, "au_orm")
        assert direct == orm
        assert _stored(database, "au_direct") == _stored(database, "au_orm")  # the same bytes in the database, too
        assert direct["occurred_at"] == datetime(2026, 11, 29, 4, 30, 15, 123456, tzinfo=UTC)
        with lighter() as uow:
            stored = uow.repo.idempotency("t-1", "req-direct")
        with database.unit_of_work() as uow:
            expected = uow.repo.idempotency("t-1", "req-direct")
        assert (stored.request_hash, stored.status_code, bytes(stored.response_body), stored.created_at) == (
            expected.request_hash,
            expected.status_code,
            bytes(expected.response_body),
            expected.created_at,
        )

        # A repeat of the request id is refused as a duplicate, and nothing of it is kept.
        fields, idempotency = _fields("au_again", "req-direct")
        with pytest.raises(DuplicateKey), lighter() as uow:
            uow.repo.record("ledger_entries", fields, idempotency)
            uow.commit()
        with database.unit_of_work() as uow:
            assert uow.repo.authorisation("au_again") is None


def test_the_sqlite_swipe_transaction_rolls_back_unless_committed(backend: Backend) -> None:
    # On PostgreSQL the swipe transaction is the ordinary unit of work, which the money tests cover.
    fields, idempotency = _fields("au_dropped", "req-dropped")
    with backend.database.swipe_transaction() as uow:
        uow.repo.record("ledger_entries", fields, idempotency)
    with backend.database.unit_of_work() as uow:
        assert uow.repo.authorisation("au_dropped") is None


def test_a_text_value_libpq_would_cut_short_is_refused_and_nothing_is_written(pg_url: str) -> None:
    """libpq reads a text parameter up to its first NUL: the direct write refuses one instead of storing a cut value."""
    database = Database(pg_url)
    try:
        fields, idempotency = _fields("au_nul", "req-nul")
        fields["merchant_id"] = "m-1\x00-and-more"
        with pytest.raises(ValueError, match="NUL"), database.single_statement() as uow:
            uow.repo.record("ledger_entries", fields, idempotency)
        with database.unit_of_work() as uow:
            assert uow.repo.authorisation("au_nul") is None
            assert uow.repo.idempotency("t-1", "req-nul") is None
    finally:
        database.dispose()


def test_a_record_larger_than_the_socket_takes_at_once_is_sent_whole(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """psycopg's connections are non-blocking: libpq keeps what the socket does not take until it is flushed.

    A small send buffer stands in for a large `?explain=true` answer on a network link: the record
    must reach the server whole and be answered, not wait out its timeout on a half-sent statement.
    """
    database = Database(pg_url, statement_timeout_ms=TERMINAL_STATEMENT_TIMEOUT_MS)
    try:
        fields, idempotency = _fields("au_large", "req-large")
        idempotency["response_body"] = bytes(range(256)) * 1200  # 300 KiB, stored twice in a real explain
        with database.single_statement() as uow:
            pgconn = uow.repo.connection.pgconn
            backend_pid = pgconn.backend_pid
            sock = socket.socket(fileno=pgconn.socket)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            finally:
                sock.detach()  # the descriptor stays libpq's
            with caplog.at_level(logging.WARNING):
                uow.repo.record("ledger_entries", fields, idempotency)
            assert pgconn.status == pq.ConnStatus.OK and pgconn.backend_pid == backend_pid  # answered on its own connection
        assert not [record for record in caplog.records if "lost" in record.getMessage()]
        with database.unit_of_work() as uow:
            stored = uow.repo.idempotency("t-1", "req-large")
            assert bytes(stored.response_body) == idempotency["response_body"]
    finally:
        database.dispose()


@pytest.mark.parametrize("opening", ["the swipe's record", "a terminal's transaction", "a registry lookup"])
def test_a_terminal_request_gives_up_connecting_to_a_database_that_never_answers(opening: str) -> None:
    """A server that takes the connection and never speaks: the request fails in seconds, not never."""
    import psycopg
    import sqlalchemy.exc

    from pos_engine.store.db import SqlRegistry

    with silent_server() as port:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/pos_engine"
        database = Database(url, statement_timeout_ms=TERMINAL_STATEMENT_TIMEOUT_MS)
        try:

            def open_single_statement() -> None:
                with database.single_statement():
                    pass

            def open_unit_of_work() -> None:
                with database.unit_of_work():
                    pass

            calls = {
                "the swipe's record": open_single_statement,
                "a terminal's transaction": open_unit_of_work,
                "a registry lookup": lambda: SqlRegistry(database).terminal("t-1"),
            }
            outcome = finishes_within(30, calls[opening])  # connect_timeout is 2 s; without it, TCP's minutes
            assert outcome[:1] == ["raised"], "still connecting"
            assert isinstance(outcome[1], psycopg.OperationalError | sqlalchemy.exc.OperationalError)
        finally:
            database.dispose()


def _setting(connection: Any, name: str) -> str:
    """A server setting as the session on `connection` (SQLAlchemy's or psycopg's own) sees it."""
    if hasattr(connection, "exec_driver_sql"):
        return str(connection.exec_driver_sql(f"SHOW {name}").scalar())
    return str(connection.execute(f"SHOW {name}").fetchone()[0])


def test_the_server_s_connections_have_the_statement_limit_and_the_cli_s_and_background_loads_do_not(pg_url: str) -> None:
    server = Database(pg_url, statement_timeout_ms=1000)
    cli = Database(pg_url)
    try:
        with server.unit_of_work() as uow:
            assert _setting(uow.connection, "statement_timeout") == "1s"
        with server.terminal_read_engine.connect() as connection:
            assert _setting(connection, "statement_timeout") == "1s"
        with server.single_statement() as uow:
            assert _setting(uow.repo.connection, "statement_timeout") == "1s"
        with server.read_engine.connect() as connection:  # the card directory and registry loads
            assert _setting(connection, "statement_timeout") == "0"
        with cli.unit_of_work() as uow:
            assert _setting(uow.connection, "statement_timeout") == "0"
        with cli.single_statement() as uow:
            assert _setting(uow.repo.connection, "statement_timeout") == "0"
    finally:
        server.dispose()
        cli.dispose()


def test_the_database_url_s_own_statement_timeout_and_options_win(pg_url: str) -> None:
    """An operator sets options in the URL: they come after the engine's own, so theirs apply."""
    server = Database(f"{pg_url}?options=-c%20statement_timeout%3D5s%20-c%20application_name%3Dtill", statement_timeout_ms=1000)
    try:
        with server.unit_of_work() as uow:
            assert _setting(uow.connection, "statement_timeout") == "5s"
            assert _setting(uow.connection, "application_name") == "till"
        with server.single_statement() as uow:
            assert _setting(uow.repo.connection, "statement_timeout") == "5s"
    finally:
        server.dispose()


def _tcp_options(fd: int) -> tuple[int, int, int]:
    import os
    import socket

    sock = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it leaves the connection open
    try:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )
    finally:
        sock.close()


def test_every_connection_to_postgresql_closes_soon_after_its_host_stops_acknowledging(pg_url: str) -> None:
    """Keepalives and TCP_USER_TIMEOUT on the server's connections, the background loads' and the CLI's alike;
    the URL's own settings win."""
    from pos_engine.limits import POSTGRESQL_DEAD_HOST_S
    from pos_engine.store.db import DEAD_HOST_PARAMS

    expected = (1, int(DEAD_HOST_PARAMS["keepalives_idle"]), POSTGRESQL_DEAD_HOST_S * 1000)
    server = Database(pg_url, statement_timeout_ms=TERMINAL_STATEMENT_TIMEOUT_MS)
    cli = Database(pg_url)
    tuned = Database(f"{pg_url}?keepalives_idle=42&tcp_user_timeout=4321", statement_timeout_ms=TERMINAL_STATEMENT_TIMEOUT_MS)
    try:
        for database in (server, cli):
            for engine in (database.engine, database.read_engine, database.terminal_engine, database.terminal_read_engine):
                with engine.connect() as connection:
                    assert _tcp_options(connection.connection.dbapi_connection.pgconn.socket) == expected
            with database.single_statement() as uow:
                assert _tcp_options(uow.repo.connection.pgconn.socket) == expected
        with tuned.unit_of_work() as uow:
            assert _tcp_options(uow.connection.connection.dbapi_connection.pgconn.socket) == (1, 42, 4321)
        with tuned.single_statement() as uow:
            assert _tcp_options(uow.repo.connection.pgconn.socket) == (1, 42, 4321)
    finally:
        for database in (server, cli, tuned):
            database.dispose()
