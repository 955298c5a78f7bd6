"""GET /healthz: 200 while the worker can serve swipes, 503 naming the store it cannot reach."""

from __future__ import annotations

from typing import Any

import pytest

from pos_engine.service.context import EngineContext
from tests.conftest import Backend


def test_a_worker_that_reaches_its_stores_is_ok(app: Any, context: EngineContext) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "rules_version": context.rulebook.version}


def test_a_worker_that_cannot_reach_its_database_is_unavailable(app: Any, context: EngineContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    def down(*_args: Any) -> None:
        raise OperationalError("SELECT …", {}, Exception("could not connect to server"))

    monkeypatch.setattr(context.registry, "terminal", down)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["database_error"].startswith("OperationalError")
    assert "counters_error" not in body


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)  # the SQL counter store is the database
def test_a_worker_that_cannot_reach_redis_is_unavailable(
    app: Any, context: EngineContext, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    def down(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(context.counters, "read", down)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["counters_error"] == "ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."
    assert "database_error" not in body


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_worker_whose_redis_may_evict_counters_is_unavailable(
    app: Any, context: EngineContext, backend: Backend, evicting_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pos_engine.store.redis_counters import RedisCounterStore

    monkeypatch.setattr(context, "counters", RedisCounterStore.from_url(evicting_redis_url, namespace=backend.counters.namespace))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["counters_error"].startswith("CountersMisconfigured: Redis may evict counters to make room")
    assert "maxmemory-policy volatile-lru" in body["counters_error"]


def test_the_openapi_document_describes_healthz_as_it_answers(app: Any, context: EngineContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from pos_engine.api.schemas import HealthSchema

    client = app.test_client()
    operation = client.get("/openapi.json").get_json()["paths"]["/healthz"]["get"]
    assert operation["security"] == []  # unsigned, unlike every terminal operation
    assert sorted(operation["responses"]) == ["200", "503"]
    HealthSchema().load(client.get("/healthz").get_json())  # raises on any field the document does not describe

    def down(*_args: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(context.registry, "terminal", down)
    HealthSchema().load(client.get("/healthz").get_json())
