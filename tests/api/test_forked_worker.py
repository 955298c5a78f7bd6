"""A worker forked after the app was built (`gunicorn --preload`) starts the app's own threads at its first request."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from pos_engine.api import create_app
from pos_engine.config import Settings
from pos_engine.service.context import EngineContext
from tests.api.conftest import CARD
from tests.helpers import SignedClient, in_a_forked_child

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(context: EngineContext, tmp_path: Path) -> Iterator[Flask]:
    """The app of tests/api/conftest.py, watching a rules directory of its own."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    app = create_app(Settings(rules_dir=str(rules)), context, watch_rules=True)
    app.testing = True
    yield app
    app.extensions["pos_engine_rules_watcher"].stop()


@pytest.mark.parametrize("first_request", ["healthz", "swipe"])
def test_a_worker_forked_after_the_app_was_built_starts_its_rulebook_watcher_at_its_first_request(
    app: Flask, terminal: SignedClient, first_request: str
) -> None:
    watcher = app.extensions["pos_engine_rules_watcher"]
    assert watcher.thread.started_in_this_process()

    def in_the_worker() -> Any:
        before = watcher.thread.started_in_this_process()  # the master's thread does not exist here
        if first_request == "healthz":
            status = app.test_client().get("/healthz").status_code
        else:
            status = terminal.authorise(CARD, 1000, "forked-1").status_code
        return before, status, watcher.thread.started_in_this_process()

    assert in_a_forked_child(in_the_worker) == repr((False, 200, True))


def test_an_app_built_without_start_starts_no_thread_and_a_forked_worker_starts_them_at_its_first_request(
    context: EngineContext, tmp_path: Path
) -> None:
    """`gunicorn --preload`: the master builds the app (pos_engine.wsgi) and never serves; its workers do."""
    cached = dataclasses.replace(context, lookup_cache_ttl_s=5.0)  # with a card directory and a registry snapshot
    assert cached.cards is not None
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    app = create_app(Settings(rules_dir=str(rules)), cached, watch_rules=True, start=False)
    threads = (app.extensions["pos_engine_rules_watcher"].thread, cached.cards.worker)
    assert [thread.started_in_this_process() for thread in threads] == [False, False]

    def in_the_worker() -> Any:
        health = app.test_client().get("/healthz")
        return health.status_code, [thread.started_in_this_process() for thread in threads]

    assert in_a_forked_child(in_the_worker) == repr((200, [True, True]))
    assert [thread.started_in_this_process() for thread in threads] == [False, False]
