"""Repository: what the use cases ask of the database, in domain terms.

The swipe path runs on SQLAlchemy Core with statements built once at import:
the ORM's unit-of-work machinery costs more than the database does here. The
ORM models in `models.py` remain the schema, and serve the batch code paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError

from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.service.cards import CARD_ROW_COLUMNS, holder_from_row
from pos_engine.service.errors import DuplicateKey
from pos_engine.store.models import (
    NOT_AN_AUTHORISATION,
    CardRow,
    DeclineRow,
    IdempotencyRow,
    LedgerEntryRow,
    MemberRow,
    MerchantRow,
    TerminalRow,
)

cards = cast(Table, CardRow.__table__)
members = cast(Table, MemberRow.__table__)
merchants = cast(Table, MerchantRow.__table__)
terminals = cast(Table, TerminalRow.__table__)
ledger = cast(Table, LedgerEntryRow.__table__)
declines = cast(Table, DeclineRow.__table__)
idempotency_records = cast(Table, IdempotencyRow.__table__)

_TERMINAL = select(terminals).where(terminals.c.terminal_id == bindparam("id"))
_MERCHANT = select(merchants).where(merchants.c.merchant_id == bindparam("id"))
# Every card with its member, columns in CARD_ROW_COLUMNS order: one query shape for a lookup,
# a batch and the card directory's full load (pos_engine.store.db.SqlRegistry.all_card_rows).
CARD_ROWS = select(
    cards.c.card_hash,
    cards.c.card_id,
    cards.c.last4,
    cards.c.status,
    members.c.member_id,
    members.c.groups,
    members.c.in_service,
    members.c.annual_review_year,
    members.c.district,
).join_from(cards, members, cards.c.member_id == members.c.member_id)
assert tuple(column.name for column in CARD_ROWS.selected_columns) == CARD_ROW_COLUMNS
_CARD_HOLDER = CARD_ROWS.where(cards.c.card_hash == bindparam("card_hash"))
_CARD_HOLDERS = CARD_ROWS.where(cards.c.card_hash.in_(bindparam("hashes", expanding=True)))
_IDEMPOTENCY = select(idempotency_records).where(
    idempotency_records.c.terminal_id == bindparam("terminal_id"), idempotency_records.c.request_id == bindparam("request_id")
)
_AUTHORISATION = select(ledger).where(ledger.c.entry_id == bindparam("id"), ledger.c.kind == "authorisation")
_AUTHORISATION_LOCKED = _AUTHORISATION.with_for_update()
_DECLINE = select(declines).where(declines.c.decline_id == bindparam("id"))
# The kind test is the adjustments index's own predicate, written out rather than bound: only then can a
# generic plan (psycopg prepares a statement after its fifth run) prove that the partial index covers the query.
_ADJUSTMENTS = (
    select(ledger)
    .where(ledger.c.authorisation_id == bindparam("id"), text(NOT_AN_AUTHORISATION))
    .order_by(ledger.c.recorded_at, ledger.c.entry_id)
)
_INSERT_ENTRY = insert(ledger)
_INSERT_DECLINE = insert(declines)
_INSERT_IDEMPOTENCY = insert(idempotency_records)


def is_unique_violation(error: BaseException) -> bool:
    """A unique-key clash: SQLAlchemy's IntegrityError, or the driver's own error (psycopg, sqlite3)."""
    driver_error = error.orig if isinstance(error, IntegrityError) else error
    sqlstate = getattr(driver_error, "sqlstate", None)  # psycopg
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(driver_error)


def _insert(connection: Connection, statement: Any, fields: dict[str, Any]) -> None:
    """Insert one row; a unique-key clash (a concurrent duplicate request) becomes DuplicateKey."""
    try:
        connection.execute(statement, fields)
    except IntegrityError as error:
        if is_unique_violation(error):
            raise DuplicateKey(str(error.orig)) from error
        raise


class Repository:
    """Reads and appends through one connection (the unit of work's)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # Registry lookups return frozen records, safe to cache across requests.
    def terminal(self, terminal_id: str) -> Terminal | None:
        row = self.connection.execute(_TERMINAL, {"id": terminal_id}).first()
        if row is None:
            return None
        return Terminal(row.terminal_id, row.merchant_id, row.secret, row.status)

    def merchant(self, merchant_id: str) -> Merchant | None:
        row = self.connection.execute(_MERCHANT, {"id": merchant_id}).first()
        if row is None:
            return None
        return Merchant(row.merchant_id, row.name, row.category, row.district, row.status)

    def all_terminals(self) -> list[Terminal]:
        rows = self.connection.execute(select(terminals.c.terminal_id, terminals.c.merchant_id, terminals.c.secret, terminals.c.status))
        return [Terminal(*row) for row in rows]

    def all_merchants(self) -> list[Merchant]:
        columns = (merchants.c.merchant_id, merchants.c.name, merchants.c.category, merchants.c.district, merchants.c.status)
        return [Merchant(*row) for row in self.connection.execute(select(*columns))]

    def card_holder(self, card_hash: str) -> CardHolder | None:
        row = self.connection.execute(_CARD_HOLDER, {"card_hash": card_hash}).first()
        return None if row is None else holder_from_row(tuple(row))

    def card_holders(self, card_hashes: list[str]) -> dict[str, CardHolder]:
        """The holders of those cards that exist, by card hash, in one query."""
        if not card_hashes:
            return {}
        rows = self.connection.execute(_CARD_HOLDERS, {"hashes": card_hashes})
        return {row.card_hash: holder_from_row(tuple(row)) for row in rows}

    # Idempotency.
    def idempotency(self, terminal_id: str, request_id: str) -> Any:
        return self.connection.execute(_IDEMPOTENCY, {"terminal_id": terminal_id, "request_id": request_id}).first()

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
        _insert(
            self.connection,
            _INSERT_IDEMPOTENCY,
            {
                "terminal_id": terminal_id,
                "request_id": request_id,
                "request_hash": request_hash,
                "status_code": status_code,
                "response_body": body,
                "resource_id": resource_id,
                "created_at": at,
            },
        )

    def record(self, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> Any:
        """Append a ledger entry or decline (`table_name`) with its idempotency record, in the unit of work's transaction.

        (A single-statement unit of work on PostgreSQL does it in one statement: `db.DirectRepository`.)
        """
        _insert(self.connection, _INSERT_ENTRY if table_name == "ledger_entries" else _INSERT_DECLINE, fields)
        _insert(self.connection, _INSERT_IDEMPOTENCY, idempotency)
        return SimpleNamespace(**fields)

    # Ledger.
    def add_entry(self, **fields: Any) -> Any:
        _insert(self.connection, _INSERT_ENTRY, fields)
        return SimpleNamespace(**fields)

    def add_decline(self, **fields: Any) -> Any:
        _insert(self.connection, _INSERT_DECLINE, fields)
        return SimpleNamespace(**fields)

    def authorisation(self, authorisation_id: str, *, lock: bool = False) -> Any:
        statement = _AUTHORISATION_LOCKED if lock else _AUTHORISATION
        return self.connection.execute(statement, {"id": authorisation_id}).first()

    def decline(self, decline_id: str) -> Any:
        return self.connection.execute(_DECLINE, {"id": decline_id}).first()

    def adjustments(self, authorisation_id: str) -> list[Any]:
        return list(self.connection.execute(_ADJUSTMENTS, {"id": authorisation_id}))

    def all_counter_deltas(self, batch_rows: int = 10_000) -> Iterator[dict[str, Any]]:
        query = select(ledger.c.counter_deltas).execution_options(yield_per=batch_rows)
        for (deltas,) in self.connection.execute(query):
            yield deltas
