"""Create or migrate the schema with Alembic (`pos-engine init-db`)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from pos_engine.store.db import normalise_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to `revision`."""
    command.upgrade(alembic_config(database_url), revision)


class SchemaNotCurrent(Exception):
    """The database's schema is older than this code needs (or missing): `pos-engine init-db` migrates it."""


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def check_schema(engine: Any) -> None:
    """Refuse a database whose schema this code must first migrate; let anything else through.

    No schema, or a revision older than this code's head: SchemaNotCurrent,
    saying to run `pos-engine init-db`. A revision this code does not know
    (a newer release migrated the database first, as a rolling deploy does)
    is logged and served: each migration must leave the release before it able
    to run (README, "Production"). A database that does not answer is left to
    the engine's own retries (its workers start, answer 503 and recover), so
    the check raises nothing then.
    """
    from sqlalchemy.exc import OperationalError

    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except OperationalError:
        return
    script = _script()
    head = script.get_current_head()
    if current == head:
        return
    if current is None:
        raise SchemaNotCurrent("the database has no schema yet; run `pos-engine init-db` first")
    try:
        script.get_revision(current)
    except CommandError:  # not one of this release's revisions: a newer release's
        log.warning("the database's schema is at %s, which this release does not know (it needs %s); serving anyway", current, head)
        return
    raise SchemaNotCurrent(f"the database's schema is at {current}, this release needs {head}; run `pos-engine init-db` to migrate it")
