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


def _fresh_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/migrations.sqlite3"
    import psycopg

    base = request.getfixturevalue("pg_url")
    name = f"pos_engine_test_migrations_{tmp_path.name[-12:].lower().replace('-', '_')}"
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
