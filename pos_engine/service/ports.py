"""The ports the use cases depend on; the store implements them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from pos_engine.domain.clock import Clock
from pos_engine.domain.evaluation import Plan, StepOutcome
from pos_engine.domain.registry import Merchant, Terminal
from pos_engine.service.cards import CardSource


class Registry(CardSource, Protocol):
    """Registry lookups on the swipe path: terminals and merchants here, card holders in CardSource."""

    def terminal(self, terminal_id: str) -> Terminal | None: ...

    def merchant(self, merchant_id: str) -> Merchant | None: ...

    def all_terminals(self) -> list[Terminal]: ...

    def all_merchants(self) -> list[Merchant]: ...

    def fingerprint(self) -> str | None:
        """A value that changes whenever any terminal or merchant changes; None if the store cannot tell."""
        ...


class RecordRepository(Protocol):
    """What a single-statement unit of work offers: record a swipe, or read a stored answer."""

    def idempotency(self, terminal_id: str, request_id: str) -> Any: ...

    def record(self, table_name: str, fields: dict[str, Any], idempotency: dict[str, Any]) -> Any:
        """Append a ledger entry or decline (`table_name`) with its idempotency record, atomically."""
        ...


class LedgerRepository(RecordRepository, Protocol):
    """What the use cases read and append inside a unit of work (see pos_engine.store.repository)."""

    def add_idempotency(
        self,
        terminal_id: str,
        request_id: str,
        request_hash: str,
        status_code: int,
        body: bytes,
        resource_id: str | None,
        at: datetime,
    ) -> None: ...

    def add_entry(self, **fields: Any) -> Any: ...

    def add_decline(self, **fields: Any) -> None: ...

    def authorisation(self, authorisation_id: str, *, lock: bool = False) -> Any: ...

    def decline(self, decline_id: str) -> Any: ...

    def adjustments(self, authorisation_id: str) -> list[Any]: ...

    def all_counter_deltas(self, batch_rows: int = 10_000) -> Iterator[dict[str, Any]]: ...


class SwipeUnitOfWork(Protocol):
    """What recording a swipe needs: a repo that records it (or reads a stored answer), a session
    for a transactional counter store to join, and commit. A store may offer a lighter one than
    `UnitOfWork` (pos_engine.store.db: one autocommit statement on PostgreSQL, a driver-level
    transaction on SQLite)."""

    @property
    def session(self) -> Any: ...

    @property
    def repo(self) -> RecordRepository: ...

    def __enter__(self) -> SwipeUnitOfWork: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def commit(self) -> None: ...


class UnitOfWork(SwipeUnitOfWork, Protocol):
    """One database transaction that rolls back unless committed, with the whole repository."""

    @property
    def repo(self) -> LedgerRepository: ...

    def __enter__(self) -> UnitOfWork: ...


class Claim(NamedTuple):
    """One attempt's claim on a request: the request's identity, and a token that only this attempt holds.

    `unclaim` drops the claim only while its token is still the one stored, so an attempt never drops a claim
    it did not get: one it found taken, or one that expired and was taken since by another attempt.
    """

    request: str
    token: str


class CounterStore(Protocol):
    """Caps and budgets, reserved atomically.

    `transactional` stores (the SQL store) work inside the caller's database
    transaction, passed as `session`: a rollback undoes their changes. Other
    stores (Redis) ignore `session`, and the caller gives back what it
    reserved if its transaction fails.
    """

    transactional: bool

    def reserve(self, plan: Plan, session: Any = None, claim: Claim | None = None) -> list[StepOutcome]:
        """Run `execute_plan` atomically against the stored counters; all or none.

        A non-transactional store given `claim` also claims that request in the
        same atomic step, and raises AlreadyClaimed if it was claimed before.
        """
        ...

    def unclaim(self, claim: Claim, outcome_unknown: bool = False) -> None:
        """Drop a claim made by `reserve` (after the swipe failed to be recorded), if it is still this attempt's.

        `outcome_unknown`: the record may still commit; a retry may swipe again, but a rebuild waits for it.
        """
        ...

    def hold_give_back(self, token: str) -> None:
        """Before an adjustment commits (a non-transactional store): note that `apply(..., hold=token)` follows."""
        ...

    def apply(self, deltas: Mapping[str, int], session: Any = None, hold: str | None = None) -> None:
        """Add `deltas` (negative to give back) without checking limits.

        `hold`: drop that note in the same step; if it has expired, change nothing and raise HoldExpired.
        """
        ...

    def expire_closed(self, closed: Callable[[str], bool], session: Any = None, everything: bool = False) -> tuple[int, int]:
        """Drop every counter for which `closed(key)` holds, and give a store's time to live to the others that lack it.

        Returns how many were dropped, and how many were given a time to live. Safe while terminals swipe:
        no swipe adds to a closed counter, and no value changes. A store that notes the counters swipes create
        without a time to live looks only at those, unless `everything` is asked.
        """
        ...

    def check_settings(self) -> None:
        """Raise CountersMisconfigured if the store is set up so that it may lose counters (Redis evicting keys)."""
        ...

    def use_clock(self, clock: Clock) -> None:
        """Tell the time by the engine's `clock`: a store that lets counters of ended periods expire counts from it."""
        ...

    def reset(self) -> None:
        """Forget every counter (and claim): the ledger was emptied too (`demo --reset`, tests, load tests)."""
        ...

    def read(self, keys: Iterable[str], session: Any = None) -> dict[str, int]:
        """Current values of `keys` (0 for a key never written)."""
        ...

    def snapshot(self, session: Any = None) -> dict[str, int]:
        """Every counter whose value is not 0 (a transactional store: as `session` sees them)."""
        ...

    def wait_until_quiet(self) -> Any:
        """Before a rebuild reads the ledger: wait until no swipe is changing counters, and return a mark of that moment.

        A transactional store returns None at once (`lock_all` keeps swipes out). Another store waits
        until no reservation is in flight, and raises CountersBusy if terminals do not go quiet in time;
        `replace_all(..., unchanged_since=mark)` then writes only while no counter has changed since.
        """
        ...

    def lock_all(self, session: Any) -> None:
        """Keep swipes from changing any counter until `session`'s transaction ends (a transactional store)."""
        ...

    def replace_all(self, values: Mapping[str, int], session: Any = None, unchanged_since: Any = None) -> None:
        """Replace every counter with `values` (used by `counters rebuild`; a transactional store: in `session`).

        With a mark from `wait_until_quiet`, a store outside the ledger's transaction raises CountersBusy
        instead of writing over a counter that changed since the mark.
        """
        ...
