"""A release refuses a database it must migrate first, and serves one a newer release migrated."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pos_engine.store.migrate import SchemaNotCurrent, check_schema, upgrade


def test_a_schema_at_this_release_s_head_passes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/head.sqlite3"
    upgrade(url)
    check_schema(create_engine(url))


def test_no_schema_or_an_older_one_is_refused_naming_init_db(tmp_path: Path) -> None:
    with pytest.raises(SchemaNotCurrent, match="no schema yet; run `pos-engine init-db` first"):
        check_schema(create_engine(f"sqlite:///{tmp_path}/empty.sqlite3"))
    url = f"sqlite:///{tmp_path}/old.sqlite3"
    upgrade(url, "0002")
    with pytest.raises(SchemaNotCurrent, match="schema is at 0002, this release needs 0004; run `pos-engine init-db`"):
        check_schema(create_engine(url))


def test_a_newer_release_s_schema_is_served_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/newer.sqlite3"
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as connection:  # as the next release's migration would leave it
        connection.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    with caplog.at_level(logging.WARNING):
        check_schema(engine)
    assert "schema is at 0005, which this release does not know (it needs 0004); serving anyway" in caplog.text


def test_a_database_that_does_not_answer_is_left_to_the_engine_s_retries() -> None:
    check_schema(create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing_listens_here"))
