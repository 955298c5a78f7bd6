"""Database triggers feed every change of a card holder to the card directory, whoever makes it."""

from __future__ import annotations

from sqlalchemy import text

from pos_engine.domain.registry import card_hash
from pos_engine.service.cards import CardDirectory
from pos_engine.store.db import SqlRegistry
from tests.conftest import Backend
from tests.helpers import CARD_KEY, World


def _directory(backend: Backend) -> CardDirectory:
    directory = CardDirectory(SqlRegistry(backend.database), poll_s=3600)
    directory.load()
    directory.worker.driven_by_hand()  # the test polls by hand
    return directory


def _sql(backend: Backend, statement: str, **params: object) -> None:
    with backend.database.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_changes_made_in_sql_reach_the_directory_at_the_next_poll(backend: Backend, world: World) -> None:
    first, second, third = "6217000000000001", "6217000000000002", "6217000000000003"
    world.add_card(first)
    world.add_card(second, groups="hardship")
    directory = _directory(backend)
    holder = directory.get(card_hash(CARD_KEY, first))
    assert holder is not None
    assert holder.card_status == "active"

    _sql(backend, "UPDATE cards SET status = 'lost' WHERE card_id = :card_id", card_id=world.cards[first])
    _sql(backend, "UPDATE members SET groups = 'model_worker', in_service = :no WHERE member_id = 'mem-2'", no=False)
    world.add_card(third)
    assert directory.get(card_hash(CARD_KEY, third)) is None  # not polled yet
    directory.poll()

    lost = directory.get(card_hash(CARD_KEY, first))
    assert lost is not None
    assert lost.card_status == "lost"
    member = directory.get(card_hash(CARD_KEY, second))
    assert member is not None
    assert member.member_groups == frozenset({"model_worker"})
    assert member.in_service is False
    assert directory.get(card_hash(CARD_KEY, third)) is not None

    _sql(backend, "DELETE FROM cards WHERE card_id = :card_id", card_id=world.cards[third])
    directory.poll()
    assert directory.get(card_hash(CARD_KEY, third)) is None


def test_a_member_change_that_does_not_touch_a_card_holder_writes_no_change(backend: Backend, world: World) -> None:
    world.add_card("6217000000000001")
    _sql(backend, "DELETE FROM card_changes")
    _sql(backend, "UPDATE members SET name = 'renamed' WHERE member_id = 'mem-1'")
    with backend.database.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM card_changes")).scalar_one() == 0


def test_a_change_committed_after_a_later_one_is_not_missed(pg_url: str, request: object, tmp_path: object) -> None:
    """PostgreSQL numbers rows before commit: a transaction that started first may commit last."""
    from tests.conftest import open_backend

    with open_backend("pg_sql", request, tmp_path) as backend:  # type: ignore[arg-type]
        world = World(backend.database)
        slow_card, quick_card = "6217000000000001", "6217000000000002"
        world.add_card(slow_card)
        world.add_card(quick_card)
        directory = _directory(backend)
        with backend.database.engine.connect() as slow:
            slow.execute(text("UPDATE cards SET status = 'frozen' WHERE card_id = :card_id"), {"card_id": world.cards[slow_card]})
            # The slow transaction holds the lower seq; a later one commits first and is polled.
            _sql(backend, "UPDATE cards SET status = 'lost' WHERE card_id = :card_id", card_id=world.cards[quick_card])
            directory.poll()
            quick = directory.get(card_hash(CARD_KEY, quick_card))
            assert quick is not None
            assert quick.card_status == "lost"
            slow.commit()
        directory.poll()
        frozen = directory.get(card_hash(CARD_KEY, slow_card))
        assert frozen is not None
        assert frozen.card_status == "frozen"


def test_a_long_transaction_does_not_make_the_directory_reread_or_reload(pg_url: str, request: object, tmp_path: object) -> None:
    """An open transaction (a long report, a stuck session) must not hold the feed back: each change is applied once."""
    from tests.conftest import open_backend

    with open_backend("pg_sql", request, tmp_path) as backend:  # type: ignore[arg-type]
        world = World(backend.database)
        numbers = [f"62170000000000{index:02d}" for index in range(12)]
        for number in numbers:
            world.add_card(number)
        directory = CardDirectory(SqlRegistry(backend.database), poll_s=3600, reload_min=5)
        directory.load()
        directory.worker.driven_by_hand()
        loads = []
        original_load = directory.load
        directory.load = lambda: (loads.append(1), original_load())[1]  # type: ignore[method-assign]
        with backend.database.engine.connect() as long_running:
            long_running.execute(text("UPDATE merchants SET name = name"))  # holds a transaction id, open throughout
            for round_ in range(4):  # 3 changes a poll, 12 in all: more than reload_min, but never at once
                for number in numbers[3 * round_ : 3 * round_ + 3]:
                    _sql(backend, "UPDATE cards SET status = 'frozen' WHERE card_id = :card_id", card_id=world.cards[number])
                assert directory.poll() == 3
            long_running.rollback()
        assert loads == []
        for number in numbers:
            holder = directory.get(card_hash(CARD_KEY, number))
            assert holder is not None
            assert holder.card_status == "frozen"
