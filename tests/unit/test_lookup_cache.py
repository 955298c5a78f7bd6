"""Cached card, merchant and terminal lookups expire, so a status change reaches every worker promptly."""

from __future__ import annotations

from typing import Any

from pos_engine.service import context as context_module
from pos_engine.service.context import TtlCache


def test_an_entry_is_served_from_the_cache_until_its_ttl_passes(monkeypatch: Any) -> None:
    now = [100.0]
    monkeypatch.setattr(context_module.time, "monotonic", lambda: now[0])
    loads: list[str] = []
    cache: TtlCache[str] = TtlCache(ttl_s=2.0)

    def load() -> str:
        loads.append("x")
        return f"value-{len(loads)}"

    assert cache.get("card", load) == "value-1"
    now[0] += 1.9
    assert cache.get("card", load) == "value-1"
    now[0] += 0.2
    assert cache.get("card", load) == "value-2"  # the card reported lost is seen after at most the TTL
    assert len(loads) == 2


def test_a_ttl_of_zero_never_caches() -> None:
    calls = []
    cache: TtlCache[int] = TtlCache(ttl_s=0)
    for _ in range(3):
        cache.get("k", lambda: calls.append(1) or len(calls))
    assert len(calls) == 3


def test_the_cache_stays_bounded() -> None:
    cache: TtlCache[int] = TtlCache(ttl_s=60, entries_max=10)
    for index in range(25):
        cache.get(str(index), lambda index=index: index)
    assert len(cache._entries) <= 10
