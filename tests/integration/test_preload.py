"""`gunicorn --preload`: the app is built in the master, and the workers are forked from it after."""

from __future__ import annotations

import ast
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from pos_engine.store.db import Database
from tests.helpers import in_a_forked_child
from tests.integration.test_multiprocess import fifty_swipes_on_one_card, write_rulebook
from tests.live import LiveEngine, live_engine


def healthz(engine: LiveEngine) -> httpx.Response:
    """/healthz on a new connection each time, so that either worker may answer (the kernel picks)."""
    return httpx.get(engine.base_url + "/healthz", headers={"Connection": "close"}, timeout=10)


def workers(engine: LiveEngine) -> list[int]:
    """The pids of the gunicorn master's workers."""
    return [int(pid) for pid in Path(f"/proc/{engine.server_pid}/task/{engine.server_pid}/children").read_text().split()]


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_a_forked_child_opens_postgresql_connections_of_its_own_and_leaves_the_parents_working(pg_url: str) -> None:
    """A pooled connection inherited by two workers would carry both one's statements on one socket."""
    database = Database(pg_url, statement_timeout_ms=5_000)
    engines = {"engine": database.engine, "terminal_engine": database.terminal_engine}
    assert database.terminal_engine is not database.engine  # two pools, both looked at
    try:
        parents = {name: backend_pid(engine) for name, engine in engines.items()}  # each now pooled

        children = ast.literal_eval(in_a_forked_child(lambda: {name: backend_pid(engine) for name, engine in engines.items()}))

        assert set(children) == set(parents)
        for name in parents:
            assert children[name] != parents[name], f"the child used its parent's pooled connection ({name})"
        # The child neither closed nor used them: the parent goes on with the same sessions.
        assert {name: backend_pid(engine) for name, engine in engines.items()} == parents
    finally:
        database.dispose()


def test_a_forked_child_does_not_take_its_parents_pooled_sqlite_connection(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/engine.sqlite3")
    try:
        with database.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        assert database.engine.pool.checkedin() == 1  # type: ignore[attr-defined]

        answer = in_a_forked_child(lambda: database.engine.pool.checkedin())  # type: ignore[attr-defined]

        assert answer == "0"
        assert database.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        database.dispose()


@pytest.mark.slow
def test_preloaded_workers_load_their_cards_share_the_caps_exactly_and_each_reload_a_changed_rulebook(
    tmp_path: Path, pg_url: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("redis_client")  # fails, not skips, if Redis is down
    rules_dir = write_rulebook(tmp_path / "rules")
    options: dict[str, Any] = {"database_url": pg_url, "redis_url": "redis://127.0.0.1:6379/0"}
    with live_engine(tmp_path, workers=2, rules_dir=rules_dir, preload=True, **options) as engine:

        def health() -> dict[str, Any]:
            answer = healthz(engine)
            assert answer.status_code == 200, answer.text
            return answer.json()  # type: ignore[no-any-return]

        def answers_in_a_row(check: Any, count: int = 20, within_s: float = 30) -> bool:
            in_a_row, deadline = 0, time.monotonic() + within_s
            while in_a_row < count and time.monotonic() < deadline:
                in_a_row = in_a_row + 1 if check(health()) else 0
                time.sleep(0.05)
            return in_a_row >= count

        # Each worker starts its card directory, registry snapshot and rulebook watcher as it boots (gunicorn.conf.py's
        # post_worker_init), requests or not: the start-up above asked one of them for /healthz.
        deadline = time.monotonic() + 10  # gunicorn forks the second worker after the first
        while not (len(workers(engine)) == 2 and min(threads(pid) for pid in workers(engine)) >= 4) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers(engine)) == 2
        assert {pid: threads(pid) >= 4 for pid in workers(engine)} == {pid: True for pid in workers(engine)}
        # The master built the app and started nothing: one thread, gunicorn's own.
        assert threads(engine.server_pid) == 1

        assert answers_in_a_row(lambda body: body.get("card_directory") == "ready"), "a worker never loaded its cards"

        answers = fifty_swipes_on_one_card(engine)
        assert sum(answer["status"] == "approved" for answer in answers) == 7

        before = health()["rules_version"]
        funders = rules_dir / "funders.yaml"
        funders.write_text(funders.read_text() + "# changed\n")
        # Every worker polls every 5 s, and they reload one at a time.
        assert answers_in_a_row(lambda body: body["rules_version"] != before), "a worker still serves the rulebook it was forked with"


@pytest.mark.slow
def test_a_preloaded_worker_started_again_serves_the_rulebook_on_disk_or_does_not_serve(tmp_path: Path, pg_url: str) -> None:
    """gunicorn forks a worker started again (killed, timed out) from the master, which holds the rulebook of its start."""
    rules_dir = write_rulebook(tmp_path / "rules")
    with live_engine(tmp_path, workers=2, rules_dir=rules_dir, database_url=pg_url, preload=True) as engine:

        def versions(count: int = 40) -> set[str]:
            """The rulebook versions of `count` answers on new connections (either worker may answer)."""
            seen = set()
            for _ in range(count):
                seen.add(healthz(engine).json()["rules_version"])
                time.sleep(0.05)
            return seen

        def start_a_worker_again() -> None:
            before = workers(engine)
            os.kill(before[0], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not (len(workers(engine)) == 2 and before[0] not in workers(engine)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(workers(engine)) == 2

        (boot,) = versions(4)
        funders = rules_dir / "funders.yaml"
        funders.write_text(funders.read_text() + "# changed\n")
        deadline = time.monotonic() + 30  # each worker polls every 5 s, and they reload one at a time
        while boot in versions(20) and time.monotonic() < deadline:
            pass
        (changed,) = versions()
        assert changed != boot

        start_a_worker_again()  # it serves the files' rulebook from its first answer, not the master's
        assert versions() == {changed}

        good = funders.read_text()
        funders.write_text("funders: [\n")  # broken: every worker keeps the rulebook it has
        time.sleep(6)  # a poll
        start_a_worker_again()  # it cannot load the files, and must not serve the master's rulebook instead
        assert versions(160) == {changed}  # 8 s and more: past the 5 s pause of the worker started again, and its next
        log = (tmp_path / "gunicorn.log").read_text()
        assert "the other workers keep the rulebook they had; this one is started again in 5 s" in log

        funders.write_text(good + "# mended\n")
        deadline = time.monotonic() + 30  # the next worker started again loads it, and the other at its poll
        while changed in versions(20) and time.monotonic() < deadline:
            pass
        (mended,) = versions()
        assert mended not in (boot, changed)
        assert len(workers(engine)) == 2
