"""The bench's reference apps do what the bench says they do: the baseline really makes its Redis call and its insert.

Every one of its inserts: SQLAlchemy's transaction, the one-round-trip prepared
statement of the bench's "two round trips" reference, and the one-round-trip
designs that keep the counters in PostgreSQL (with and without a shared budget row).
"""

from __future__ import annotations

import psycopg
import pytest
import redis

from loadtests import baseline_app, ceiling_app
from tests.conftest import REDIS_URL

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def swipe(request_id: str, card_number: str, amount_fen: int) -> dict[str, object]:
    return {
        "request_id": request_id,
        "card_number": card_number,
        "merchant_id": "m-00001",
        "amount_fen": amount_fen,
        "occurred_at": "2026-11-25T04:00:00+00:00",
    }


@pytest.mark.parametrize("insert", baseline_app.INSERTS)
def test_the_baseline_records_each_swipe_and_adds_to_its_card_counter(pg_url: str, redis_client: redis.Redis, insert: str) -> None:
    baseline_app.prepare(pg_url)
    try:
        app = baseline_app.create_app(pg_url, REDIS_URL, insert=insert)
        client = app.test_client()
        answers = [client.post("/v1/authorisations", json=swipe(f"r-{index}", "6200000000000001", 1_000 + index)) for index in range(3)]
        with psycopg.connect(pg_url) as connection:
            rows = connection.execute(
                "select request_id, amount_fen, counter_fen from bench_baseline_swipes order by request_id"
            ).fetchall()
            pg_counters = connection.execute("select card_number, fen from bench_baseline_counters").fetchall()
            (budget_fen,) = connection.execute("select fen from bench_baseline_budget where id = 1").fetchone() or (None,)
        counter = redis_client.get(baseline_app.KEY_PREFIX + "6200000000000001")
        engine, app_redis = app.extensions["baseline"]
        engine.dispose()
        app_redis.close()
        own_connections = app.extensions.get("baseline_connections", [])
        for connection in own_connections:
            # one round trip a swipe: no transaction to open or commit, a statement parsed once
            assert connection.autocommit
            assert connection.execute("select count(*) from pg_prepared_statements").fetchone() == (1,)
            connection.close()
    finally:
        baseline_app.drop(pg_url, REDIS_URL)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    # the same answer as the ceiling's, so both send the same bytes
    ceiling = ceiling_app.app.test_client()
    for index, answer in enumerate(answers):
        assert answer.data == ceiling.post("/v1/authorisations", json=swipe(f"r-{index}", "6200000000000001", 1_000 + index)).data
    assert rows == [("r-0", 1_000, 1_000), ("r-1", 1_001, 2_001), ("r-2", 1_002, 3_003)]
    if insert in baseline_app.ONE_TRIP:
        # the counter lives in PostgreSQL, added to by the statement that records the swipe: Redis is not asked
        assert counter is None
        assert pg_counters == [("6200000000000001", 3_003)]
        assert budget_fen == (3_003 if insert == "one-trip-budget" else 0)
    else:
        assert int(counter) == 3_003
        assert pg_counters == []
        assert budget_fen == 0
    assert len(own_connections) == (0 if insert == "sqlalchemy" else 1)
    # dropped: the table and the counters are gone
    assert redis_client.get(baseline_app.KEY_PREFIX + "6200000000000001") is None
    with psycopg.connect(pg_url) as connection:
        for table in ("bench_baseline_swipes", "bench_baseline_counters", "bench_baseline_budget"):
            assert connection.execute("select to_regclass(%s)", (table,)).fetchone() == (None,)
