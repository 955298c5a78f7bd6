"""Backends for the tests: SQLite with SQL counters, and real PostgreSQL with real Redis.

PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) must be
running: a test that needs one fails when it is missing, it never skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text

from pos_engine.domain.clock import FixedClock
from pos_engine.limits import TERMINAL_STATEMENT_TIMEOUT_MS
from pos_engine.store.db import Database
from pos_engine.store.migrate import upgrade
from pos_engine.store.models import Base
from pos_engine.store.redis_counters import RedisCounterStore
from pos_engine.store.sql_counters import SqlCounterStore
from tests.helpers import World

PG_ADMIN_DSN = os.environ.get("POS_ENGINE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("POS_ENGINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Wednesday 2026-11-25, 12:00 in Asia/Shanghai.
WEDNESDAY_NOON = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WEDNESDAY_NOON)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    name = f"pos_engine_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # fail, not skip, when Redis is down
    yield client
    client.close()


@dataclass
class Backend:
    name: str
    database: Database
    counters: Any
    url: str


def _truncate(database: Database) -> None:
    with database.engine.begin() as connection:
        # registry_version is the schema's bookkeeping, kept by triggers (migration 0003), not data.
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables if table.name != "registry_version")
        connection.execute(text(f"TRUNCATE {tables}"))


@contextmanager
def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """An empty backend of `kind`: 'sqlite', 'pg_redis' or 'pg_sql'."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/engine.sqlite3"
        upgrade(url)
        database = Database(url)
        yield Backend("sqlite", database, SqlCounterStore(database), url)
        database.dispose()
        return
    url = request.getfixturevalue("pg_url")
    database = Database(url, statement_timeout_ms=TERMINAL_STATEMENT_TIMEOUT_MS)  # as the server opens it
    _truncate(database)
    if kind == "pg_sql":
        yield Backend("pg_sql", database, SqlCounterStore(database), url)
    else:
        client = request.getfixturevalue("redis_client")
        counters = RedisCounterStore(client, namespace=f"test-{uuid.uuid4().hex}")
        yield Backend("pg_redis", database, counters, url)
        counters.reset()
        client.delete(counters._changes_key)
    database.dispose()


@pytest.fixture(params=["sqlite", "pg_redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """Each money test runs on the embedded default and on PostgreSQL + Redis."""
    with open_backend(request.param, request, tmp_path) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "pg_redis", "pg_sql"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """The two production pairs plus PostgreSQL with the SQL counter store (the fallback)."""
    with open_backend(request.param, request, tmp_path) as opened:
        yield opened


@pytest.fixture
def pg_redis_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """PostgreSQL with Redis counters only: for what only a store outside the ledger's transaction does."""
    with open_backend("pg_redis", request, tmp_path) as opened:
        yield opened


@pytest.fixture
def world(backend: Backend) -> World:
    return World(backend.database)


def forget_claims(counters: Any) -> None:
    """What a claim's REQUEST_CLAIM_S of quiet does in Redis: every request claim of the namespace is gone."""
    if isinstance(counters, RedisCounterStore):
        claims = list(counters.client.scan_iter(match=counters._claim_key("*")))
        if claims:
            counters.client.delete(*claims)


@pytest.fixture(scope="session")
def evicting_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own with a memory limit and `maxmemory-policy volatile-lru`, as some managed services
    default to: it would evict counters that have a time to live. Stopped afterwards."""
    assert shutil.which("redis-server"), "redis-server is needed"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tmp_path_factory.mktemp("evicting-redis")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
    server = subprocess.Popen(
        [*command, "--appendonly", "no", "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"], stdout=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "the evicting Redis did not start"
            time.sleep(0.05)
    client.close()
    yield url
    server.terminate()
    server.wait(10)
