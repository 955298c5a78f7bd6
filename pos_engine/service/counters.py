"""Counters are a cache of the ledger: rebuild them from it, and prove that they agree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from pos_engine.domain.evaluation import counter_period_end
from pos_engine.limits import COUNTER_KEPT_AFTER_CLOSE_S, OCCURRED_AT_BEHIND_S_MAX
from pos_engine.service.context import EngineContext


@dataclass(frozen=True)
class CounterDifference:
    """A counter whose stored value is not what the ledger says."""

    key: str
    ledger_value: int
    stored_value: int


def _totals(all_deltas: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for deltas in all_deltas:
        for key, delta in deltas.items():
            totals[key] = totals.get(key, 0) + int(delta)
    return {key: value for key, value in totals.items() if value != 0}


def counter_closes_at(key: str) -> datetime | None:
    """When no swipe can add to counter `key` any more: its period's end, plus OCCURRED_AT_BEHIND_S_MAX (how
    late a swipe may come); None for a counter that lasts as long as its campaign (a "campaign" period, a budget)."""
    end = counter_period_end(key)
    return None if end is None else end + timedelta(seconds=OCCURRED_AT_BEHIND_S_MAX)


def _closed_by(key: str, at: datetime) -> bool:
    """Whether counter `key` is closed at `at` (`counter_closes_at`): no swipe can add to it any more."""
    closes_at = counter_closes_at(key)
    return closes_at is not None and closes_at <= at


def _open(values: Mapping[str, int], at: datetime) -> dict[str, int]:
    """The counters still open at `at`: a swipe may still add to them.

    A closed period's counter caps nothing any more; Redis lets it expire (docs/design.md, "Counters").
    """
    return {key: value for key, value in values.items() if not _closed_by(key, at)}


def _kept_since(ctx: EngineContext) -> datetime:
    """Counters closed before this are dropped: stores keep the others COUNTER_KEPT_AFTER_CLOSE_S, as Redis does, for
    a worker whose clock is behind this one's, or a swipe waiting for the counters' lock."""
    return ctx.clock.now() - timedelta(seconds=COUNTER_KEPT_AFTER_CLOSE_S)


def counters_from_ledger(ctx: EngineContext) -> dict[str, int]:
    """Sum every ledger entry's counter deltas: what the counters must hold."""
    with ctx.unit_of_work() as uow:
        return _totals(uow.repo.all_counter_deltas())


def rebuild_counters(ctx: EngineContext, *, under_traffic: bool = False) -> int:
    """Replace every counter with the ledger's value; return how many are non-zero.

    Only counters of periods still open are written, and those closed less than
    COUNTER_KEPT_AFTER_CLOSE_S ago (as Redis keeps them): a worker whose clock is behind this one's,
    or a swipe waiting for the counters' lock, may still add to them. The others (a day that ended
    over OCCURRED_AT_BEHIND_S_MAX and an hour ago, say) cap nothing, and are dropped from the store.

    With the SQL counter store, in one transaction that keeps swipes from changing counters
    between the ledger read and the replace (they wait, up to their statement limit). Redis is
    not in that transaction: the rebuild first waits until terminals are quiet, then writes only
    while no swipe has changed a counter since, and raises CountersBusy if one has (each counter
    is then either rebuilt or as it was). `under_traffic` skips the wait and the check: a swipe
    between the ledger read and the write is then lost from the counters it touched (for when
    Redis lost its counters and caps must hold again at once; run it again when quiet).
    """
    unchanged_since = None if under_traffic else ctx.counters.wait_until_quiet()
    with ctx.unit_of_work() as uow:
        ctx.counters.lock_all(uow.session)
        values = _open(_totals(uow.repo.all_counter_deltas()), _kept_since(ctx))
        ctx.counters.replace_all(values, uow.session, unchanged_since=unchanged_since)
        uow.commit()
    return len(values)


def expire_counters(ctx: EngineContext, everything: bool = False) -> tuple[int, int]:
    """Drop the counters of periods closed over COUNTER_KEPT_AFTER_CLOSE_S ago, and give Redis counters without a time
    to live theirs (swipes create them without, and note them); return how many were dropped, and how many were
    given one. `everything`: read every Redis counter's time to live, not only those swipes noted.

    Safe while terminals swipe: no swipe adds to a closed counter, and no counter's value changes.
    """
    with ctx.unit_of_work() as uow:
        counts = ctx.counters.expire_closed(partial(_closed_by, at=_kept_since(ctx)), uow.session, everything=everything)
        uow.commit()
    return counts


def reconcile_counters(ctx: EngineContext) -> list[CounterDifference]:
    """List every counter of a period still open whose stored value differs from the ledger's.

    A closed period's counter caps nothing any more, and Redis lets it expire, so it is not compared.

    With the SQL counter store both are read at one moment, and swipes go on meanwhile. With
    Redis the two reads are apart: under traffic, swipes in flight show as counters ahead.
    """
    with (ctx.read_snapshot or ctx.unit_of_work)() as uow:
        expected = _totals(uow.repo.all_counter_deltas())
        stored = ctx.counters.snapshot(uow.session)
    now = ctx.clock.now()
    expected, stored = _open(expected, now), _open(stored, now)
    return [
        CounterDifference(key, expected.get(key, 0), stored.get(key, 0))
        for key in sorted(expected.keys() | stored.keys())
        if expected.get(key, 0) != stored.get(key, 0)
    ]
