"""Repository: what the use cases ask of the database, in domain terms."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.store.models import (
    CardRow,
    DeclineRow,
    IdempotencyRow,
    LedgerEntryRow,
    MemberRow,
    MerchantRow,
    TerminalRow,
)


def split_groups(text: str) -> frozenset[str]:
    return frozenset(group for group in (part.strip() for part in text.split(",")) if group)


class Repository:
    """Reads and appends through one session (the unit of work's)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # Registry lookups return frozen records, safe to cache across requests.
    def terminal(self, terminal_id: str) -> Terminal | None:
        row = self.session.get(TerminalRow, terminal_id)
        if row is None:
            return None
        return Terminal(row.terminal_id, row.merchant_id, row.secret, row.status)

    def merchant(self, merchant_id: str) -> Merchant | None:
        row = self.session.get(MerchantRow, merchant_id)
        if row is None:
            return None
        return Merchant(row.merchant_id, row.name, row.category, row.district, row.status)

    def card_holder(self, card_hash: str) -> CardHolder | None:
        found = self.session.execute(
            select(CardRow, MemberRow).join(MemberRow, CardRow.member_id == MemberRow.member_id).where(CardRow.card_hash == card_hash)
        ).first()
        if found is None:
            return None
        card, member = found
        return CardHolder(
            card_id=card.card_id,
            card_last4=card.last4,
            card_status=card.status,
            member_id=member.member_id,
            member_groups=split_groups(member.groups),
            in_service=member.in_service,
            annual_review_year=member.annual_review_year,
            district=member.district,
        )

    # Idempotency.
    def idempotency(self, terminal_id: str, request_id: str) -> IdempotencyRow | None:
        return self.session.get(IdempotencyRow, (terminal_id, request_id))

    def add_idempotency(
        self,
        terminal_id: str,
        request_id: str,
        request_hash: str,
        status_code: int,
        body: bytes,
        resource_id: str | None,
        at: datetime,
    ) -> None:
        self.session.add(
            IdempotencyRow(
                terminal_id=terminal_id,
                request_id=request_id,
                request_hash=request_hash,
                status_code=status_code,
                response_body=body,
                resource_id=resource_id,
                created_at=at,
            )
        )

    # Ledger.
    def add_entry(self, **fields: Any) -> LedgerEntryRow:
        row = LedgerEntryRow(**fields)
        self.session.add(row)
        return row

    def add_decline(self, **fields: Any) -> None:
        self.session.add(DeclineRow(**fields))

    def authorisation(self, authorisation_id: str, *, lock: bool = False) -> LedgerEntryRow | None:
        query = select(LedgerEntryRow).where(LedgerEntryRow.entry_id == authorisation_id, LedgerEntryRow.kind == "authorisation")
        if lock:
            query = query.with_for_update()
        return self.session.execute(query).scalar_one_or_none()

    def decline(self, decline_id: str) -> DeclineRow | None:
        return self.session.get(DeclineRow, decline_id)

    def adjustments(self, authorisation_id: str) -> list[LedgerEntryRow]:
        query = (
            select(LedgerEntryRow)
            .where(LedgerEntryRow.authorisation_id == authorisation_id, LedgerEntryRow.kind != "authorisation")
            .order_by(LedgerEntryRow.recorded_at, LedgerEntryRow.entry_id)
        )
        return list(self.session.execute(query).scalars())

    def all_counter_deltas(self, batch_rows: int = 10_000) -> Iterator[dict[str, Any]]:
        query = select(LedgerEntryRow.counter_deltas).execution_options(yield_per=batch_rows)
        for (deltas,) in self.session.execute(query):
            yield deltas
