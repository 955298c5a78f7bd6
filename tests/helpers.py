"""Factories shared by the tests: rulebooks, a registry world, signed terminal requests."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import insert

from pos_engine.api.signing import sign
from pos_engine.domain.clock import Clock
from pos_engine.domain.registry import card_hash
from pos_engine.domain.rulebook import Benefit, Campaign, FunderShare, Limit, Rule, Rulebook
from pos_engine.service.context import EngineContext
from pos_engine.store.db import Database, SqlRegistry
from pos_engine.store.models import CardRow, MemberRow, MerchantRow, TerminalRow

CARD_KEY = b"test-card-key"


def subsidy(percent_bp: int | None = None, fixed_fen: int | None = None, amount_fen_max: int | None = None) -> Benefit:
    return Benefit("subsidy", percent_bp=percent_bp, fixed_fen=fixed_fen, amount_fen_max=amount_fen_max)


def discount(percent_bp: int | None = None, fixed_fen: int | None = None, amount_fen_max: int | None = None) -> Benefit:
    return Benefit("discount", percent_bp=percent_bp, fixed_fen=fixed_fen, amount_fen_max=amount_fen_max)


def make_rule(campaign_id: str = "camp", rule_id: str = "r1", benefit: Benefit | None = None, **overrides: Any) -> Rule:
    return Rule(campaign_id=campaign_id, rule_id=rule_id, benefit=benefit or subsidy(percent_bp=1000), **overrides)


def make_campaign(campaign_id: str = "camp", rules: tuple[Rule, ...] = (), **overrides: Any) -> Campaign:
    fields: dict[str, Any] = {
        "campaign_id": campaign_id,
        "name": campaign_id,
        "valid_from": date(2026, 1, 1),
        "valid_until": date(2027, 12, 31),
        "rules": rules or (make_rule(campaign_id),),
        "funders": (FunderShare("city_federation", 10_000),),
    }
    fields.update(overrides)
    return Campaign(**fields)


def make_rulebook(*campaigns: Campaign, version: str = "test-v1") -> Rulebook:
    return Rulebook(version, campaigns)


def capped_subsidy_rulebook(uses_max: int | None = None, fen_max: int | None = None, budget_fen: int | None = None) -> Rulebook:
    """A 10 % dining subsidy with one per-campaign cap: the shape most money tests need."""
    limits = (Limit("card", "campaign", uses_max=uses_max, fen_max=fen_max),) if uses_max or fen_max else ()
    rule = make_rule("city-dining", "ten-percent", subsidy(percent_bp=1000), limits=limits)
    return make_rulebook(make_campaign("city-dining", (rule,), budget_fen=budget_fen))


@dataclass
class World:
    """A registry built for one test: members with cards, merchants with terminals."""

    database: Database
    cards: dict[str, str] = field(default_factory=dict)  # card number -> card id
    terminals: dict[str, tuple[str, str]] = field(default_factory=dict)  # terminal id -> (secret, merchant id)

    def add_merchant(
        self,
        merchant_id: str = "m-1",
        category: str = "dining",
        district: str = "wujin",
        status: str = "active",
        terminal_id: str | None = None,
    ) -> str:
        terminal_id = terminal_id or f"t-{merchant_id}"
        secret = f"secret-{terminal_id}"
        with self.database.sessions() as session, session.begin():
            session.execute(
                insert(MerchantRow),
                [{"merchant_id": merchant_id, "name": merchant_id, "category": category, "district": district, "status": status}],
            )
            session.execute(
                insert(TerminalRow), [{"terminal_id": terminal_id, "merchant_id": merchant_id, "secret": secret, "status": "active"}]
            )
        self.terminals[terminal_id] = (secret, merchant_id)
        return terminal_id

    def add_card(
        self,
        card_number: str = "6217000000000001",
        *,
        status: str = "active",
        in_service: bool = True,
        annual_review_year: int | None = 2026,
        groups: str = "",
        district: str = "wujin",
    ) -> str:
        index = len(self.cards) + 1
        member_id, card_id = f"mem-{index}", f"card-{index}"
        with self.database.sessions() as session, session.begin():
            session.execute(
                insert(MemberRow),
                [
                    {
                        "member_id": member_id,
                        "name": member_id,
                        "unit_id": "unit-1",
                        "union_id": "union-1",
                        "district": district,
                        "groups": groups,
                        "in_service": in_service,
                        "annual_review_year": annual_review_year,
                    }
                ],
            )
            session.execute(
                insert(CardRow),
                [
                    {
                        "card_id": card_id,
                        "card_hash": card_hash(CARD_KEY, card_number),
                        "last4": card_number[-4:],
                        "member_id": member_id,
                        "status": status,
                    }
                ],
            )
        self.cards[card_number] = card_id
        return card_id

    def set_card_status(self, card_number: str, status: str) -> None:
        with self.database.sessions() as session, session.begin():
            session.get_one(CardRow, self.cards[card_number]).status = status


def make_context(database: Database, counters: Any, rulebook: Rulebook, clock: Clock) -> EngineContext:
    return EngineContext(
        unit_of_work=database.unit_of_work,
        single_statement=database.single_statement,
        swipe_transaction=database.swipe_transaction,
        read_snapshot=database.read_snapshot,
        registry=SqlRegistry(database),
        counters=counters,
        rulebook=rulebook,
        clock=clock,
        card_key=CARD_KEY,
        lookup_cache_ttl_s=0,
    )


class SignedClient:
    """A terminal over Flask's test client: signs every request as a till would."""

    def __init__(self, client: Any, terminal_id: str, secret: str, clock: Clock) -> None:
        self.client = client
        self.terminal_id = terminal_id
        self.secret = secret
        self.clock = clock

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        timestamp = str(int(self.clock.now().timestamp()))
        return {
            "X-Terminal-Id": self.terminal_id,
            "X-Timestamp": timestamp,
            "X-Signature": sign(self.secret, method, path, timestamp, body),
            "Content-Type": "application/json",
        }

    def post(self, path: str, body: Any) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(path, data=raw, headers=self.headers("POST", path, raw))

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers("GET", path, b""))

    def authorise(
        self,
        card_number: str,
        amount_fen: int,
        request_id: str,
        merchant_id: str | None = None,
        at: datetime | None = None,
        explain: bool = False,
    ) -> Any:
        body = {
            "request_id": request_id,
            "card_number": card_number,
            "merchant_id": merchant_id or self.terminal_id.removeprefix("t-"),
            "amount_fen": amount_fen,
            "occurred_at": (at or self.clock.now()).isoformat(),
        }
        return self.post("/v1/authorisations" + ("?explain=true" if explain else ""), body)


@contextmanager
def silent_server() -> Iterator[int]:
    """A loopback server that accepts connections and reads what it is sent, and never answers: a hung Redis or PostgreSQL.

    Yields its port. On exit it closes every connection, which frees whoever still waits on one.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)  # kept open, never answered; the kernel buffers what is sent

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def psycopg_url(url: str) -> str:
    """A backend's SQLAlchemy URL as psycopg.connect takes it: a session of another client (a lock holder, an admin)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def finishes_within(seconds: float, call: Any) -> list[Any]:
    """Run `call` on a thread; its outcome (["returned", value] or ["raised", exception]), or [] if it still runs after `seconds`."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.extend(["returned", call()])
        except BaseException as error:  # reported to the test, whatever it is
            outcome.extend(["raised", error])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    return outcome


def in_a_forked_child(work: Callable[[], object]) -> str:
    """What `work` returns (its repr) when run in a child forked from this process, as gunicorn forks a worker."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            try:
                answer = repr(work())
            except BaseException as error:  # told to the parent, whose assertion shows it
                answer = f"raised {error!r}"
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 256).decode()
    os.waitpid(child, 0)
    os.close(read_end)
    return answer
