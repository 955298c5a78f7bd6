"""The SQL counter store: caps and budgets in a table, inside the swipe's own transaction.

It is the embedded default (SQLite) and the fallback on PostgreSQL. On SQLite
the swipe's transaction holds the database write lock from BEGIN IMMEDIATE; on
PostgreSQL the counter rows are locked with SELECT … FOR UPDATE in key order,
so concurrent swipes never deadlock and never see a stale value. Either way a
rollback undoes the reservation with the rest of the swipe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from pos_engine.domain.clock import Clock
from pos_engine.domain.evaluation import Plan, StepOutcome, execute_plan
from pos_engine.service.ports import Claim
from pos_engine.store.db import Database
from pos_engine.store.models import CounterRow

REPLACE_BATCH_ROWS = 10_000  # rows per INSERT when a rebuild rewrites the table
counters_table = cast(Table, CounterRow.__table__)
_DELETE_BATCH_KEYS = 1_000  # keys per DELETE in `expire_closed`
# Built once: a swipe's counter statements differ only in their parameters.
_SELECT = select(counters_table.c.key, counters_table.c.value).where(counters_table.c.key.in_(bindparam("keys", expanding=True)))
_PG_LOCK = _SELECT.order_by(counters_table.c.key).with_for_update()
_PG_CREATE = pg_insert(counters_table).values(key=bindparam("key"), value=0).on_conflict_do_nothing(index_elements=["key"])
_pg_upsert = pg_insert(counters_table).values(key=bindparam("key"), value=bindparam("value"))
_PG_UPSERT = _pg_upsert.on_conflict_do_update(index_elements=["key"], set_={"value": _pg_upsert.excluded.value})
_sqlite_upsert = sqlite_insert(counters_table).values(key=bindparam("key"), value=bindparam("value"))
_SQLITE_UPSERT = _sqlite_upsert.on_conflict_do_update(index_elements=["key"], set_={"value": _sqlite_upsert.excluded.value})
# The same upsert as driver SQL (parameters: key, value), for a swipe's driver-level transaction.
_sqlite_upsert_compiled = _SQLITE_UPSERT.compile(dialect=sqlite_dialect())
assert _sqlite_upsert_compiled.positiontup == ["key", "value"], _sqlite_upsert_compiled.positiontup
_SQLITE_UPSERT_SQL = str(_sqlite_upsert_compiled)


class SqlCounterStore:
    """Counters in the `counters` table; `transactional`: it joins the caller's session."""

    transactional = True

    def __init__(self, database: Database) -> None:
        self.database = database

    def _lock(self, session: Any, keys: list[str]) -> dict[str, int]:
        if not keys:
            return {}
        if isinstance(session, sqlite3.Connection):  # a swipe's driver-level transaction (db.SqliteSwipeTransaction)
            placeholders = ", ".join("?" for _ in keys)
            return dict(session.execute(f"SELECT key, value FROM counters WHERE key IN ({placeholders})", keys))  # noqa: S608
        if self.database.is_postgresql:
            # Create missing rows first so that every key can be locked; sorted to avoid deadlocks.
            session.execute(_PG_CREATE, [{"key": key} for key in keys])
            rows = session.execute(_PG_LOCK, {"keys": keys})
        else:
            rows = session.execute(_SELECT, {"keys": keys})
        return {key: value for key, value in rows}

    def _write(self, session: Any, values: Mapping[str, int]) -> None:
        if not values:
            return
        if isinstance(session, sqlite3.Connection):  # a swipe's driver-level transaction
            session.executemany(_SQLITE_UPSERT_SQL, list(values.items()))
            return
        statement = _PG_UPSERT if self.database.is_postgresql else _SQLITE_UPSERT
        session.execute(statement, [{"key": key, "value": value} for key, value in values.items()])

    def unclaim(self, claim: Claim, outcome_unknown: bool = False) -> None:
        """Nothing to do: this store runs inside the swipe's transaction, which checks idempotency itself."""

    def hold_give_back(self, token: str) -> None:
        """Nothing to do: an adjustment gives caps back inside its own transaction."""

    def reserve(self, plan: Plan, session: Any = None, claim: Claim | None = None) -> list[StepOutcome]:
        assert session is not None, "the SQL counter store works inside the caller's transaction"
        keys = sorted({counter.key for step in plan.steps for counter in step.counters})
        current = self._lock(session, keys)
        working = dict(current)
        outcomes = execute_plan(plan, working)
        self._write(session, {key: value for key, value in working.items() if current.get(key, 0) != value})
        return outcomes

    def apply(self, deltas: Mapping[str, int], session: Any = None, hold: str | None = None) -> None:
        assert session is not None, "the SQL counter store works inside the caller's transaction"
        assert hold is None, "the SQL counter store holds nothing: its give-backs are in the adjustment's transaction"
        keys = sorted(key for key, delta in deltas.items() if delta)
        current = self._lock(session, keys)
        self._write(session, {key: current.get(key, 0) + deltas[key] for key in keys})

    def read(self, keys: Iterable[str], session: Any = None) -> dict[str, int]:
        wanted = list(keys)
        if session is not None:
            found = {key: value for key, value in session.execute(_SELECT, {"keys": wanted})}
        else:
            with self.database.sessions() as own:
                found = {key: value for key, value in own.execute(_SELECT, {"keys": wanted})}
        return {key: found.get(key, 0) for key in wanted}

    def snapshot(self, session: Any = None) -> dict[str, int]:
        query = select(counters_table.c.key, counters_table.c.value).where(counters_table.c.value != 0)
        if session is not None:
            return {key: value for key, value in session.execute(query)}
        with self.database.sessions() as own:
            return {key: value for key, value in own.execute(query)}

    def expire_closed(self, closed: Callable[[str], bool], session: Any = None, everything: bool = False) -> tuple[int, int]:
        """Delete the closed counters' rows (rows have no time to live); every row is read, whatever `everything` says."""
        assert session is not None, "the SQL counter store works inside the caller's transaction"
        keys = [key for (key,) in session.execute(select(counters_table.c.key)) if closed(key)]
        for start in range(0, len(keys), _DELETE_BATCH_KEYS):
            session.execute(delete(counters_table).where(counters_table.c.key.in_(keys[start : start + _DELETE_BATCH_KEYS])))
        return len(keys), 0

    def check_settings(self) -> None:
        """Nothing to check: rows are not evicted."""

    def use_clock(self, clock: Clock) -> None:
        """Nothing expires here: `counters expire` and `counters rebuild` drop the counters of ended periods."""

    def reset(self) -> None:
        """Delete every counter, in a transaction of its own."""
        self.replace_all({})

    def wait_until_quiet(self) -> None:
        """Nothing to wait for: `lock_all` keeps swipes from changing counters while a rebuild runs."""

    def lock_all(self, session: Any) -> None:
        """PostgreSQL: lock the table against writers (readers go on); SQLite: the caller's transaction holds the write lock."""
        if self.database.is_postgresql:
            session.execute(text("LOCK TABLE counters IN EXCLUSIVE MODE"))

    def replace_all(self, values: Mapping[str, int], session: Any = None, unchanged_since: Any = None) -> None:
        """Replace the table's rows (`unchanged_since` is not needed: the caller's `lock_all` holds swipes off)."""
        if session is None:
            with self.database.sessions() as own, own.begin():
                self._replace_all(values, own)
        else:
            self._replace_all(values, session)

    def _replace_all(self, values: Mapping[str, int], session: Any) -> None:
        session.execute(delete(counters_table))
        rows = [{"key": key, "value": value} for key, value in values.items() if value]
        for start in range(0, len(rows), REPLACE_BATCH_ROWS):
            session.execute(insert(counters_table), rows[start : start + REPLACE_BATCH_ROWS])
