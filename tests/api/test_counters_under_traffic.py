"""`counters rebuild` and `reconcile` while terminals keep swiping (the SQL counter store: both in the ledger's database)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pos_engine.service.context import EngineContext
from pos_engine.service.counters import rebuild_counters, reconcile_counters
from pos_engine.store.repository import Repository
from tests.api.conftest import CARD
from tests.conftest import Backend
from tests.helpers import SignedClient


def _swipe_after_the_ledger_read(
    monkeypatch: pytest.MonkeyPatch, terminal: SignedClient, wait_s: float
) -> tuple[list[Any], list[threading.Thread]]:
    """Once the ledger has been read, a terminal swipes from another thread; wait up to `wait_s` for its answer."""
    answers: list[Any] = []
    threads: list[threading.Thread] = []
    read = Repository.all_counter_deltas

    def read_then_swipe(self: Repository, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield from read(self, *args, **kwargs)
        thread = threading.Thread(target=lambda: answers.append(terminal.authorise(CARD, 10_000, "req-during")))
        threads.append(thread)
        thread.start()
        thread.join(wait_s)

    monkeypatch.setattr(Repository, "all_counter_deltas", read_then_swipe)
    return answers, threads


@pytest.mark.parametrize("backend", ["sqlite", "pg_sql"], indirect=True)
def test_a_rebuild_under_traffic_keeps_every_swipe_s_counters(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swipe that comes while the rebuild has read the ledger waits for it, then counts on the rebuilt counters."""
    terminal.authorise(CARD, 10_000, "req-before")
    answers, threads = _swipe_after_the_ledger_read(monkeypatch, terminal, wait_s=0.3)
    rebuild_counters(context)
    monkeypatch.undo()
    threads[0].join(10)
    assert answers[0].status_code == 200 and answers[0].get_json()["status"] == "approved"
    assert reconcile_counters(context) == []  # not one use or fen of the swipe in between lost


@pytest.mark.parametrize("backend", ["sqlite", "pg_sql"], indirect=True)
def test_reconcile_under_traffic_reads_the_ledger_and_the_counters_at_one_moment_and_holds_up_no_swipe(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal.authorise(CARD, 10_000, "req-before")
    answers, threads = _swipe_after_the_ledger_read(monkeypatch, terminal, wait_s=5)
    differences = reconcile_counters(context)
    monkeypatch.undo()
    assert not threads[0].is_alive(), "the swipe waited for reconcile"
    assert answers[0].get_json()["status"] == "approved"
    assert differences == []  # the swipe between its two reads is in neither
    assert reconcile_counters(context) == []
