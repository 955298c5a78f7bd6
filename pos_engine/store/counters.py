"""Choose the counter store by URL: Redis when a URL is given, else the SQL store."""

from __future__ import annotations

from pos_engine.limits import REDIS_SOCKET_TIMEOUT_S
from pos_engine.service.ports import CounterStore
from pos_engine.store.db import Database
from pos_engine.store.sql_counters import SqlCounterStore


def counter_store_from_url(
    redis_url: str | None, database: Database, namespace: str = "pos", socket_timeout_s: float | None = REDIS_SOCKET_TIMEOUT_S
) -> CounterStore:
    """`redis://…` or `redis-cluster://…` → Redis (imported only then); None → the SQL store."""
    if not redis_url:
        return SqlCounterStore(database)
    from pos_engine.store.redis_counters import RedisCounterStore

    return RedisCounterStore.from_url(redis_url, namespace=namespace, socket_timeout_s=socket_timeout_s)
