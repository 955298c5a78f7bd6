"""card_changes: a feed of changed card holders, written by triggers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 07:50:00

Every worker holds every card holder in memory (pos_engine.service.cards) and
polls this table. Triggers write it, so every change is seen, whoever makes it:
a card added, changed or removed, or a member's groups, service, review year or
district changed (one row for each of the member's cards).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MEMBER_COLUMNS = ("groups", "in_service", "annual_review_year", "district")

POSTGRESQL_FUNCTION = """
CREATE FUNCTION pos_card_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  writer bigint := pg_current_xact_id()::text::bigint;
BEGIN
  IF TG_TABLE_NAME = 'members' THEN
    INSERT INTO card_changes (card_hash, xid) SELECT card_hash, writer FROM cards WHERE member_id = NEW.member_id;
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.card_hash IS DISTINCT FROM NEW.card_hash) THEN
    INSERT INTO card_changes (card_hash, xid) VALUES (OLD.card_hash, writer);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    INSERT INTO card_changes (card_hash, xid) VALUES (NEW.card_hash, writer);
  END IF;
  RETURN NULL;
END
$$
"""


def _member_changed(old: str, new: str) -> str:
    return " OR ".join(f"{old}.{column} IS DISTINCT FROM {new}.{column}" for column in MEMBER_COLUMNS)


def upgrade() -> None:
    op.create_table(
        "card_changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("card_hash", sa.String(length=64), nullable=False),
        sa.Column("xid", sa.BigInteger(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=False), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_card_changes")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("card_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_card_changes_xid"), ["xid"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        op.execute(
            "CREATE TRIGGER cards_changed AFTER INSERT OR UPDATE OR DELETE ON cards FOR EACH ROW EXECUTE FUNCTION pos_card_changed()"
        )
        op.execute(
            "CREATE TRIGGER members_changed AFTER UPDATE ON members "
            f"FOR EACH ROW WHEN ({_member_changed('OLD', 'NEW')}) EXECUTE FUNCTION pos_card_changed()"
        )
    else:
        op.execute(
            "CREATE TRIGGER cards_inserted AFTER INSERT ON cards BEGIN INSERT INTO card_changes (card_hash) VALUES (NEW.card_hash); END"
        )
        op.execute(
            "CREATE TRIGGER cards_updated AFTER UPDATE ON cards BEGIN "
            "INSERT INTO card_changes (card_hash) SELECT OLD.card_hash WHERE OLD.card_hash IS NOT NEW.card_hash; "
            "INSERT INTO card_changes (card_hash) VALUES (NEW.card_hash); END"
        )
        op.execute(
            "CREATE TRIGGER cards_deleted AFTER DELETE ON cards BEGIN INSERT INTO card_changes (card_hash) VALUES (OLD.card_hash); END"
        )
        changed = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in MEMBER_COLUMNS)
        op.execute(
            f"CREATE TRIGGER members_changed AFTER UPDATE ON members WHEN {changed} BEGIN "  # noqa: S608  (fixed names)
            "INSERT INTO card_changes (card_hash) SELECT card_hash FROM cards WHERE member_id = NEW.member_id; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER members_changed ON members")
        op.execute("DROP TRIGGER cards_changed ON cards")
        op.execute("DROP FUNCTION pos_card_changed()")
    else:
        for trigger in ("members_changed", "cards_deleted", "cards_updated", "cards_inserted"):
            op.execute(f"DROP TRIGGER {trigger}")
    with op.batch_alter_table("card_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_card_changes_xid"))
    op.drop_table("card_changes")
