"""The demo world: a Changzhou-like registry of members, cards, merchants and terminals."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select

from pos_engine.domain.registry import card_hash
from pos_engine.domain.rulebook import CATEGORIES, DISTRICTS
from pos_engine.store.db import Database
from pos_engine.store.models import (
    CardRow,
    CounterRow,
    DeclineRow,
    IdempotencyRow,
    LedgerEntryRow,
    MemberRow,
    MerchantRow,
    TerminalRow,
)

MERCHANTS_PER_DISTRICT_CATEGORY = 8
MEMBERS_COUNT = 3_000
# Unions: one grassroots union per district, plus industry and city-level unions (seed §5).
UNIONS = [f"union-{district}" for district in DISTRICTS] + ["union-industry-machinery", "union-city-level"]
MERCHANT_NAMES = {
    "dining": "Noodle House",
    "lodging": "Garden Hotel",
    "transport": "Taxi Co-op",
    "travel": "Travel Service",
    "shopping": "Supermarket",
    "entertainment": "Cinema",
}


@dataclass
class DemoCredentials:
    """What `pos-engine demo --out FILE` writes: terminals with secrets, and card numbers by kind."""

    terminals: list[dict[str, str]] = field(default_factory=list)
    cards: dict[str, list[str]] = field(default_factory=lambda: {"usable": [], "lost": [], "review_due": [], "not_in_service": []})

    def as_json(self) -> dict[str, Any]:
        return {"terminals": self.terminals, "cards": self.cards}


def _card_number(rng: random.Random) -> str:
    return "6217" + "".join(rng.choice("0123456789") for _ in range(12))


def load_demo(
    database: Database, card_key: bytes, year: int, *, reset: bool = False, seed: int = 2015, members_count: int = MEMBERS_COUNT
) -> DemoCredentials:
    """Load the demo world unless it is there already; return its credentials.

    Most members passed `year`'s annual review; some cards are lost, some members
    are due for review, some have left service; a few members are model workers
    or hardship workers. Card numbers follow from `seed`, so a second run finds
    the same cards and reads the terminal secrets back; `reset` wipes the
    registry, the ledger and the counters and loads a fresh world.
    """
    rng = random.Random(seed)
    credentials = DemoCredentials()
    members: list[dict[str, Any]] = []
    cards: list[dict[str, Any]] = []
    seen_numbers: set[str] = set()
    for index in range(members_count):
        district = DISTRICTS[index % len(DISTRICTS)]
        kind = "usable"
        roll = rng.random()
        if roll < 0.04:
            kind = "lost"
        elif roll < 0.08:
            kind = "review_due"
        elif roll < 0.10:
            kind = "not_in_service"
        groups = []
        if rng.random() < 0.05:
            groups.append("model_worker")
        if rng.random() < 0.05:
            groups.append("hardship")
        member_id = f"mem-{index + 1:06d}"
        union = UNIONS[index % len(UNIONS)] if index % 10 == 0 else f"union-{district}"
        members.append(
            {
                "member_id": member_id,
                "name": f"Member {index + 1}",
                "unit_id": f"unit-{district}-{index % 40:03d}",
                "union_id": union,
                "district": district,
                "groups": ",".join(groups),
                "in_service": kind != "not_in_service",
                "annual_review_year": year - 1 if kind == "review_due" else year,
            }
        )
        number = _card_number(rng)
        while number in seen_numbers:
            number = _card_number(rng)
        seen_numbers.add(number)
        cards.append(
            {
                "card_id": f"card-{index + 1:06d}",
                "card_hash": card_hash(card_key, number),
                "last4": number[-4:],
                "member_id": member_id,
                "status": "lost" if kind == "lost" else "active",
            }
        )
        credentials.cards[kind].append(number)
    merchants: list[dict[str, Any]] = []
    terminals: list[dict[str, Any]] = []
    for district in DISTRICTS:
        for category in CATEGORIES:
            for ordinal in range(1, MERCHANTS_PER_DISTRICT_CATEGORY + 1):
                merchant_id = f"m-{district}-{category}-{ordinal:03d}"
                # The last merchant of each kind and place is suspended: its swipes are declined.
                status = "suspended" if ordinal == MERCHANTS_PER_DISTRICT_CATEGORY else "active"
                merchants.append(
                    {
                        "merchant_id": merchant_id,
                        "name": f"{district.capitalize()} {MERCHANT_NAMES[category]} {ordinal}",
                        "category": category,
                        "district": district,
                        "status": status,
                    }
                )
                terminal_id = f"t-{district}-{category}-{ordinal:03d}"
                secret = secrets.token_hex(24)
                terminals.append({"terminal_id": terminal_id, "merchant_id": merchant_id, "secret": secret, "status": "active"})
                if status == "active":
                    credentials.terminals.append(
                        {
                            "terminal_id": terminal_id,
                            "secret": secret,
                            "merchant_id": merchant_id,
                            "category": category,
                            "district": district,
                        }
                    )
    with database.sessions() as session, session.begin():
        if session.get(MemberRow, members[0]["member_id"]) is not None and not reset:
            stored_secrets = {row.terminal_id: row.secret for row in session.execute(select(TerminalRow.terminal_id, TerminalRow.secret))}
            for terminal in credentials.terminals:
                terminal["secret"] = stored_secrets.get(terminal["terminal_id"], terminal["secret"])
        else:
            for model in (IdempotencyRow, DeclineRow, LedgerEntryRow, CounterRow, TerminalRow, CardRow, MerchantRow, MemberRow):
                session.execute(delete(model))
            session.execute(insert(MemberRow), members)
            session.execute(insert(CardRow), cards)
            session.execute(insert(MerchantRow), merchants)
            session.execute(insert(TerminalRow), terminals)
    # Put the README's terminal first, so `terminals[0]` is the one that gets a discount and a subsidy.
    credentials.terminals.sort(key=lambda terminal: terminal["merchant_id"] != "m-wujin-dining-001")
    return credentials
