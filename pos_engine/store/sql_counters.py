"""The SQL counter store: caps and budgets in a table, inside the swipe's own transaction.

It is the embedded default (SQLite) and the fallback on PostgreSQL. On SQLite
the swipe's transaction holds the database write lock from BEGIN IMMEDIATE; on
PostgreSQL the counter rows are locked with SELECT … FOR UPDATE in key order,
so concurrent swipes never deadlock and never see a stale value. Either way a
rollback undoes the reservation with the rest of the swipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from pos_engine.domain.evaluation import Plan, StepOutcome, execute_plan
from pos_engine.store.db import Database
from pos_engine.store.models import CounterRow


class SqlCounterStore:
    """Counters in the `counters` table; `transactional`: it joins the caller's session."""

    transactional = True

    def __init__(self, database: Database) -> None:
        self.database = database

    def _insert(self) -> Any:
        return pg_insert if self.database.is_postgresql else sqlite_insert

    def _lock(self, session: Session, keys: list[str]) -> dict[str, int]:
        if not keys:
            return {}
        if self.database.is_postgresql:
            # Create missing rows first so that every key can be locked; sorted to avoid deadlocks.
            insert = self._insert()(CounterRow).values([{"key": key, "value": 0} for key in keys])
            session.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
            rows = session.execute(
                select(CounterRow.key, CounterRow.value).where(CounterRow.key.in_(keys)).order_by(CounterRow.key).with_for_update()
            )
        else:
            rows = session.execute(select(CounterRow.key, CounterRow.value).where(CounterRow.key.in_(keys)))
        return {key: value for key, value in rows}

    def _write(self, session: Session, values: Mapping[str, int]) -> None:
        if not values:
            return
        insert = self._insert()(CounterRow).values([{"key": key, "value": value} for key, value in values.items()])
        session.execute(insert.on_conflict_do_update(index_elements=["key"], set_={"value": insert.excluded.value}))

    def reserve(self, plan: Plan, session: Any = None) -> list[StepOutcome]:
        assert session is not None, "the SQL counter store works inside the caller's transaction"
        keys = sorted({counter.key for step in plan.steps for counter in step.counters})
        current = self._lock(session, keys)
        working = dict(current)
        outcomes = execute_plan(plan, working)
        self._write(session, {key: value for key, value in working.items() if current.get(key, 0) != value})
        return outcomes

    def apply(self, deltas: Mapping[str, int], session: Any = None) -> None:
        assert session is not None, "the SQL counter store works inside the caller's transaction"
        keys = sorted(key for key, delta in deltas.items() if delta)
        current = self._lock(session, keys)
        self._write(session, {key: current.get(key, 0) + deltas[key] for key in keys})

    def read(self, keys: Iterable[str], session: Any = None) -> dict[str, int]:
        wanted = list(keys)
        with self.database.sessions() as own:
            rows = (session or own).execute(select(CounterRow.key, CounterRow.value).where(CounterRow.key.in_(wanted)))
            found = {key: value for key, value in rows}
        return {key: found.get(key, 0) for key in wanted}

    def snapshot(self) -> dict[str, int]:
        with self.database.sessions() as session:
            rows = session.execute(select(CounterRow.key, CounterRow.value).where(CounterRow.value != 0))
            return {key: value for key, value in rows}

    def replace_all(self, values: Mapping[str, int]) -> None:
        with self.database.sessions() as session, session.begin():
            session.execute(delete(CounterRow))
            nonzero = {key: value for key, value in values.items() if value}
            if nonzero:
                session.execute(self._insert()(CounterRow).values([{"key": k, "value": v} for k, v in nonzero.items()]))
