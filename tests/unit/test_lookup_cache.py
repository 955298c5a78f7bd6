"""The registry snapshot serves terminals and merchants from memory and sees changes on reload."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeRegistry:
    """A registry whose contents the test changes, counting how often it is asked."""

    def __init__(self) -> None:
        from pos_engine.domain.registry import Merchant, Terminal

        self.terminals = {"t-1": Terminal("t-1", "m-1", "secret", "active")}
        self.merchants = {"m-1": Merchant("m-1", "Noodles", "dining", "wujin", "active")}
        self.single_lookups = 0

    def terminal(self, terminal_id: str) -> Any:
        self.single_lookups += 1
        return self.terminals.get(terminal_id)

    def merchant(self, merchant_id: str) -> Any:
        self.single_lookups += 1
        return self.merchants.get(merchant_id)

    def card_holder(self, card_hash: str) -> Any:
        return None

    def all_terminals(self) -> list[Any]:
        return list(self.terminals.values())

    def all_merchants(self) -> list[Any]:
        return list(self.merchants.values())

    def fingerprint(self) -> str | None:
        return None


def test_the_registry_snapshot_serves_terminals_and_merchants_without_a_query_each() -> None:
    from dataclasses import replace

    from pos_engine.domain.registry import Terminal
    from pos_engine.service.context import RegistrySnapshot

    registry = FakeRegistry()
    snapshot = RegistrySnapshot(registry, refresh_s=3600)  # the test reloads by hand
    for _ in range(5):
        assert snapshot.terminal("t-1") is not None
        assert snapshot.merchant("m-1") is not None
    assert registry.single_lookups == 0
    registry.merchants["m-1"] = replace(registry.merchants["m-1"], status="suspended")
    snapshot.reload()  # what the refresher thread does every few seconds
    merchant = snapshot.merchant("m-1")
    assert merchant is not None
    assert merchant.status == "suspended"
    registry.terminals["t-2"] = Terminal("t-2", "m-1", "s2", "active")  # imported after the last reload
    assert snapshot.terminal("t-2") is not None
    assert registry.single_lookups == 1


def test_a_reload_that_fails_half_way_is_tried_again_at_the_next_poll() -> None:
    """The version moved (a merchant suspended), then the database blinked while the snapshot reloaded."""
    from dataclasses import replace

    import pytest

    from pos_engine.service.context import RegistrySnapshot

    class VersionedRegistry(FakeRegistry):
        def __init__(self) -> None:
            super().__init__()
            self.version = "1"
            self.blink = False

        def fingerprint(self) -> str | None:
            return self.version

        def all_merchants(self) -> list[Any]:
            if self.blink:
                self.blink = False
                raise OSError("server closed the connection unexpectedly")
            return super().all_merchants()

    registry = VersionedRegistry()
    snapshot = RegistrySnapshot(registry, refresh_s=3600)
    snapshot.reload()
    registry.merchants["m-1"] = replace(registry.merchants["m-1"], status="suspended")
    registry.version, registry.blink = "2", True
    with pytest.raises(OSError):
        snapshot.reload()
    snapshot.reload()  # the next poll: the version is the same as at the failed load, which must not count
    merchant = snapshot.merchant("m-1")
    assert merchant is not None and merchant.status == "suspended"


def test_a_worker_loads_its_registry_snapshot_at_start_and_still_starts_when_the_database_is_away() -> None:
    from pos_engine.service.context import RegistrySnapshot

    class CountingRegistry(FakeRegistry):
        def __init__(self, away: bool) -> None:
            super().__init__()
            self.away = away
            self.loads = 0

        def all_terminals(self) -> list[Any]:
            if self.away:
                raise ConnectionError("the database is away")
            self.loads += 1
            return super().all_terminals()

    registry = CountingRegistry(away=False)
    snapshot = RegistrySnapshot(registry, refresh_s=3600)
    snapshot.start()
    assert registry.loads == 1
    assert snapshot.terminals.keys() == {"t-1"}  # loaded before any swipe asked

    away = CountingRegistry(away=True)
    context = _context_over(away)
    context.start()  # logs, does not raise
    assert context.snapshot is not None and context.snapshot.terminals == {}
    away.away = False
    assert context.terminal("t-1") is not None  # the first swipe loads it
    assert away.loads == 1 and away.single_lookups == 0


def _context_over(registry: Any) -> Any:
    """An engine context with a registry snapshot (a lookup cache TTL above 0) over `registry`."""
    from datetime import UTC, datetime

    from pos_engine.domain.clock import FixedClock
    from pos_engine.service.context import EngineContext
    from tests.helpers import make_rulebook

    context = EngineContext(
        unit_of_work=None,  # type: ignore[arg-type]
        registry=registry,
        counters=SimpleNamespace(use_clock=lambda clock: None),  # type: ignore[arg-type]  # no swipe here
        rulebook=make_rulebook(),
        clock=FixedClock(datetime(2026, 11, 25, 4, tzinfo=UTC)),
        card_key=b"k",
        lookup_cache_ttl_s=3600,
    )
    context.cards = None  # no card directory thread in a unit test
    return context


def test_an_unknown_terminal_id_costs_one_query_until_the_registry_changes() -> None:
    """Unsigned requests naming made-up terminals must not cost a database query each."""
    from pos_engine.domain.registry import Terminal
    from pos_engine.service.context import UNKNOWN_TERMINALS_MAX, RegistrySnapshot

    registry = FakeRegistry()
    snapshot = RegistrySnapshot(registry, refresh_s=3600)
    snapshot.start()
    for _ in range(5):
        assert snapshot.terminal("t-made-up") is None
    assert registry.single_lookups == 1

    registry.terminals["t-made-up"] = Terminal("t-made-up", "m-1", "s", "active")  # imported after all
    assert snapshot.terminal("t-made-up") is None  # until the registry's next reload ...
    snapshot.reload()  # ... which its version moving brings within refresh_s
    assert snapshot.terminal("t-made-up") is not None

    before = registry.single_lookups
    for index in range(UNKNOWN_TERMINALS_MAX + 10):
        snapshot.terminal(f"t-x{index}")
    assert registry.single_lookups == before + UNKNOWN_TERMINALS_MAX + 10
    assert len(snapshot._unknown_terminals) <= UNKNOWN_TERMINALS_MAX  # bounded
