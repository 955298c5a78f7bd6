"""The straightforward baseline: a Flask endpoint doing one Redis script call and one SQLAlchemy insert per swipe.

The performance issue calibrates its floors on this design ("a straightforward
Redis call plus one SQLAlchemy insert per request measured about 25-30 % of the
ceiling"). `loadtests/bench.py` serves it under the same gunicorn configuration
as the engine, so the engine can be read against it as well as against the
bare ceiling (`loadtests/ceiling_app.py`): on hardware where the ceiling moves,
this one shows whether the engine moved with it.

Per request: parse the JSON body; one EVALSHA that adds the amount to the
card's counter unless that passes a cap; one `INSERT` of the swipe in a
SQLAlchemy Core transaction on PostgreSQL (durable commit); answer JSON the
size of the engine's. `gunicorn loadtests.baseline_app:app` reads
`BASELINE_DATABASE_URL` and `BASELINE_REDIS_URL`; `prepare(database_url)`
creates its table, `drop(...)` removes it and its Redis keys.

With `BASELINE_INSERT=prepared` (`create_app(..., insert="prepared")`) the
insert is the issue's "one-round-trip insert (psycopg, autocommit, prepared
statement)" instead: one round trip to PostgreSQL per swipe, where SQLAlchemy's
transaction takes three (BEGIN, INSERT, COMMIT). The bench serves that one as
the **two round trips** reference: a swipe that reserves in Redis and records
durably in PostgreSQL and does nothing else, with plain client code, so the
engine's distance from it is what the engine's own work costs.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from flask import Flask, Response, request
from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, create_engine

from loadtests.ceiling_app import ANSWER_TEMPLATE
from pos_engine.store.db import normalise_url

KEY_PREFIX = "pos-bench-baseline:"
INSERTS = ("sqlalchemy", "prepared")
CAP_FEN = 10**12  # never reached: every swipe takes the same path
RESERVE = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value > tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return -1
end
return value
"""

metadata = MetaData()
swipes = Table(
    "bench_baseline_swipes",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("card_number", String(32), nullable=False),
    Column("merchant_id", String(64), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("counter_fen", BigInteger, nullable=False),
    Column("status", Integer, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# The same insert as one psycopg statement (named placeholders).
_COLUMNS = [column.name for column in swipes.columns]
PREPARED_INSERT = f"INSERT INTO {swipes.name} ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'%({name})s' for name in _COLUMNS)})"


def prepare(database_url: str) -> None:
    """Create the baseline's table, empty."""
    engine = create_engine(normalise_url(database_url))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()


def drop(database_url: str, redis_url: str) -> None:
    """Remove the baseline's table and counters."""
    engine = create_engine(normalise_url(database_url))
    metadata.drop_all(engine)
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    for batch in _batches(client.scan_iter(match=KEY_PREFIX + "*", count=1_000), 1_000):
        client.delete(*batch)
    client.close()


def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def create_app(database_url: str, redis_url: str, insert: str = "sqlalchemy") -> Flask:
    """The baseline app on this database (its table made by `prepare`) and this Redis.

    `insert`: "sqlalchemy" (a Core insert in a transaction) or "prepared" (a prepared
    statement on an autocommit psycopg connection of the thread's own: one round trip).
    """
    assert insert in INSERTS, insert
    app = Flask(__name__)
    engine = create_engine(normalise_url(database_url), pool_size=4)
    client = redis.Redis.from_url(redis_url)
    reserve = client.register_script(RESERVE)
    app.extensions["baseline"] = (engine, client)  # for whoever must close them (the tests)
    local = threading.local()

    def record(values: dict[str, Any]) -> None:
        if insert == "sqlalchemy":
            with engine.begin() as connection:
                connection.execute(swipes.insert().values(**values))
            return
        own: psycopg.Connection[Any] | None = getattr(local, "connection", None)
        if own is None:
            own = local.connection = psycopg.connect(database_url, autocommit=True)
            app.extensions.setdefault("baseline_connections", []).append(own)
        own.execute(PREPARED_INSERT, values, prepare=True)

    @app.post("/v1/authorisations")
    def authorise() -> Response:
        body = json.loads(request.get_data())
        counter = reserve(keys=[KEY_PREFIX + body["card_number"]], args=[body["amount_fen"], CAP_FEN])
        record(
            {
                "request_id": body["request_id"],
                "card_number": body["card_number"],
                "merchant_id": body["merchant_id"],
                "amount_fen": body["amount_fen"],
                "counter_fen": counter,
                "status": 200,
                "recorded_at": datetime.now(UTC),
            }
        )
        answer = dict(ANSWER_TEMPLATE, request_id=body["request_id"], amount_fen=body["amount_fen"])
        return Response(json.dumps(answer, separators=(",", ":")), mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status":"ok"}', mimetype="application/json")

    return app


# For `gunicorn loadtests.baseline_app:app`, configured from the environment.
app = (
    create_app(os.environ["BASELINE_DATABASE_URL"], os.environ["BASELINE_REDIS_URL"], os.environ.get("BASELINE_INSERT", "sqlalchemy"))
    if "BASELINE_DATABASE_URL" in os.environ
    else None
)
