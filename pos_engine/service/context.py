"""The engine's wiring for the use cases: database, counters, rulebook, clock, lookup cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pos_engine.domain.clock import Clock
from pos_engine.domain.registry import CardHolder, Merchant, Terminal, card_hash
from pos_engine.domain.rulebook import Rulebook
from pos_engine.limits import LOOKUP_CACHE_TTL_S
from pos_engine.service.background import ProcessThread, RepeatedFailure
from pos_engine.service.cards import CardDirectory
from pos_engine.service.ports import CounterStore, Registry, SwipeUnitOfWork, UnitOfWork

log = logging.getLogger(__name__)

UNKNOWN_TERMINALS_MAX = 10_000  # terminal ids remembered as unknown between two reloads of the registry


class RegistrySnapshot:
    """Every terminal and merchant, held in memory; a daemon thread asks every `refresh_s` whether they changed.

    A city has some thousands of merchants and tills, and each till swipes only
    now and then, so a per-entry cache would miss on most swipes; one query for
    all of them every few seconds costs less than one per swipe. A status change
    (a merchant suspended, a till switched off) reaches every worker within
    `refresh_s`. The question is the registry's `fingerprint()` (a version that
    database triggers raise, pos_engine.store.db.SqlRegistry); the snapshot is
    reloaded only when it moved, or every time if the store cannot tell (None).
    An id the snapshot does not know yet (just imported) is looked up directly;
    a terminal id found nowhere is remembered as unknown until the registry
    next changes, so that unsigned requests naming made-up terminals cost no
    query each (a terminal imported meanwhile is found at that reload).
    """

    def __init__(self, registry: Registry, refresh_s: float) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.terminals: dict[str, Terminal] = {}
        self.merchants: dict[str, Merchant] = {}
        self._unknown_terminals: set[str] = set()
        self._fingerprint: str | None = None
        # Loaded and refreshed in the process that uses it (a gunicorn worker, after the fork).
        self._refresher = ProcessThread("registry-snapshot", self._run, before_start=self.reload)

    def reload(self) -> None:
        # Skip the reload when the registry's fingerprint is unchanged: rebuilding some
        # thousands of records every few seconds takes the GIL from swipes in flight
        # (measured: p99 25 ms instead of 8 ms at a moderate rate).
        fingerprint = self.registry.fingerprint()
        if fingerprint is not None and fingerprint == self._fingerprint:
            return
        terminals = {terminal.terminal_id: terminal for terminal in self.registry.all_terminals()}
        merchants = {merchant.merchant_id: merchant for merchant in self.registry.all_merchants()}
        self.terminals, self.merchants = terminals, merchants  # swapped whole: readers never see half
        self._unknown_terminals = set()  # the registry changed: any of them may exist now
        # Only now: a load that failed half-way must be tried again at the next poll, not skipped as current.
        self._fingerprint = fingerprint

    def _run(self) -> None:
        reloading = RepeatedFailure(log, "registry snapshot reload", "keeping the previous one")
        while True:
            time.sleep(self.refresh_s)
            try:
                self.reload()
                reloading.succeeded()
            except Exception as error:
                reloading.failed(error)

    def start(self) -> None:
        """Load the snapshot and start its refresher in this process now, rather than on its first swipe."""
        self._refresher.ensure_started()

    def terminal(self, terminal_id: str) -> Terminal | None:
        self._refresher.ensure_started()
        found = self.terminals.get(terminal_id)
        if found is not None or terminal_id in self._unknown_terminals:
            return found
        found = self.registry.terminal(terminal_id)
        if found is None:
            unknown = self._unknown_terminals
            if len(unknown) >= UNKNOWN_TERMINALS_MAX:  # bounded: made-up ids cannot grow it without end
                unknown.clear()
            unknown.add(terminal_id)
        return found

    def merchant(self, merchant_id: str) -> Merchant | None:
        self._refresher.ensure_started()
        return self.merchants.get(merchant_id) or self.registry.merchant(merchant_id)


@dataclass
class EngineContext:
    """Everything a use case needs; built once per process by the app factory or the CLI."""

    unit_of_work: Callable[[], UnitOfWork]
    registry: Registry
    counters: CounterStore
    rulebook: Rulebook
    clock: Clock
    card_key: bytes
    lookup_cache_ttl_s: float = LOOKUP_CACHE_TTL_S
    # Lighter units of work for recording a swipe, if the store has them (else `unit_of_work`):
    # with a non-transactional counter store, one statement that commits itself (also used
    # to read a stored answer); with a transactional one, the swipe's whole transaction.
    single_statement: Callable[[], SwipeUnitOfWork] | None = None
    swipe_transaction: Callable[[], SwipeUnitOfWork] | None = None
    # A read-only transaction over one moment of the database, taking no write lock (counters reconcile).
    read_snapshot: Callable[[], UnitOfWork] | None = None
    snapshot: RegistrySnapshot | None = field(init=False)
    cards: CardDirectory | None = field(init=False)
    # The app's own threads (the rulebook watcher) that every process serving terminals runs: see `run_in_each_process`.
    background: tuple[ProcessThread, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.counters.use_clock(self.clock)
        # A TTL of 0 (the tests) reads the registry on every swipe: no snapshot, no card directory.
        caching = self.lookup_cache_ttl_s > 0
        self.snapshot = RegistrySnapshot(self.registry, self.lookup_cache_ttl_s) if caching else None
        self.cards = CardDirectory(self.registry) if caching else None

    def single_statement_work(self) -> SwipeUnitOfWork:
        return self.single_statement() if self.single_statement is not None else self.unit_of_work()

    def swipe_work(self) -> SwipeUnitOfWork:
        """The unit of work a swipe is recorded in, for this counter store."""
        if not self.counters.transactional:
            return self.single_statement_work()
        return self.swipe_transaction() if self.swipe_transaction is not None else self.unit_of_work()

    def start(self) -> None:
        """Start loading the card directory, load the registry snapshot and start the other background threads
        in this process (a worker after the fork), so that its first swipe does not wait for them (the snapshot
        took 130-180 ms on the large world). Requests start them too: if the database cannot be read now, the
        first swipe tries again.
        """
        self.ensure_background()
        if self.snapshot is not None:
            try:
                self.snapshot.start()
            except Exception as error:  # the database is away: the engine still starts, as it does without a snapshot
                log.warning("registry snapshot not loaded at start (%s); the first swipe loads it", error)

    def run_in_each_process(self, thread: ProcessThread) -> None:
        """Run `thread` in each process that serves: started by `start`, or at the process's first request
        (`gunicorn --preload` forks the workers after the app was built; the card directory and the registry
        snapshot start theirs the same way).
        """
        self.background = (*self.background, thread)

    def ensure_background(self) -> None:
        """The threads of `run_in_each_process` and the card directory's run in this process (one comparison
        each once they do): a forked worker's card directory starts loading at its first request, whatever it is.
        """
        for thread in self.background:
            thread.ensure_started()
        if self.cards is not None:
            self.cards.start()

    def card_hash(self, card_number: str) -> str:
        """The keyed hash the card is found by; the number itself is never stored."""
        return card_hash(self.card_key, card_number)

    def terminal(self, terminal_id: str) -> Terminal | None:
        """The terminal a request names: every terminal request asks this first, so it keeps the background going."""
        self.ensure_background()
        if self.snapshot is None:
            return self.registry.terminal(terminal_id)
        return self.snapshot.terminal(terminal_id)

    def merchant(self, merchant_id: str) -> Merchant | None:
        if self.snapshot is None:
            return self.registry.merchant(merchant_id)
        return self.snapshot.merchant(merchant_id)

    def card_holder(self, card_hash: str) -> CardHolder | None:
        if self.cards is None:
            return self.registry.card_holder(card_hash)
        return self.cards.get(card_hash)

    def replace_rulebook(self, rulebook: Rulebook) -> None:
        """Swap in a validated rulebook; swipes already running keep the one they started with."""
        self.rulebook = rulebook
