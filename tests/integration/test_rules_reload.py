"""A changed rulebook is picked up by a running engine; a broken one is refused and the old one kept."""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pos_engine.domain.rulebook import Rulebook
from pos_engine.rules_loader import load_rulebook
from pos_engine.rules_watch import RulebookWatcher, reload_turn_path
from pos_engine.service.background import YIELDING_SWITCH_INTERVAL_S

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A copy of the shipped rulebook to edit."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    return tmp_path / "rules"


def touch_later(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_valid_change_is_installed_and_a_broken_one_refused(rules: Path) -> None:
    installed: list[Rulebook] = [load_rulebook(rules)]
    loads: list[Path] = []

    def load(directory: Path) -> Rulebook:
        loads.append(directory)
        return load_rulebook(directory)

    watcher = RulebookWatcher(rules, load, installed.append)
    assert watcher.check_now() is False  # nothing changed

    city = rules / "campaigns" / "city-dining.yaml"
    touch_later(city, city.read_text().replace("name:", "name: Renamed", 1))
    assert watcher.check_now() is True
    assert installed[-1].version != installed[0].version
    assert watcher.last_error is None

    touch_later(city, city.read_text() + "\n  surprise: field\n")
    assert watcher.check_now() is False
    assert len(installed) == 2  # the running rulebook stays
    assert watcher.last_error is not None
    assert "city-dining.yaml" in watcher.last_error
    assert watcher.check_now() is False
    assert len(loads) == 2, "a refused rulebook is read again at every poll, though its files did not change"


def test_a_directory_that_could_not_be_read_for_a_moment_clears_its_error_once_readable(monkeypatch: Any, rules: Path) -> None:
    """The files did not change; reading them failed once (a mount blinked). /healthz must not show that error for ever."""
    from pos_engine import rules_watch

    installed: list[Rulebook] = []
    watcher = RulebookWatcher(rules, load_rulebook, installed.append)
    fingerprint = rules_watch.fingerprint

    def blink(directory: Path) -> Any:
        raise OSError("Stale file handle")

    monkeypatch.setattr(rules_watch, "fingerprint", blink)
    assert watcher.check_now() is False
    assert watcher.last_error is not None
    monkeypatch.setattr(rules_watch, "fingerprint", fingerprint)
    watcher.check_now()
    assert watcher.last_error is None


def test_a_reload_lets_request_threads_take_the_gil_sooner_and_then_puts_the_interval_back(rules: Path) -> None:
    """The rulebook is built with the short switch interval (a swipe waits 0.2 ms for the GIL, not 5), refused or not."""
    before = sys.getswitchinterval()
    intervals: list[float] = []

    def load(directory: Path) -> Rulebook:
        intervals.append(sys.getswitchinterval())
        return load_rulebook(directory)

    watcher = RulebookWatcher(rules, load, lambda rulebook: None)
    city = rules / "campaigns" / "city-dining.yaml"
    touch_later(city, city.read_text().replace("name:", "name: Renamed", 1))
    assert watcher.check_now() is True
    assert sys.getswitchinterval() == before
    touch_later(city, city.read_text() + "\n  surprise: field\n")
    assert watcher.check_now() is False
    assert sys.getswitchinterval() == before
    assert intervals == pytest.approx([YIELDING_SWITCH_INTERVAL_S, YIELDING_SWITCH_INTERVAL_S])


def slow_load(spans: list[tuple[str, float, float]], label: str) -> Callable[[Path], Rulebook]:
    def load(directory: Path) -> Rulebook:
        started = time.monotonic()
        rulebook = load_rulebook(directory)
        time.sleep(0.3)  # a big rulebook's load, long enough for the others to come while it runs
        spans.append((label, started, time.monotonic()))
        return rulebook

    return load


def reload_at_once(watchers: list[RulebookWatcher]) -> list[bool]:
    """Every watcher's check at the same moment, each in a thread of its own, as gunicorn's workers each poll."""
    start = threading.Barrier(len(watchers))
    results: list[bool] = [False] * len(watchers)

    def check(index: int) -> None:
        start.wait(5)
        results[index] = watchers[index].check_now()

    threads = [threading.Thread(target=check, args=(index,)) for index in range(len(watchers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_the_workers_of_a_host_reload_one_at_a_time_and_other_rulebooks_do_not_wait(tmp_path: Path) -> None:
    """Three watchers of one directory (three workers; an flock excludes separate opens in one process too) load in
    turn; a watcher of another directory loads meanwhile."""
    rules, other = tmp_path / "rules", tmp_path / "other"
    shutil.copytree(ROOT / "rules", rules)
    shutil.copytree(ROOT / "rules", other)
    spans: list[tuple[str, float, float]] = []
    watchers = [RulebookWatcher(rules, slow_load(spans, f"worker {n}"), lambda rulebook: None) for n in range(3)]
    watchers.append(RulebookWatcher(other, slow_load(spans, "other"), lambda rulebook: None))
    for directory in (rules, other):
        city = directory / "campaigns" / "city-dining.yaml"
        touch_later(city, city.read_text().replace("name:", "name: Renamed", 1))

    assert reload_at_once(watchers) == [True, True, True, True]

    turns = sorted((span for span in spans if span[0] != "other"), key=lambda span: span[1])
    assert len(turns) == 3
    for earlier, later in itertools.pairwise(turns):
        assert later[1] >= earlier[2], f"{later[0]} loaded while {earlier[0]} did"
    (other_span,) = [span for span in spans if span[0] == "other"]
    assert other_span[1] < turns[0][2], "the other directory's watcher waited for this one's turn"


def test_a_turn_not_given_in_time_or_a_turn_file_that_cannot_be_opened_still_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rules: Path
) -> None:
    from pos_engine import rules_watch

    installed: list[Rulebook] = []
    watcher = RulebookWatcher(rules, load_rulebook, installed.append)
    city = rules / "campaigns" / "city-dining.yaml"
    monkeypatch.setattr(rules_watch, "RELOAD_TURN_WAIT_S", 0.2)

    with reload_turn_path(rules).open("a") as held:  # a holder that never lets go (stopped, say)
        fcntl.flock(held, fcntl.LOCK_EX)
        touch_later(city, city.read_text().replace("name:", "name: Renamed", 1))
        assert watcher.check_now() is True
    assert "without its turn" in caplog.text

    monkeypatch.setattr(rules_watch.tempfile, "gettempdir", lambda: str(tmp_path / "no such directory"))
    touch_later(city, city.read_text().replace("name: Renamed", "name: Renamed again", 1))
    assert watcher.check_now() is True
    assert "without waiting for the other workers" in caplog.text
    assert len(installed) == 2


def test_a_process_forked_while_its_parent_loads_a_changed_rulebook_loads_it_itself(monkeypatch: pytest.MonkeyPatch, rules: Path) -> None:
    """gunicorn starts a worker again (killed, timed out, HUP) by forking its master, whatever the master is doing."""
    from pos_engine import rules_watch
    from tests.helpers import in_a_forked_child

    monkeypatch.setattr(rules_watch, "RELOAD_TURN_WAIT_S", 0.2)  # the parent's load holds the turn throughout
    parent = os.getpid()
    loading, finish = threading.Event(), threading.Event()

    def load(directory: Path) -> Rulebook:
        if os.getpid() == parent:
            loading.set()
            finish.wait(10)
        return load_rulebook(directory)

    installed: list[Rulebook] = []
    watcher = RulebookWatcher(rules, load, installed.append)
    city = rules / "campaigns" / "city-dining.yaml"
    touch_later(city, city.read_text().replace("name:", "name: Renamed", 1))
    parents_reload = threading.Thread(target=watcher.check_now)
    parents_reload.start()
    try:
        assert loading.wait(10)
        answer = in_a_forked_child(lambda: (watcher.check_now(), len(installed)))
    finally:
        finish.set()
        parents_reload.join()

    assert answer == repr((True, 1)), "the child took the files for loaded, and kept the rulebook it was forked with"
    assert len(installed) == 1
    assert watcher.check_now() is False  # the parent loaded them: nothing more to do


def test_a_process_forked_after_the_files_changed_loads_them_before_its_watcher_starts_or_says_they_are_broken(rules: Path) -> None:
    """`gunicorn --preload`: a worker forked from the master, which built the app days ago and never reloads."""
    from tests.helpers import in_a_forked_child

    installed: list[Rulebook] = []
    watcher = RulebookWatcher(rules, load_rulebook, installed.append)
    city = rules / "campaigns" / "city-dining.yaml"

    def start_in_the_child() -> tuple[int, bool]:
        watcher.catch_up()  # as post_worker_init does (pos_engine.serving), before the worker serves
        return len(installed), watcher.refused_at_start

    touch_later(city, city.read_text().replace("name:", "name: Renamed", 1))
    assert in_a_forked_child(start_in_the_child) == repr((1, False))
    touch_later(city, city.read_text() + "\n  surprise: field\n")
    assert in_a_forked_child(start_in_the_child) == repr((0, True))
    assert installed == []  # the parent loaded nothing
