"""A changed rulebook is picked up by a running engine; a broken one is refused and the old one kept."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from pos_engine.domain.rulebook import Rulebook
from pos_engine.rules_loader import load_rulebook
from pos_engine.rules_watch import RulebookWatcher
from pos_engine.service.background import YIELDING_SWITCH_INTERVAL_S

ROOT = Path(__file__).resolve().parents[2]


def touch_later(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_valid_change_is_installed_and_a_broken_one_refused(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    installed: list[Rulebook] = [load_rulebook(rules)]
    watcher = RulebookWatcher(rules, load_rulebook, installed.append)
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


def test_a_directory_that_could_not_be_read_for_a_moment_clears_its_error_once_readable(tmp_path: Path, monkeypatch: Any) -> None:
    """The files did not change; reading them failed once (a mount blinked). /healthz must not show that error for ever."""
    from pos_engine import rules_watch

    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
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


def test_a_reload_lets_request_threads_take_the_gil_sooner_and_then_puts_the_interval_back(tmp_path: Path) -> None:
    """The rulebook is built with the short switch interval (a swipe waits 0.2 ms for the GIL, not 5), refused or not."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
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
