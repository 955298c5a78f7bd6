r"""ledger indexes: only those a reader uses, so a swipe pays for no other

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 05:00:00

Every swipe writes one ledger row (or decline) and every index on its table.
The card, merchant and (kind, recorded_at) B-trees had no reader: settlement,
scoring and the card office's histories are not built yet, and each adds the
index it reads through when it is (`CREATE INDEX CONCURRENTLY` on a live
ledger). Together with the authorisation index they cost ~80 µs of PostgreSQL
CPU a swipe, and the card and merchant ones take rows in random order, so
after each checkpoint they write whole pages to the WAL (docs/performance.md).

What stays or replaces them:
- ix_ledger_entries_adjustments: the reversals and refunds of an authorisation
  (what a reversal or refund reads first). A partial index without the
  authorisations themselves, which are found by their primary key.
- ix_ledger_entries_recorded_at and ix_declines_recorded_at: settlement's week
  (the entries recorded in it). BRIN on PostgreSQL: the tables are appended in
  recorded_at order, so a summary per 128 pages finds a week, and keeping it
  costs next to nothing. SQLite has no BRIN and keeps a B-tree.

On PostgreSQL every index is built and dropped CONCURRENTLY, outside the
migration's transaction, so swipes keep being recorded while a long ledger is
read: a plain CREATE INDEX would hold their inserts for the whole build. The
adjustments index is built before the old authorisation index goes, so a
reversal always has one to read. The statements commit one by one, and the
schema's version moves to 0004 only after the last. A run that stops part
way (a lost connection, a cancelled build, which leaves an INVALID index)
stays at 0003. Drop the new indexes it left (`ix_ledger_entries_adjustments`,
and an `ix_ledger_entries_recorded_at` or `ix_declines_recorded_at` that
`\d ledger_entries` or `\d declines` shows as brin or INVALID) with
`DROP INDEX CONCURRENTLY`, and run it again: it drops the old indexes only
where they are still there.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NOT_AN_AUTHORISATION = "kind <> 'authorisation'"  # the models' own predicate, as it was on this revision
BRIN: dict[str, Any] = {"postgresql_using": "brin", "postgresql_with": {"autosummarize": "on"}}
DROPPED = {
    "ledger_entries": (
        ("ix_ledger_entries_authorisation_id", ["authorisation_id"]),
        ("ix_ledger_entries_card_id", ["card_id"]),
        ("ix_ledger_entries_kind_recorded", ["kind", "recorded_at"]),
        ("ix_ledger_entries_merchant_id", ["merchant_id"]),
        ("ix_ledger_entries_recorded_at", ["recorded_at"]),
    ),
    "declines": (("ix_declines_merchant_id", ["merchant_id"]),),
}


def upgrade() -> None:
    context = op.get_context()
    postgresql = context.dialect.name == "postgresql"
    with context.autocommit_block() if postgresql else nullcontext():
        concurrently: dict[str, Any] = {"postgresql_concurrently": True} if postgresql else {}
        where = sa.text(NOT_AN_AUTHORISATION)
        op.create_index(
            "ix_ledger_entries_adjustments",
            "ledger_entries",
            ["authorisation_id"],
            postgresql_where=where,
            sqlite_where=where,
            **concurrently,
        )
        for table, indexes in DROPPED.items():
            for name, _columns in indexes:
                op.drop_index(name, table_name=table, if_exists=True, **concurrently)
        op.create_index("ix_ledger_entries_recorded_at", "ledger_entries", ["recorded_at"], **BRIN, **concurrently)
        op.create_index("ix_declines_recorded_at", "declines", ["recorded_at"], **BRIN, **concurrently)


def downgrade() -> None:
    op.drop_index("ix_declines_recorded_at", table_name="declines")
    op.drop_index("ix_ledger_entries_recorded_at", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_adjustments", table_name="ledger_entries")
    for table, indexes in DROPPED.items():
        for name, columns in indexes:
            op.create_index(name, table, columns)
