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


CARD_A, CARD_B = "6200000000000001", "6200000000000002"
# (request id, card, amount): three swipes on one card, then a new card's first swipe
SWIPES = [("r-0", CARD_A, 1_000), ("r-1", CARD_A, 1_001), ("r-2", CARD_A, 1_002), ("r-3", CARD_B, 3_000)]


@pytest.mark.parametrize("cap", [baseline_app.CAP_FEN, 2_500], ids=["never-reached", "reached"])
@pytest.mark.parametrize("insert", baseline_app.INSERTS)
def test_the_baseline_records_each_swipe_and_adds_to_its_card_counter(
    pg_url: str, redis_client: redis.Redis, insert: str, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(baseline_app, "CAP_FEN", cap)
    baseline_app.prepare(pg_url)
    try:
        app = baseline_app.create_app(pg_url, REDIS_URL, insert=insert)
        client = app.test_client()
        answers = [client.post("/v1/authorisations", json=swipe(request_id, card, amount)) for request_id, card, amount in SWIPES]
        with psycopg.connect(pg_url) as connection:
            rows = connection.execute(
                "select request_id, amount_fen, counter_fen from bench_baseline_swipes order by request_id"
            ).fetchall()
            pg_counters = {
                name: connection.execute(f"select card_number, fen from {table.name} order by card_number").fetchall()
                for name, table in baseline_app.card_counters.items()
            }
            (budget_fen,) = connection.execute("select fen from bench_baseline_budget where id = 1").fetchone() or (None,)
        redis_counters = [redis_client.get(baseline_app.KEY_PREFIX + card) for card in (CARD_A, CARD_B)]
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
    assert [answer.status_code for answer in answers] == [200] * len(SWIPES)
    # the same answer as the ceiling's, so both send the same bytes
    ceiling = ceiling_app.app.test_client()
    for (request_id, card, amount), answer in zip(SWIPES, answers, strict=True):
        assert answer.data == ceiling.post("/v1/authorisations", json=swipe(request_id, card, amount)).data
    if cap == 2_500:
        # past the cap the counter is left as it was and the swipe recorded with -1, a new card's first swipe too
        assert rows == [("r-0", 1_000, 1_000), ("r-1", 1_001, 2_001), ("r-2", 1_002, -1), ("r-3", 3_000, -1)]
        kept = [(CARD_A, 2_001)]
    else:
        assert rows == [("r-0", 1_000, 1_000), ("r-1", 1_001, 2_001), ("r-2", 1_002, 3_003), ("r-3", 3_000, 3_000)]
        kept = [(CARD_A, 3_003), (CARD_B, 3_000)]
    if insert in baseline_app.ONE_TRIP:
        # the counters live in PostgreSQL, in the design's own table, added to by the statement that records the
        # swipe: Redis is not asked
        assert redis_counters == [None, None]
        assert pg_counters == {name: (kept if name == insert else []) for name in baseline_app.card_counters}
        # the budget row takes what the card's cap let through
        assert budget_fen == (sum(fen for _, fen in kept) if insert == "one-trip-budget" else 0)
    else:
        # Redis's script leaves a refused new card's counter at 0
        assert [int(value) for value in redis_counters] == [kept[0][1], kept[1][1] if len(kept) > 1 else 0]
        assert pg_counters == {name: [] for name in baseline_app.card_counters}
        assert budget_fen == 0
    assert len(own_connections) == (0 if insert == "sqlalchemy" else 1)
    # dropped: the tables and the counters are gone
    assert [redis_client.get(baseline_app.KEY_PREFIX + card) for card in (CARD_A, CARD_B)] == [None, None]
    with psycopg.connect(pg_url) as connection:
        for table in baseline_app.metadata.sorted_tables:
            assert connection.execute("select to_regclass(%s)", (table.name,)).fetchone() == (None,)
