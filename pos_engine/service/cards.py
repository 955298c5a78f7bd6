"""Every card holder in memory: the swipe path's card lookup without a database round trip.

A city has about a million union cards, each swiped now and then, so a cache
of recent lookups misses on almost every swipe; and on this kind of machine a
database round trip costs more than the rest of the swipe together (see
docs/performance.md). So each worker holds every card holder, compactly:

- the keys: the cards' keyed hashes as 32-byte digests, sorted, in one bytes
  object, found by binary search within the run of keys that share the
  digest's first two bytes (an array of 65,537 starts: keyed hashes are
  uniform, so a run of a million cards holds ~15 keys, four steps instead of
  twenty);
- the records: each holder's fields joined by a unit separator, in a second
  bytes object, with their offsets in an array.

About 100 bytes a card: some 100 MB a worker for a million cards. It is loaded
in a background thread when the worker starts (swipes ask the database until
it is ready), and then kept current from `card_changes`, which database
triggers write whenever a card or a member's groups, service, review year or
district change, whoever changes them. A card reported lost is declined by
every worker within about `poll_s`.
"""

from __future__ import annotations

import gc
import logging
import time
from array import array
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Protocol, TypeAlias

from pos_engine.domain.registry import CardHolder, split_groups
from pos_engine.limits import CARD_CHANGES_KEEP_S, CARD_CHANGES_POLL_S, CARD_CHANGES_RELOAD_MIN, CARD_OVERLAY_MAX
from pos_engine.service.background import ProcessThread, RepeatedFailure

log = logging.getLogger(__name__)

DIGEST_BYTES = 32
BUCKETS = 1 << 16  # runs of keys by their first two bytes
SEPARATOR = "\x1f"  # ASCII unit separator: never in an id, a status, a group list or a district
PRUNE_EVERY_S = 3600.0


class CardSource(Protocol):
    """What the directory reads: the card part of the registry port (pos_engine.service.ports.Registry)."""

    def card_holder(self, card_hash: str) -> CardHolder | None: ...

    def card_holders(self, card_hashes: list[str]) -> dict[str, CardHolder]: ...

    def all_card_rows(self) -> Iterator[CardRowTuple]:
        """Every card holder as a tuple (CARD_ROW_COLUMNS), in byte order of the card hash."""
        ...

    def card_changes_cursor(self) -> CardChangesCursor: ...

    def card_changes(self, cursor: CardChangesCursor, limit: int) -> tuple[list[tuple[int, str]], CardChangesCursor]:
        """Changed cards (seq, card hash) after `cursor`, at most `limit`, and the next cursor."""
        ...

    def prune_card_changes(self, older_than_s: int) -> None: ...


# A card holder as the store hands it over, in this order:
CARD_ROW_COLUMNS = ("card_hash", "card_id", "last4", "status", "member_id", "groups", "in_service", "annual_review_year", "district")
CardRowTuple: TypeAlias = tuple[str, str, str, str, str, str, bool, int | None, str]
# Where a reader of the change feed stands: the newest seq read, and the writing transactions
# still running when it was read (PostgreSQL; empty on SQLite). See SqlRegistry.card_changes.
CardChangesCursor: TypeAlias = tuple[int, tuple[int, ...]]


def holder_from_row(row: CardRowTuple) -> CardHolder:
    _card_hash, card_id, last4, status, member_id, groups, in_service, year, district = row
    return CardHolder(
        card_id=card_id,
        card_last4=last4,
        card_status=status,
        member_id=member_id,
        member_groups=split_groups(groups),
        in_service=bool(in_service),
        annual_review_year=year,
        district=district,
    )


def _pack(row: CardRowTuple) -> str | None:
    _card_hash, card_id, last4, status, member_id, groups, in_service, year, district = row
    flag, year_text = "1" if in_service else "0", "" if year is None else str(year)
    packed = SEPARATOR.join((card_id, last4, status, member_id, groups, flag, year_text, district))
    return None if packed.count(SEPARATOR) != 7 else packed


class CardTable:
    """An immutable, compact map from card hash (64 hex digits) to card holder."""

    def __init__(self, rows: Iterable[CardRowTuple]) -> None:
        keys = bytearray()
        records = bytearray()
        offsets = array("Q", [0])
        bucket_sizes = [0] * BUCKETS
        odd: dict[str, CardHolder] = {}  # holders that do not pack (a separator in a field): kept as objects
        previous = b""
        unsorted = False
        for row in rows:
            card_hash = row[0]
            try:
                digest = bytes.fromhex(card_hash)
            except ValueError:
                digest = b""
            packed = _pack(row)
            if len(digest) != DIGEST_BYTES or digest.hex() != card_hash or packed is None:
                odd[card_hash] = holder_from_row(row)  # a hash the engine never computes, or an awkward field
                continue
            unsorted = unsorted or digest <= previous
            previous = digest
            keys += digest
            records += packed.encode("utf-8")
            offsets.append(len(records))
            bucket_sizes[digest[0] << 8 | digest[1]] += 1
        if unsorted:
            raise ValueError("card holders must come sorted by card hash, each once")
        # Keys of bucket b are keys[starts[b]:starts[b + 1]] (in digests).
        self._starts = array("Q", [0, *accumulate(bucket_sizes)])
        self._keys = bytes(keys)
        self._records = bytes(records)
        self._offsets = offsets
        self._odd = odd
        self._groups: dict[str, frozenset[str]] = {}
        self.size = len(offsets) - 1 + len(odd)

    def __len__(self) -> int:
        return self.size

    @property
    def bytes_used(self) -> int:
        arrays = self._offsets.itemsize * len(self._offsets) + self._starts.itemsize * len(self._starts)
        return len(self._keys) + len(self._records) + arrays

    def get(self, card_hash: str) -> CardHolder | None:
        odd = self._odd.get(card_hash)
        if odd is not None:
            return odd
        try:
            digest = bytes.fromhex(card_hash)
        except ValueError:
            return None
        if len(digest) != DIGEST_BYTES:
            return None
        keys = self._keys
        bucket = digest[0] << 8 | digest[1]
        low, high = self._starts[bucket], self._starts[bucket + 1]
        while low < high:
            middle = (low + high) // 2
            if keys[middle * DIGEST_BYTES : (middle + 1) * DIGEST_BYTES] < digest:
                low = middle + 1
            else:
                high = middle
        if keys[low * DIGEST_BYTES : (low + 1) * DIGEST_BYTES] != digest:  # past the run: another bucket's key, or none
            return None
        fields = self._records[self._offsets[low] : self._offsets[low + 1]].decode("utf-8").split(SEPARATOR)
        card_id, last4, status, member_id, groups_text, in_service, year, district = fields
        groups = self._groups.get(groups_text)
        if groups is None:
            groups = self._groups.setdefault(groups_text, split_groups(groups_text))
        return CardHolder(
            card_id=card_id,
            card_last4=last4,
            card_status=status,
            member_id=member_id,
            member_groups=groups,
            in_service=in_service == "1",
            annual_review_year=int(year) if year else None,
            district=district,
        )


_ASK_SOURCE = object()  # overlay mark: changed, not fetched yet; ask the database


class CardDirectory:
    """Every card holder of the registry, in memory, kept current from the change feed.

    `get` never blocks on the load: until the table is ready, and for a card
    whose change has been seen but not fetched, it asks the source directly.
    """

    def __init__(
        self,
        source: CardSource,
        *,
        poll_s: float = CARD_CHANGES_POLL_S,
        reload_min: int = CARD_CHANGES_RELOAD_MIN,
        overlay_max: int = CARD_OVERLAY_MAX,
    ) -> None:
        self.source = source
        self.poll_s = poll_s
        self.reload_min = reload_min
        self.overlay_max = overlay_max
        # The table and the cards changed since it was built (card hash -> CardHolder, None when
        # gone, or _ASK_SOURCE), swapped together so that a reader never pairs one with the other's.
        self._state: tuple[CardTable, dict[str, object]] | None = None
        self._cursor: CardChangesCursor = (0, ())
        self.worker = ProcessThread("card-directory", self._run, before_start=self._forget)
        self._pruned_at = 0.0
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self._state is not None

    def start(self) -> None:
        """Start loading in this process (a gunicorn worker, after the fork); idempotent."""
        self.worker.ensure_started()

    def _forget(self) -> None:
        self._state = None  # a table inherited across a fork is not kept current in this process

    def get(self, card_hash: str) -> CardHolder | None:
        self.start()
        state = self._state
        if state is None:
            return self.source.card_holder(card_hash)
        table, overlay = state
        changed = overlay.get(card_hash, table)
        if changed is table:
            return table.get(card_hash)
        if changed is _ASK_SOURCE:
            return self.source.card_holder(card_hash)
        assert changed is None or isinstance(changed, CardHolder)
        return changed

    def load(self) -> None:
        """(Re)build the table from the source; changes from the cursor taken first are applied after."""
        started = time.monotonic()
        cursor = self.source.card_changes_cursor()
        table = CardTable(self.source.all_card_rows())
        self._cursor = cursor
        self._state = (table, {})
        log.info("card directory: %d cards, %.0f MB, loaded in %.1f s", len(table), table.bytes_used / 1e6, time.monotonic() - started)

    def poll(self) -> int:
        """Apply the changes since the last poll; return how many cards changed."""
        assert self._state is not None, "load first"
        overlay = self._state[1]
        changes, cursor = self.source.card_changes(self._cursor, self.reload_min + 1)
        if len(changes) > self.reload_min or len(overlay) > self.overlay_max:
            # A bulk change (an import), or many over time: mark what we know of, then rebuild.
            for _seq, card_hash in changes:
                overlay[card_hash] = _ASK_SOURCE
            self.load()
            return len({card_hash for _seq, card_hash in changes})
        hashes = sorted({card_hash for _seq, card_hash in changes})
        if hashes:
            for card_hash in hashes:
                overlay[card_hash] = _ASK_SOURCE  # until fetched, swipes ask the database
            holders = self.source.card_holders(hashes)
            for card_hash in hashes:
                overlay[card_hash] = holders.get(card_hash)
        self._cursor = cursor
        return len(hashes)

    def _run(self) -> None:
        loading = RepeatedFailure(log, "card directory load", "swipes ask the database meanwhile")
        while self._state is None:
            try:
                self.load()
                self.last_error = None
                loading.succeeded()
            except Exception as error:
                self.last_error = f"card directory load failed: {error}"
                loading.failed(error)
                time.sleep(max(self.poll_s, 5.0))
        # What the worker holds now (its modules, app, registry and this table) lives as long as
        # the worker: moved out of the cyclic collector's reach, the first full collection after
        # the load no longer stops every swipe for ~140 ms (docs/performance.md).
        gc.freeze()
        polling = RepeatedFailure(log, "card directory poll", "retrying")
        while True:
            time.sleep(self.poll_s)
            try:
                self.poll()
                if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                    self._pruned_at = time.monotonic()
                    self.source.prune_card_changes(CARD_CHANGES_KEEP_S)
                self.last_error = None
                polling.succeeded()
            except Exception as error:
                self.last_error = f"card directory poll failed: {error}"
                polling.failed(error)
