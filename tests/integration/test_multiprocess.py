"""Several gunicorn workers share the caps: the embedded default and PostgreSQL + Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import LiveEngine, live_engine, run_cli

CAPPED_RULEBOOK = {
    "funders.yaml": "funders:\n  - {id: city_federation, name: City federation, kind: city_federation}\n",
    "campaigns/capped.yaml": """campaign:
  id: capped
  name: Seven subsidised swipes per card
  funders: [{funder: city_federation, share_percent: 100}]
  valid: {from: 2026-01-01, until: 2030-12-31}
  limits: [{per: card, period: campaign, uses_max: 7}]
  rules:
    - id: ten-percent
      benefit: {subsidy: {percent: 10}}
""",
}


def write_rulebook(directory: Path) -> Path:
    for name, text in CAPPED_RULEBOOK.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def fifty_swipes_on_one_card(engine: LiveEngine) -> list[dict[str, Any]]:
    terminal = engine.terminal(0)
    card = engine.credentials["cards"]["usable"][0]
    now = datetime.now(UTC).isoformat()

    def swipe(index: int) -> dict[str, Any]:
        with httpx.Client(timeout=30) as client:
            body = {
                "request_id": f"mp-{index}",
                "card_number": card,
                "merchant_id": terminal["merchant_id"],
                "amount_fen": 5000,
                "occurred_at": now,
            }
            response = engine.signed_post(client, terminal, "/v1/authorisations", body)
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=50) as pool:
        return list(pool.map(swipe, range(50)))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "threads"), [("sqlite", 1), ("pg_redis", 1), ("pg_redis", 4)])
def test_fifty_swipes_across_three_workers_subsidise_exactly_seven(
    tmp_path: Path, kind: str, threads: int, request: pytest.FixtureRequest
) -> None:
    """With four threads a worker records the swipes that meet on their way to PostgreSQL together (group commit)."""
    rules_dir = write_rulebook(tmp_path / "rules")
    options: dict[str, Any] = {}
    if kind == "pg_redis":
        request.getfixturevalue("redis_client")  # fails, not skips, if Redis is down
        options = {"database_url": request.getfixturevalue("pg_url"), "redis_url": "redis://127.0.0.1:6379/0"}
    with live_engine(tmp_path, workers=3, threads=threads, rules_dir=rules_dir, **options) as engine:
        answers = fifty_swipes_on_one_card(engine)
        approved = [answer for answer in answers if answer["status"] == "approved"]
        assert len(approved) == 7
        assert len({answer["id"] for answer in answers}) == 50  # fifty swipes recorded, each its own
        assert all(answer["subsidy_fen"] == 500 for answer in approved)
        reconcile = run_cli(engine.env, "counters", "reconcile", check=False)
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        assert "agree" in reconcile.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "pg_redis"])
def test_a_lost_card_and_a_suspended_merchant_are_declined_by_every_worker_within_seconds(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Each worker holds every card, terminal and merchant in memory; a change made in the database reaches all of them at the next poll."""
    import time

    from sqlalchemy import create_engine, text

    from pos_engine.config import DEMO_CARD_KEY
    from pos_engine.domain.registry import card_hash
    from pos_engine.store.db import normalise_url

    options: dict[str, Any] = {}
    if kind == "pg_redis":
        request.getfixturevalue("redis_client")
        options = {"database_url": request.getfixturevalue("pg_url"), "redis_url": "redis://127.0.0.1:6379/0"}
    with live_engine(tmp_path, workers=3, **options) as engine:
        # Every worker's card directory must be loaded: one that is still loading asks the database,
        # which would decline the lost card without the directory's change feed.
        ready_in_a_row = 0
        deadline = time.monotonic() + 60
        while ready_in_a_row < 30 and time.monotonic() < deadline:
            # A new connection each time, so that any of the three workers may answer (the kernel picks).
            health = httpx.get(engine.base_url + "/healthz", headers={"Connection": "close"}, timeout=10)
            ready = health.json().get("card_directory") == "ready"
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
        assert ready_in_a_row >= 30, "the card directories did not load"
        terminal = engine.terminal(0)
        card = engine.credentials["cards"]["usable"][0]

        def swipe(request_id: str) -> dict[str, Any]:
            with httpx.Client(timeout=10) as client:  # a new connection: any worker may answer
                body = {
                    "request_id": request_id,
                    "card_number": card,
                    "merchant_id": terminal["merchant_id"],
                    "amount_fen": 5000,
                    "occurred_at": datetime.now(UTC).isoformat(),
                }
                response = engine.signed_post(client, terminal, "/v1/authorisations", body)
                assert response.status_code == 200, response.text
                return response.json()  # type: ignore[no-any-return]

        def run_sql(statement: str, params: dict[str, Any]) -> None:
            database = create_engine(normalise_url(engine.env["POS_ENGINE_DATABASE_URL"]))
            with database.begin() as connection:
                connection.execute(text(statement), params)
            database.dispose()

        def every_worker_declines(decline_code: str, label: str) -> None:
            """Swipe until 12 answers in a row (all three workers, as the kernel picks them) decline; 20 s at most."""
            changed_at = time.monotonic()
            declined_in_a_row, index = 0, 0
            while declined_in_a_row < 12 and time.monotonic() - changed_at < 20:
                index += 1
                declined = swipe(f"{label}-{index}")["decline_code"] == decline_code
                declined_in_a_row = declined_in_a_row + 1 if declined else 0
            assert declined_in_a_row >= 12, f"not every worker declines {decline_code} 20 s after the change"

        assert swipe("before-1")["decline_code"] != "card_inactive"
        run_sql("UPDATE cards SET status = 'lost' WHERE card_hash = :hash", {"hash": card_hash(DEMO_CARD_KEY.encode(), card)})
        every_worker_declines("card_inactive", "lost")  # about a second of polling

        # A merchant suspended in the database: every worker's registry snapshot sees the
        # trigger-raised version move at its next poll (every LOOKUP_CACHE_TTL_S = 5 s).
        card = engine.credentials["cards"]["usable"][1]
        assert swipe("before-suspension")["decline_code"] != "merchant_inactive"
        run_sql("UPDATE merchants SET status = 'suspended' WHERE merchant_id = :id", {"id": terminal["merchant_id"]})
        every_worker_declines("merchant_inactive", "suspended")  # one 5 s poll
