"""The in-memory card directory: a compact table that answers exactly what the registry holds, kept current by polling."""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pos_engine.domain.registry import CardHolder
from pos_engine.service.cards import SEPARATOR, CardDirectory, CardRowTuple, CardTable, holder_from_row


def row(index: int, *, status: str = "active", groups: str = "", card_id: str | None = None) -> CardRowTuple:
    card_hash = hashlib.sha256(str(index).encode()).hexdigest()
    return (card_hash, card_id or f"card-{index}", f"{index % 10_000:04d}", status, f"mem-{index}", groups, index % 3 != 0,
            None if index % 5 == 0 else 2026, "wujin")  # fmt: skip


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
rows = st.lists(
    st.tuples(
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        text,
        text,
        st.sampled_from(["active", "lost", "frozen", "cancelled"]),
        text,
        st.lists(st.sampled_from(["model_worker", "hardship", "retired", " spaced "]), max_size=3).map(",".join),
        st.booleans(),
        st.none() | st.integers(1990, 2100),
        text,
    ),
    max_size=60,
    unique_by=lambda item: item[0],
)


@settings(max_examples=200)
@given(rows, st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=10))
def test_the_table_answers_what_the_rows_say_and_nothing_else(generated: list[CardRowTuple], others: list[str]) -> None:
    ordered = sorted(generated, key=lambda item: bytes.fromhex(item[0]))
    table = CardTable(ordered)
    assert len(table) == len(ordered)
    for item in ordered:
        assert table.get(item[0]) == holder_from_row(item)  # fields with the separator in them too
    known = {item[0] for item in ordered}
    for card_hash in others:
        if card_hash not in known:
            assert table.get(card_hash) is None
    for junk in ("", "zz", "0" * 63, "0" * 66, "G" * 64):
        assert table.get(junk) is None


# Hashes crowded into a few runs of the same first two bytes (the table's buckets), the first and last among them.
crowded_hashes = st.builds(
    lambda prefix, rest: (prefix + rest).hex(),
    st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x01\x00", b"\xff\xff"]),
    st.binary(min_size=30, max_size=30) | st.sampled_from([b"\x00" * 30, b"\xff" * 30]),
)


@settings(max_examples=200)
@given(st.lists(crowded_hashes, max_size=40, unique=True), st.lists(crowded_hashes, max_size=20))
def test_hashes_sharing_their_first_bytes_are_all_found_and_no_other(present: list[str], others: list[str]) -> None:
    ordered = sorted(present)
    table = CardTable([(card_hash, *row(index)[1:]) for index, card_hash in enumerate(ordered)])
    for index, card_hash in enumerate(ordered):
        holder = table.get(card_hash)
        assert holder is not None
        assert holder.card_id == f"card-{index}"
    for card_hash in set(others) - set(present):
        assert table.get(card_hash) is None


def test_a_field_holding_the_separator_and_a_hash_the_engine_never_makes_are_still_found() -> None:
    odd_field = row(1, card_id=f"card{SEPARATOR}1")
    upper = ("AB" * 32, *row(2)[1:])
    table = CardTable(sorted([odd_field, row(3), upper], key=lambda item: item[0].lower()))
    holder = table.get(odd_field[0])
    assert holder is not None
    assert holder.card_id == f"card{SEPARATOR}1"
    assert table.get("AB" * 32) == holder_from_row(upper)
    assert table.get("ab" * 32) is None  # a different hash: the engine computes lowercase


def test_rows_out_of_order_are_refused() -> None:
    ordered = sorted([row(index) for index in range(5)], key=lambda item: item[0])
    with pytest.raises(ValueError, match="sorted"):
        CardTable([ordered[1], ordered[0], *ordered[2:]])
    with pytest.raises(ValueError, match="sorted"):
        CardTable([ordered[0], ordered[0]])


class FakeSource:
    """A registry with a change feed."""

    def __init__(self, count: int) -> None:
        self.rows = {item[0]: item for item in (row(index) for index in range(count))}
        self.changes: list[tuple[int, str]] = []
        self.single_lookups = 0
        self.loads = 0

    def change(self, card_hash: str, new: CardRowTuple | None) -> None:
        if new is None:
            self.rows.pop(card_hash, None)
        else:
            self.rows[card_hash] = new
        self.changes.append((len(self.changes) + 1, card_hash))

    def card_holder(self, card_hash: str) -> CardHolder | None:
        self.single_lookups += 1
        found = self.rows.get(card_hash)
        return None if found is None else holder_from_row(found)

    def card_holders(self, card_hashes: list[str]) -> dict[str, CardHolder]:
        return {card_hash: holder_from_row(self.rows[card_hash]) for card_hash in card_hashes if card_hash in self.rows}

    def all_card_rows(self) -> Iterator[CardRowTuple]:
        self.loads += 1
        yield from sorted(self.rows.values(), key=lambda item: item[0])

    def card_changes_cursor(self) -> tuple[int, tuple[int, ...]]:
        return len(self.changes), ()

    def card_changes(self, cursor: tuple[int, tuple[int, ...]], limit: int) -> tuple[list[tuple[int, str]], tuple[int, tuple[int, ...]]]:
        found = self.changes[cursor[0] :][:limit]
        return found, ((found[-1][0] if found else cursor[0]), ())

    def prune_card_changes(self, older_than_s: int) -> None:
        pass


def loaded(source: FakeSource, reload_min: int = 100) -> CardDirectory:
    directory = CardDirectory(source, poll_s=3600, reload_min=reload_min)
    directory.load()
    directory.worker.driven_by_hand()  # no background thread
    return directory


def test_the_directory_asks_the_registry_until_it_is_loaded_and_then_never() -> None:
    source = FakeSource(50)
    directory = CardDirectory(source, poll_s=3600)
    directory.worker.driven_by_hand()
    card_hash = row(7)[0]
    assert directory.get(card_hash) == holder_from_row(row(7))
    assert source.single_lookups == 1
    directory.load()
    for index in range(50):
        assert directory.get(row(index)[0]) == holder_from_row(row(index))
    assert directory.get("0" * 64) is None
    assert source.single_lookups == 1


def test_a_poll_applies_a_lost_card_a_new_card_and_a_removed_card_once_each() -> None:
    source = FakeSource(20)
    directory = loaded(source)
    lost = row(3, status="lost")
    source.change(lost[0], lost)
    source.change(row(100)[0], row(100))
    source.change(row(4)[0], None)
    assert directory.poll() == 3
    assert directory.get(lost[0]) == holder_from_row(lost)
    assert directory.get(row(100)[0]) == holder_from_row(row(100))
    assert directory.get(row(4)[0]) is None
    assert directory.poll() == 0
    assert source.single_lookups == 0


def test_a_bulk_change_rebuilds_the_table() -> None:
    source = FakeSource(20)
    directory = loaded(source, reload_min=5)
    for index in range(20):
        changed = row(index, groups="hardship")
        source.change(changed[0], changed)
    directory.poll()
    assert source.loads == 2
    assert all(directory.get(row(index)[0]) == holder_from_row(row(index, groups="hardship")) for index in range(20))


def test_once_loaded_in_its_worker_the_table_is_out_of_the_cyclic_collectors_reach() -> None:
    gc.unfreeze()
    directory = CardDirectory(FakeSource(50), poll_s=3600)
    try:
        directory.start()  # the worker's background thread: load, then poll
        deadline = time.monotonic() + 10
        while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert directory._state is not None
        table = directory._state[0]
        assert gc.is_tracked(table)
        assert not any(tracked is table for tracked in gc.get_objects())  # frozen: no generation holds it
    finally:
        gc.unfreeze()
