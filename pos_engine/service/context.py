"""The engine's wiring for the use cases: database, counters, rulebook, clock, lookup cache."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pos_engine.domain.clock import Clock
from pos_engine.domain.registry import CardHolder, Merchant, Terminal
from pos_engine.domain.rulebook import Rulebook
from pos_engine.limits import LOOKUP_CACHE_ENTRIES_MAX, LOOKUP_CACHE_TTL_S
from pos_engine.service.ports import CounterStore, Registry, UnitOfWork

V = TypeVar("V")


class TtlCache(Generic[V]):
    """A per-process cache whose entries live `ttl_s` seconds.

    Status changes (a card reported lost, a merchant removed) reach every
    worker within `ttl_s`. A TTL of 0 disables caching.
    """

    def __init__(self, ttl_s: float, entries_max: int = LOOKUP_CACHE_ENTRIES_MAX) -> None:
        self.ttl_s = ttl_s
        self.entries_max = entries_max
        self._entries: dict[str, tuple[float, V | None]] = {}

    def get(self, key: str, load: Callable[[], V | None]) -> V | None:
        if self.ttl_s <= 0:
            return load()
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if len(self._entries) >= self.entries_max:
            self._entries.clear()  # crude but bounded; entries come back on the next swipe
        self._entries[key] = (now + self.ttl_s, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class EngineContext:
    """Everything a use case needs; built once per process by the app factory or the CLI."""

    unit_of_work: Callable[..., UnitOfWork]  # (single_statement: bool = False) -> UnitOfWork
    registry: Registry
    counters: CounterStore
    rulebook: Rulebook
    clock: Clock
    card_key: bytes
    lookup_cache_ttl_s: float = LOOKUP_CACHE_TTL_S
    terminals: TtlCache[Terminal] = field(init=False)
    merchants: TtlCache[Merchant] = field(init=False)
    card_holders: TtlCache[CardHolder] = field(init=False)

    def __post_init__(self) -> None:
        self.terminals = TtlCache(self.lookup_cache_ttl_s)
        self.merchants = TtlCache(self.lookup_cache_ttl_s)
        self.card_holders = TtlCache(self.lookup_cache_ttl_s)

    def card_hash(self, card_number: str) -> str:
        """The keyed hash the card is found by; the number itself is never stored."""
        return hmac.new(self.card_key, card_number.encode("ascii"), hashlib.sha256).hexdigest()

    def terminal(self, terminal_id: str) -> Terminal | None:
        return self.terminals.get(terminal_id, lambda: self.registry.terminal(terminal_id))

    def merchant(self, merchant_id: str) -> Merchant | None:
        return self.merchants.get(merchant_id, lambda: self.registry.merchant(merchant_id))

    def card_holder(self, card_hash: str) -> CardHolder | None:
        return self.card_holders.get(card_hash, lambda: self.registry.card_holder(card_hash))

    def replace_rulebook(self, rulebook: Rulebook) -> None:
        """Swap in a validated rulebook; swipes already running keep the one they started with."""
        self.rulebook = rulebook

    def clear_caches(self) -> None:
        self.terminals.clear()
        self.merchants.clear()
        self.card_holders.clear()
