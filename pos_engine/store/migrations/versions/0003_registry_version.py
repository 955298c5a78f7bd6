"""registry_version: one number that triggers raise whenever a terminal or merchant changes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00

Every worker holds every terminal and merchant in memory
(pos_engine.service.context.RegistrySnapshot) and asks every few seconds
whether they changed. It used to ask with an md5 over both whole tables: 41 ms
of database CPU per worker per poll for 10,000 merchants and terminals, in one
burst that delayed the swipes beside it. Now it reads this row. Triggers raise
it, so every change is seen, whoever makes it (the engine, the CLI, COPY, or
SQL typed by hand). The version is raised inside the writing transaction, so
a reader sees the new number only once the change itself is visible.

On PostgreSQL the triggers are per statement (a bulk import raises it once)
and include TRUNCATE; concurrent registry writers queue on the row until they
commit, which registry writes (imports, a clerk's edits) can afford. SQLite
has row triggers only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("terminals", "merchants")
RAISE = "UPDATE registry_version SET version = version + 1 WHERE id = 1"

POSTGRESQL_FUNCTION = f"""
CREATE FUNCTION pos_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  {RAISE};
  RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "registry_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_version")),
    )
    op.execute("INSERT INTO registry_version (id, version) VALUES (1, 1)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION pos_registry_changed()"
            )
    else:
        for table in TABLES:
            for event in ("INSERT", "UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_{event.lower()}d AFTER {event} ON {table} BEGIN {RAISE}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_changed ON {table}")
        op.execute("DROP FUNCTION pos_registry_changed()")
    else:
        for table in TABLES:
            for event in ("INSERT", "UPDATE", "DELETE"):
                op.execute(f"DROP TRIGGER {table}_{event.lower()}d")
    op.drop_table("registry_version")
