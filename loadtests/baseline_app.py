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

`BASELINE_INSERT=one-trip` measures a design the engine does not have: no
Redis, the card's counter kept in PostgreSQL and added to by the same prepared
statement that records the swipe, so a swipe makes **one round trip**.
`one-trip-budget` adds what the card's cap let through to one shared budget
row in that statement too, as a campaign's budget would be under that design
(uncapped: the bench never reaches a cap, and what it measures is that every
swipe holds that row locked until its commit is flushed). Each keeps its card
counters in a table of its own (`bench.py --one-round-trip`).
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
INSERTS = ("sqlalchemy", "prepared", "one-trip", "one-trip-budget")
ONE_TRIP = ("one-trip", "one-trip-budget")  # no Redis: the counters live in PostgreSQL
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

# The one-round-trip designs' counters: a row per card (a table for each design, so that neither finds the other's
# rows), and one shared budget row.
card_counters = {
    insert: Table(name, metadata, Column("card_number", String(32), primary_key=True), Column("fen", BigInteger, nullable=False))
    for insert, name in (("one-trip", "bench_baseline_counters"), ("one-trip-budget", "bench_baseline_budget_counters"))
}
budget = Table("bench_baseline_budget", metadata, Column("id", Integer, primary_key=True), Column("fen", BigInteger, nullable=False))

# The same insert as one psycopg statement (named placeholders).
_COLUMNS = [column.name for column in swipes.columns]
PREPARED_INSERT = f"INSERT INTO {swipes.name} ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'%({name})s' for name in _COLUMNS)})"

# One statement: add to the card's counter unless that passes the cap (as RESERVE does, a new card's first swipe
# too), and record the swipe with the counter's new value (-1 where the cap refused it). "{budget}" adds what the
# card's cap let through to the shared budget row as well.
_ONE_TRIP = """
WITH card AS (
  INSERT INTO {counters} AS c (card_number, fen) SELECT %(card_number)s, %(amount_fen)s WHERE %(amount_fen)s <= %(cap)s
  ON CONFLICT (card_number) DO UPDATE SET fen = c.fen + excluded.fen WHERE c.fen + excluded.fen <= %(cap)s
  RETURNING fen
){budget}
INSERT INTO {swipes} ({columns})
VALUES (%(request_id)s, %(card_number)s, %(merchant_id)s, %(amount_fen)s, COALESCE((SELECT fen FROM card), -1), %(status)s,
        %(recorded_at)s)
"""
_BUDGET = f""", shared AS (
  UPDATE {budget.name} SET fen = fen + %(amount_fen)s WHERE id = 1 AND EXISTS (SELECT 1 FROM card)
)"""
ONE_TRIP_STATEMENTS = {
    insert: _ONE_TRIP.format(
        counters=card_counters[insert].name,
        budget=_BUDGET if insert == "one-trip-budget" else "",
        swipes=swipes.name,
        columns=", ".join(_COLUMNS),
    )
    for insert in ONE_TRIP
}


def prepare(database_url: str) -> None:
    """Create the baseline's tables, empty (the budget row at 0)."""
    engine = create_engine(normalise_url(database_url))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(budget.insert().values(id=1, fen=0))
    engine.dispose()


def drop(database_url: str, redis_url: str) -> None:
    """Remove the baseline's tables and counters."""
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
    """The baseline app on this database (its tables made by `prepare`) and this Redis.

    `insert`: "sqlalchemy" (a Core insert in a transaction) or "prepared" (a prepared
    statement on an autocommit psycopg connection of the thread's own: one round trip);
    "one-trip" or "one-trip-budget": no Redis, one prepared statement that adds to the
    card's counter row (and the shared budget row) and records the swipe.
    """
    assert insert in INSERTS, insert
    app = Flask(__name__)
    engine = create_engine(normalise_url(database_url), pool_size=4)
    client = redis.Redis.from_url(redis_url)
    reserve = client.register_script(RESERVE)
    app.extensions["baseline"] = (engine, client)  # for whoever must close them (the tests)
    local = threading.local()

    def own_connection() -> psycopg.Connection[Any]:
        own: psycopg.Connection[Any] | None = getattr(local, "connection", None)
        if own is None:
            own = local.connection = psycopg.connect(database_url, autocommit=True)
            app.extensions.setdefault("baseline_connections", []).append(own)
        return own

    def record(values: dict[str, Any]) -> None:
        if insert == "sqlalchemy":
            with engine.begin() as connection:
                connection.execute(swipes.insert().values(**values))
            return
        own_connection().execute(PREPARED_INSERT, values, prepare=True)

    @app.post("/v1/authorisations")
    def authorise() -> Response:
        body = json.loads(request.get_data())
        values = {
            "request_id": body["request_id"],
            "card_number": body["card_number"],
            "merchant_id": body["merchant_id"],
            "amount_fen": body["amount_fen"],
            "status": 200,
            "recorded_at": datetime.now(UTC),
        }
        if insert in ONE_TRIP:
            own_connection().execute(ONE_TRIP_STATEMENTS[insert], values | {"cap": CAP_FEN}, prepare=True)
        else:
            counter = reserve(keys=[KEY_PREFIX + body["card_number"]], args=[body["amount_fen"], CAP_FEN])
            record(values | {"counter_fen": counter})
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
