"""The Alembic migrations build exactly the schema the models describe, and step down and up again."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from pos_engine.store.db import normalise_url
from pos_engine.store.migrate import alembic_config, upgrade
from pos_engine.store.models import Base


def _fresh_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest, label: str = "migrations") -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/{label}.sqlite3"
    import psycopg

    base = request.getfixturevalue("pg_url")
    name = f"pos_engine_test_{label}_{tmp_path.name[-12:].lower().replace('-', '_')}"
    admin = normalise_url(base).replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    request.addfinalizer(lambda: _drop(admin, name))
    return base.rsplit("/", 1)[0] + "/" + name


def _drop(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migrated_schema_is_the_models_schema_and_steps_down_and_up(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = _fresh_url(kind, tmp_path, request)
    upgrade(url)
    engine = create_engine(normalise_url(url))
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    command.downgrade(alembic_config(url), "0001")
    listing = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if kind == "sqlite"
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    with engine.connect() as connection:
        tables = {row[0] for row in connection.execute(text(listing))}
    assert "card_changes" not in tables
    assert "cards" in tables
    upgrade(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def _index_definitions(url: str) -> dict[str, str]:
    """Every index by name, as the database itself writes its definition back."""
    listing = (
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        if url.startswith("sqlite")
        else "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    engine = create_engine(normalise_url(url))
    with engine.connect() as connection:
        definitions = {name: " ".join(sql.split()) for name, sql in connection.execute(text(listing)) if "alembic" not in name}
    engine.dispose()
    return definitions


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migrated_indexes_are_the_models_to_their_kind_and_predicate(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """compare_metadata sees an index's columns only; the ledger's indexes differ in method (BRIN) and predicate (partial)."""
    migrated = _fresh_url(kind, tmp_path, request)
    upgrade(migrated)
    modelled = _fresh_url(kind, tmp_path, request, label="models")
    engine = create_engine(normalise_url(modelled))
    Base.metadata.create_all(engine)
    engine.dispose()

    definitions = _index_definitions(migrated)
    assert definitions == _index_definitions(modelled)
    ledger_indexes = {name: sql for name, sql in definitions.items() if "ON ledger_entries" in sql or "ON public.ledger_entries" in sql}
    assert sorted(set(ledger_indexes) - {"pk_ledger_entries"}) == ["ix_ledger_entries_adjustments", "ix_ledger_entries_recorded_at"]
    assert "authorisation" in ledger_indexes["ix_ledger_entries_adjustments"].split("WHERE")[1]
    if kind == "postgresql":
        assert "USING brin (recorded_at) WITH (autosummarize='on')" in ledger_indexes["ix_ledger_entries_recorded_at"]


@pytest.mark.postgres
def test_a_reversal_finds_its_authorisations_adjustments_through_the_partial_index_even_on_a_generic_plan(pg_url: str) -> None:
    """psycopg prepares a statement after its fifth run, and PostgreSQL may then plan it once for every value.

    Such a generic plan can use the partial index only if the query states the index's predicate itself,
    not as a parameter; without it a reversal would read the whole ledger.
    """
    import psycopg
    from sqlalchemy.dialects import postgresql

    from pos_engine.store.repository import _ADJUSTMENTS

    compiled = _ADJUSTMENTS.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined]
    sql = compiled.string
    for number, name in enumerate(compiled.positiontup or compiled.params, start=1):
        sql = sql.replace(f"%({name})s", f"${number}")
    assert "%(" not in sql
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute("SET enable_seqscan = off")
        connection.execute(f"PREPARE adjustments AS {sql}")
        arguments = ", ".join(f"'{value if value is not None else 'au_x'}'" for value in compiled.params.values())
        plan = "\n".join(row[0] for row in connection.execute(f"EXPLAIN EXECUTE adjustments({arguments})"))
    assert "ix_ledger_entries_adjustments" in plan, plan


def test_migration_0004_builds_and_drops_every_postgresql_index_concurrently_outside_a_transaction() -> None:
    """A plain CREATE INDEX on a live ledger would hold every swipe's insert for the whole build."""
    import io

    config = alembic_config("postgresql://postgres@127.0.0.1:5432/offline")  # offline: renders the SQL, connects to nothing
    config.output_buffer = io.StringIO()
    command.upgrade(config, "0003:0004", sql=True)
    statements = [line for line in config.output_buffer.getvalue().splitlines() if line.strip() and not line.startswith("--")]
    index_statements = [line for line in statements if " INDEX " in line]
    assert len(index_statements) == 9
    assert all(" INDEX CONCURRENTLY " in line for line in index_statements), index_statements
    first, last = statements.index(index_statements[0]), statements.index(index_statements[-1])
    assert statements[first - 1] == "COMMIT;" and statements[last + 1] == "BEGIN;"
    assert index_statements[0].startswith("CREATE INDEX CONCURRENTLY ix_ledger_entries_adjustments")
