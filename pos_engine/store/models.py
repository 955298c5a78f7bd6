"""SQLAlchemy 2.x models: registry (members, cards, merchants, terminals) and the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        assert value.tzinfo is not None, "datetimes must be timezone-aware"
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012  (SQLAlchemy reads it as is)


class MemberRow(Base):
    __tablename__ = "members"

    member_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    unit_id: Mapped[str] = mapped_column(String(64))
    union_id: Mapped[str] = mapped_column(String(64))
    district: Mapped[str] = mapped_column(String(32))
    groups: Mapped[str] = mapped_column(String(500), default="")  # comma-separated group names
    in_service: Mapped[bool] = mapped_column(Boolean, default=True)
    annual_review_year: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CardRow(Base):
    __tablename__ = "cards"

    card_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The card number is never stored: a keyed hash finds it, the last four digits show it.
    card_hash: Mapped[str] = mapped_column(String(64), unique=True)
    last4: Mapped[str] = mapped_column(String(4))
    member_id: Mapped[str] = mapped_column(ForeignKey("members.member_id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")

    __table_args__ = (CheckConstraint("status in ('active', 'lost', 'frozen', 'cancelled')", name="status"),)


class MerchantRow(Base):
    __tablename__ = "merchants"

    merchant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(32))
    district: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="active")

    __table_args__ = (
        CheckConstraint("status in ('pending', 'active', 'probation', 'suspended', 'removed')", name="status"),
        CheckConstraint("category in ('dining', 'lodging', 'transport', 'travel', 'shopping', 'entertainment')", name="category"),
    )


class TerminalRow(Base):
    __tablename__ = "terminals"

    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"), index=True)
    secret: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="active")


class LedgerEntryRow(Base):
    """One immutable money movement: an approved authorisation, a reversal or a refund.

    Amounts are signed: an authorisation adds, a reversal or refund subtracts,
    so a plain SUM over any set of entries is the net money.
    """

    __tablename__ = "ledger_entries"

    entry_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    authorisation_id: Mapped[str] = mapped_column(String(40))
    terminal_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    merchant_id: Mapped[str] = mapped_column(String(64))
    card_id: Mapped[str] = mapped_column(String(40))
    card_last4: Mapped[str] = mapped_column(String(4))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    discount_fen: Mapped[int] = mapped_column(BigInteger)
    subsidy_fen: Mapped[int] = mapped_column(BigInteger)
    payable_fen: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    rules_version: Mapped[str] = mapped_column(String(64))
    # [{campaign_id, rule_id, kind, amount_fen, counters: [[key, unit], ...]}], amounts signed like the entry.
    benefits: Mapped[list[Any]] = mapped_column(JSON)
    # {counter key: signed delta}: what this entry did to the counters, so they can be rebuilt.
    counter_deltas: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        CheckConstraint("kind in ('authorisation', 'reversal', 'refund')", name="kind"),
        CheckConstraint("discount_fen + subsidy_fen + payable_fen = amount_fen", name="amounts_add_up"),
    )


class DeclineRow(Base):
    """A declined swipe: no money moved, kept so the card office can see who is turned away."""

    __tablename__ = "declines"

    decline_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    merchant_id: Mapped[str] = mapped_column(String(64))
    card_last4: Mapped[str] = mapped_column(String(4))
    decline_code: Mapped[str] = mapped_column(String(32))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    rules_version: Mapped[str] = mapped_column(String(64))


class IdempotencyRow(Base):
    """The stored answer to one terminal request, returned byte for byte on a retry."""

    __tablename__ = "idempotency_records"

    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[bytes] = mapped_column(LargeBinary)
    resource_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CounterRow(Base):
    """A cap or budget counter of the SQL counter store."""

    __tablename__ = "counters"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class CardChangeRow(Base):
    """A card whose holder record changed: the feed that keeps every worker's card directory current.

    Written only by database triggers on `cards` and `members` (migration 0002),
    whoever changes them: the engine, the CLI, or SQL typed by hand. `xid` is
    the writing transaction's id on PostgreSQL (NULL on SQLite), which lets a
    reader poll without missing a transaction that commits out of order.
    """

    __tablename__ = "card_changes"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    card_hash: Mapped[str] = mapped_column(String(64))
    xid: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), server_default=func.current_timestamp())

    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012  (a seq is never reused after a delete)


class RegistryVersionRow(Base):
    """One row whose version database triggers raise whenever a terminal or merchant changes (migration 0003).

    Workers compare it with the version of the registry snapshot they hold, and
    reload the snapshot when it moved.
    """

    __tablename__ = "registry_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


# Every index on the ledger is paid for by every swipe, so each one has a reader (migration 0004):
# - a reversal or refund reads the adjustments already made to its authorisation. Authorisations, most of
#   the rows, are left out of the index: the authorisation itself is found by its primary key.
# - settlement reads the entries and declines recorded in a week: a BRIN index, a few bytes per 128 pages of a
#   table appended in recorded_at order, nearly free to keep (a plain B-tree on SQLite, which has no BRIN).
NOT_AN_AUTHORISATION = "kind <> 'authorisation'"
Index(
    "ix_ledger_entries_adjustments",
    LedgerEntryRow.authorisation_id,
    postgresql_where=text(NOT_AN_AUTHORISATION),
    sqlite_where=text(NOT_AN_AUTHORISATION),
)
RECORDED_AT_INDEX: dict[str, Any] = {"postgresql_using": "brin", "postgresql_with": {"autosummarize": "on"}}
Index("ix_ledger_entries_recorded_at", LedgerEntryRow.recorded_at, **RECORDED_AT_INDEX)
Index("ix_declines_recorded_at", DeclineRow.recorded_at, **RECORDED_AT_INDEX)
