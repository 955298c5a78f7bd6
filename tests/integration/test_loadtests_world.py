"""The load-test world generator on SQLite and the real PostgreSQL, and a locust smoke run against gunicorn."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from loadtests import world as worldgen
from pos_engine.api import create_app
from pos_engine.cli import main as cli_main
from pos_engine.config import Settings
from pos_engine.domain.clock import FixedClock
from pos_engine.domain.rulebook import Rulebook
from pos_engine.rules_loader import load_rulebook, run_examples
from pos_engine.service.context import EngineContext
from pos_engine.service.counters import counters_from_ledger, reconcile_counters
from pos_engine.store.db import Database
from pos_engine.store.models import CardChangeRow, CardRow, DeclineRow, LedgerEntryRow, MemberRow, MerchantRow, TerminalRow
from pos_engine.store.sql_counters import SqlCounterStore
from tests.conftest import PG_ADMIN_DSN
from tests.helpers import CARD_KEY, SignedClient, make_context
from tests.live import live_engine

ROOT = Path(__file__).resolve().parents[2]
SMALL_WORLD: dict[str, int] = {"cards": 2_000, "merchants": 60, "rules": 300, "history_swipes": 500}


@dataclass
class BuiltWorld:
    """A generated world, its database and what the generator reported."""

    url: str
    database: Database
    result: worldgen.WorldResult
    rulebook: Rulebook
    clock: FixedClock
    context: EngineContext

    @property
    def world(self) -> dict[str, Any]:
        return json.loads(self.result.world_json.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database whose name says it may be wiped: a SQLite file, or a fresh PostgreSQL database."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('world')}/world-test.sqlite3"
        return
    name = f"pos_engine_test_world_{uuid.uuid4().hex[:10]}"
    # No skip: a missing PostgreSQL server fails here.
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def built(world_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltWorld]:
    now = datetime.now(UTC).replace(microsecond=0)
    rules_dir = tmp_path_factory.mktemp("world-rules")
    result = worldgen.build_world(
        world_database,
        rules_dir,
        cards=SMALL_WORLD["cards"],
        merchants=SMALL_WORLD["merchants"],
        rules=SMALL_WORLD["rules"],
        history_swipes=SMALL_WORLD["history_swipes"],
        card_key=CARD_KEY.decode(),
        now=now,
        log=lambda _line: None,
    )
    database = Database(world_database)
    rulebook = load_rulebook(rules_dir)
    clock = FixedClock(now)
    context = make_context(database, SqlCounterStore(database), rulebook, clock)
    yield BuiltWorld(world_database, database, result, rulebook, clock, context)
    database.dispose()


def test_the_generated_rulebook_loads_and_passes_rules_check(built: BuiltWorld) -> None:
    assert built.rulebook.rule_count == SMALL_WORLD["rules"]
    assert built.rulebook.version == built.result.rulebook_version
    assert run_examples(built.rulebook) == []
    outcome = CliRunner().invoke(cli_main, ["rules", "check", str(built.result.rules_dir)])
    assert outcome.exit_code == 0, outcome.output
    place_rules = [
        rule
        for campaign in built.rulebook.campaigns.values()
        if not campaign.campaign_id.startswith("partners-")
        for rule in campaign.rules
    ]
    assert len(place_rules) == worldgen.PLACE_RULES
    assert all(rule.conditions.merchant_ids is None for rule in place_rules)
    # However many rules there are, a swipe looks at a few place-wide ones.
    assert worldgen.place_candidates_max(built.rulebook) <= 5


def test_the_registry_holds_what_was_asked_for(built: BuiltWorld) -> None:
    with built.database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(MemberRow)) == SMALL_WORLD["cards"]
        assert session.scalar(select(func.count()).select_from(CardRow)) == SMALL_WORLD["cards"]
        assert session.scalar(select(func.count()).select_from(MerchantRow)) == SMALL_WORLD["merchants"]
        assert session.scalar(select(func.count()).select_from(TerminalRow)) == SMALL_WORLD["merchants"]
        # The triggers logged every card written; a fresh world leaves no change for a card directory to replay.
        assert session.scalar(select(func.count()).select_from(CardChangeRow)) == 0
        card = session.get_one(CardRow, worldgen.card_id(7))
        listed = built.world["terminals"][0]
        terminal = session.get_one(TerminalRow, listed["terminal_id"])
        merchant = session.get_one(MerchantRow, listed["merchant_id"])
    number = worldgen.card_number(7, 2026)
    assert card.card_hash == built.context.card_hash(number)
    assert card.last4 == number[-4:]
    assert terminal.secret == listed["secret"] == worldgen.terminal_secret(terminal.terminal_id, 2026)
    assert (merchant.status, merchant.category, merchant.district) == ("active", listed["category"], listed["district"])


def test_counters_agree_with_the_ledger(built: BuiltWorld) -> None:
    assert counters_from_ledger(built.context)
    assert reconcile_counters(built.context) == []


def test_every_ledger_entry_adds_up(built: BuiltWorld) -> None:
    with built.database.sessions() as session:
        entries = list(session.execute(select(LedgerEntryRow)).scalars())
        declines = session.scalar(select(func.count()).select_from(DeclineRow))
    kinds = {entry.kind for entry in entries}
    assert kinds >= {"authorisation"}
    history = built.world["history"]
    assert len(entries) == history["approved"] + history["reversals"] + history["refunds"]
    assert declines == sum(history["declined"].values())
    authorisations = {entry.entry_id: entry for entry in entries if entry.kind == "authorisation"}
    given_back: dict[str, int] = {}
    for entry in entries:
        assert entry.discount_fen + entry.subsidy_fen + entry.payable_fen == entry.amount_fen
        discount = sum(line["amount_fen"] for line in entry.benefits if line["kind"] == "discount")
        subsidy = sum(line["amount_fen"] for line in entry.benefits if line["kind"] == "subsidy")
        assert (discount, subsidy) == (entry.discount_fen, entry.subsidy_fen)
        if entry.kind == "authorisation":
            assert entry.amount_fen > 0
            assert entry.benefits
            assert entry.rules_version == built.rulebook.version
        else:
            assert entry.authorisation_id in authorisations
            assert entry.amount_fen < 0
            given_back[entry.authorisation_id] = given_back.get(entry.authorisation_id, 0) - entry.amount_fen
    for authorisation_id, amount_fen in given_back.items():
        assert amount_fen <= authorisations[authorisation_id].amount_fen


def test_a_signed_swipe_with_a_generated_card_is_decided(built: BuiltWorld) -> None:
    app = create_app(Settings(), built.context)
    app.testing = True
    terminal = built.world["terminals"][0]
    till = SignedClient(app.test_client(), terminal["terminal_id"], terminal["secret"], built.clock)
    usable = next(i for i in range(SMALL_WORLD["cards"]) if worldgen.card_kind(i, 2026) == "usable")
    lost = next(i for i in range(SMALL_WORLD["cards"]) if worldgen.card_kind(i, 2026) == "lost")

    answer = till.authorise(worldgen.card_number(usable, 2026), 10_000, uuid.uuid4().hex, merchant_id=terminal["merchant_id"])
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["discount_fen"] + body["subsidy_fen"] + body["payable_fen"] == 10_000
    if body["status"] == "approved":
        assert body["benefits"]
    else:
        assert body["decline_code"] == "no_benefit"

    declined = till.authorise(worldgen.card_number(lost, 2026), 10_000, uuid.uuid4().hex, merchant_id=terminal["merchant_id"])
    assert declined.status_code == 200
    assert (declined.get_json()["status"], declined.get_json()["decline_code"]) == ("declined", "card_inactive")
    assert reconcile_counters(built.context) == []


def test_card_numbers_are_unique_luhn_valid_and_recomputable() -> None:
    numbers = [worldgen.card_number(i, 2026) for i in range(20_000)]
    assert len(set(numbers)) == len(numbers)
    assert all(len(number) == 16 and number.startswith("62") for number in numbers)
    assert all(worldgen.luhn_digit(number[:-1]) == number[-1] for number in numbers)
    assert worldgen.card_number(12_345, 2026) == numbers[12_345]
    assert worldgen.card_number(12_345, 2027) != numbers[12_345]
    usable = sum(worldgen.card_kind(i, 2026) == "usable" for i in range(20_000)) / 20_000
    assert 0.87 < usable < 0.93


def test_a_database_not_named_for_tests_is_not_wiped() -> None:
    with pytest.raises(SystemExit, match="refusing to wipe"):
        worldgen.check_database_is_disposable("postgresql://postgres@127.0.0.1:5432/pos_engine", yes_wipe=False)
    worldgen.check_database_is_disposable("postgresql://postgres@127.0.0.1:5432/pos_engine", yes_wipe=True)
    worldgen.check_database_is_disposable("postgresql://postgres@127.0.0.1:5432/pos_engine_load", yes_wipe=False)


def test_a_database_that_does_not_exist_gets_a_clear_message_not_a_traceback(pg_url: str, tmp_path: Path) -> None:
    missing = pg_url.rsplit("/", 1)[0] + "/pos_engine_test_never_created"
    with pytest.raises(SystemExit, match=r"cannot reach the database or Redis: .*does not exist"):
        worldgen.main(["--database-url", missing, "--rules-out", str(tmp_path / "rules"), "--cards", "10"])


@pytest.mark.slow
def test_locust_runs_the_terminal_workload_against_gunicorn_without_failures(tmp_path: Path) -> None:
    with live_engine(tmp_path, workers=2) as engine:
        env = {
            **os.environ,
            "LOADTEST_CREDENTIALS": str(tmp_path / "demo.json"),
            "LOADTEST_WAIT_MIN_S": "0.1",
            "LOADTEST_WAIT_MAX_S": "0.3",
        }
        env.pop("LOADTEST_WORLD", None)
        command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless"]
        command += ["-u", "4", "-r", "4", "-t", "8s", "--host", engine.base_url, "--csv", str(tmp_path / "locust"), "--only-summary"]
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    with (tmp_path / "locust_stats.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    failures = (tmp_path / "locust_failures.csv").read_text()
    aggregated = next(row for row in rows if row["Name"] == "Aggregated")
    assert int(aggregated["Request Count"]) > 0, run.stderr
    assert int(aggregated["Failure Count"]) == 0, failures
    assert {row["Type"] for row in rows if row["Name"] == "authorise"} == {"POST", "SDK"}
    assert run.returncode == 0, run.stderr
