"""Counters are a cache of the ledger: rebuild them from it, and prove that they agree."""

from __future__ import annotations

from dataclasses import dataclass

from pos_engine.service.context import EngineContext


@dataclass(frozen=True)
class CounterDifference:
    """A counter whose stored value is not what the ledger says."""

    key: str
    ledger_value: int
    stored_value: int


def counters_from_ledger(ctx: EngineContext) -> dict[str, int]:
    """Sum every ledger entry's counter deltas: what the counters must hold."""
    totals: dict[str, int] = {}
    with ctx.unit_of_work() as uow:
        for deltas in uow.repo.all_counter_deltas():
            for key, delta in deltas.items():
                totals[key] = totals.get(key, 0) + int(delta)
    return {key: value for key, value in totals.items() if value != 0}


def rebuild_counters(ctx: EngineContext) -> int:
    """Replace every counter with the ledger's value; return how many are non-zero.

    Run it while terminals are quiet: swipes that land between the ledger read
    and the replace would be missing from the rebuilt counters.
    """
    values = counters_from_ledger(ctx)
    ctx.counters.replace_all(values)
    return len(values)


def reconcile_counters(ctx: EngineContext) -> list[CounterDifference]:
    """List every counter whose stored value differs from the ledger's."""
    expected = counters_from_ledger(ctx)
    stored = ctx.counters.snapshot()
    return [
        CounterDifference(key, expected.get(key, 0), stored.get(key, 0))
        for key in sorted(expected.keys() | stored.keys())
        if expected.get(key, 0) != stored.get(key, 0)
    ]
