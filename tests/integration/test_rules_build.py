"""A reload's rulebook is built in a child process at nice 19, and comes out the same as one built in the worker."""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pos_engine import rules_build
from pos_engine.domain.evaluation import Swipe, plan_swipe
from pos_engine.domain.rulebook import CATEGORIES, DISTRICTS, Rulebook
from pos_engine.limits import RULES_BUILD_TIMEOUT_S
from pos_engine.rules_build import CODE_VERSION as CODE
from pos_engine.rules_build import RulebookBuildFailed, RulebookBuildTimedOut, build_in_child, load_rulebook_quietly, write_answer
from pos_engine.rules_loader import RulebookError, load_rulebook
from pos_engine.rules_watch import RulebookWatcher

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = timezone(timedelta(hours=8))


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A copy of the shipped rulebook, with generated campaigns beside it."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    campaigns = tmp_path / "rules" / "campaigns"
    template = (campaigns / "city-dining.yaml").read_text()
    assert "  id: city-dining-2026\n" in template
    for number in range(30):
        (campaigns / f"gen-{number:03d}.yaml").write_text(template.replace("  id: city-dining-2026\n", f"  id: gen-{number:03d}\n"))
    return tmp_path / "rules"


def assert_same_rulebook(built: Rulebook, loaded: Rulebook) -> None:
    assert built.version == loaded.version
    assert list(built.campaigns) == list(loaded.campaigns)  # the same order
    assert built.campaigns == loaded.campaigns
    assert built.funders == loaded.funders
    assert built.examples == loaded.examples
    assert built.derived == {}  # worked out per rule in this process, by id: nothing may come from the child's
    merchants = sorted({m for c in loaded.campaigns.values() for r in c.rules for m in (r.conditions.merchant_ids or ())})
    for merchant_id in [*merchants, "m-none"]:
        for category in CATEGORIES:
            for district in DISTRICTS:
                assert built.candidates(merchant_id, category, district) == loaded.candidates(merchant_id, category, district)
                swipe = Swipe(8_800, datetime(2026, 12, 5, 12, 30, tzinfo=SHANGHAI), merchant_id, category, district, "card-1")
                assert plan_swipe(built, swipe) == plan_swipe(loaded, swipe)


def test_a_rulebook_built_in_the_child_is_the_one_the_worker_would_build(rules: Path) -> None:
    loaded = load_rulebook(rules)
    assert len(loaded.campaigns) > 30
    assert_same_rulebook(build_in_child(rules), loaded)


def test_the_child_imports_the_workers_own_pos_engine_whatever_its_directory_or_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rules: Path
) -> None:
    """Another pos_engine in the working directory, on PYTHONPATH or first on the worker's path is not the one run."""
    other = tmp_path / "other"
    (other / "pos_engine").mkdir(parents=True)
    (other / "pos_engine" / "__init__.py").write_text("raise ImportError('the child imported another pos_engine')\n")
    monkeypatch.setenv("PYTHONPATH", str(other))
    monkeypatch.chdir(other)
    monkeypatch.syspath_prepend(str(other))  # as gunicorn --pythonpath would, after this pos_engine was imported
    assert_same_rulebook(build_in_child(rules), load_rulebook(rules))


def test_a_refused_rulebook_is_refused_with_the_same_problems(rules: Path) -> None:
    city = rules / "campaigns" / "city-dining.yaml"
    city.write_text(city.read_text() + "\n  surprise: field\n")
    (rules / "campaigns" / "gen-000.yaml").write_text("campaign_id: [not, closed\n")
    with pytest.raises(RulebookError) as in_worker:
        load_rulebook(rules)
    with pytest.raises(RulebookError) as in_child:
        build_in_child(rules)
    assert in_child.value.details == in_worker.value.details
    assert str(in_child.value) == str(in_worker.value)
    assert len(in_child.value.details) >= 2


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PermissionError(13, "Permission denied", "/rules/campaigns"), "[Errno 13] Permission denied: '/rules/campaigns'"),
        (OSError("Stale file handle"), "Stale file handle"),
    ],
    ids=["with errno", "without"],
)
def test_files_that_cannot_be_read_are_the_same_os_error_as_in_the_worker(
    monkeypatch: pytest.MonkeyPatch, rules: Path, error: OSError, message: str
) -> None:
    def unreadable(directory: Path) -> Rulebook:
        raise error

    monkeypatch.setattr(rules_build, "load_rulebook", unreadable)
    answer = io.BytesIO()
    write_answer(rules, answer)
    with pytest.raises(OSError) as raised:
        rules_build._read_answer(answer.getvalue(), rules)
    assert type(raised.value) is type(error)
    assert str(raised.value) == message
    assert (raised.value.errno, raised.value.filename) == (error.errno, error.filename)


def _child_reading(path: Path) -> int | None:
    """The niceness of this process's child that has `path` open, if there is one yet (from /proc)."""
    for children in Path("/proc/self/task").glob("*/children"):  # each thread's children (one started the child)
        for pid in children.read_text().split():
            try:
                if any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    return os.getpriority(os.PRIO_PROCESS, int(pid))
            except OSError:
                continue  # gone meanwhile
    return None


def test_the_child_reads_the_files_at_the_lowest_priority(monkeypatch: pytest.MonkeyPatch, rules: Path) -> None:
    """Its CPU is what the swipes leave idle; the worker's own priority stays as it was.

    One rule file is a FIFO, so the child waits in its read until the test has looked at it.
    """
    monkeypatch.setattr(rules_build, "RULES_BUILD_TIMEOUT_S", 30.0)  # a child never seen is killed soon
    before = os.nice(0)
    expected = load_rulebook(rules)
    fifo = rules / "campaigns" / "city-dining.yaml"
    content = fifo.read_bytes()
    fifo.unlink()
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer from the start: the child's open returns, and its read waits
    built: list[Rulebook] = []
    thread = threading.Thread(target=lambda: built.append(build_in_child(rules)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while (niceness := _child_reading(fifo)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.write(writer, content)  # the child reads on, and answers
        os.close(writer)
        thread.join(60)
    assert niceness is not None, "no child of this process had the FIFO open within 30 s"
    assert niceness == min(before + rules_build.CHILD_NICENESS, 19)
    assert os.nice(0) == before
    assert_same_rulebook(built[0], expected)


def in_the_worker_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process may not load a rulebook itself: what it installs, a child built (a child never sees the patch)."""

    def refused(directory: Path) -> Rulebook:
        raise AssertionError(f"the rulebook in {directory} was loaded in the worker")

    monkeypatch.setattr(rules_build, "load_rulebook", refused)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (None, "could not start"),
        (["-c", "import sys; sys.exit('the child broke')"], r"failed \(exit status 1\): the child broke"),
        (["-c", "import sys; sys.stdout.buffer.write(b'not a pickle')"], "could not be read"),
        (
            ["-c", "import pickle, sys; sys.stdout.buffer.write(pickle.dumps((None, 'rulebook', ('v', [], [], [])))[:-3])"],
            "could not be read",
        ),
        (["-c", f"import pickle, sys; pickle.dump(({CODE!r}, 'rulebook', ('v', [], [], 2)), sys.stdout.buffer)"], "could not be read"),
        (["-c", f"import pickle, sys; pickle.dump(({CODE!r}, 'rulebok', ('v', [], [], [])), sys.stdout.buffer)"], "unknown kind 'rulebok'"),
        (["-c", "import pickle, sys; pickle.dump(('other code', 'rulebook', ('v', [], [], [])), sys.stdout.buffer)"], "ran other code"),
        (["-c", "import pickle, sys; pickle.dump(({'a': 'dict'}, 'rulebook'), sys.stdout.buffer)"], "could not be read"),
    ],
    ids=["no interpreter", "crashed", "garbage", "cut short", "malformed", "unknown kind", "other code", "a dict"],
)
def test_a_child_that_gives_no_verdict_leaves_the_worker_to_load_the_rulebook_itself(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rules: Path, command: list[str] | None, expected: str
) -> None:
    child = [str(rules / "no-such-python")] if command is None else [sys.executable, *command]
    monkeypatch.setattr(rules_build, "_child_command", lambda directory: child)
    with pytest.raises(RulebookBuildFailed, match=expected) as raised:
        build_in_child(rules)
    assert not isinstance(raised.value, RulebookBuildTimedOut)
    with caplog.at_level(logging.WARNING, logger="pos_engine.rules_build"):
        assert_same_rulebook(load_rulebook_quietly(rules), load_rulebook(rules))
    assert any("loading the rulebook in this process instead" in record.getMessage() for record in caplog.records)


def test_a_child_whose_code_changed_on_disk_since_the_worker_started_gives_no_verdict(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rules: Path
) -> None:
    """An upgrade in place: the child reads the new files, the worker runs the old classes; it loads them itself."""
    monkeypatch.setattr(rules_build, "CODE_VERSION", "the code this worker started with")
    with pytest.raises(RulebookBuildFailed, match="ran other code"):
        build_in_child(rules)
    with caplog.at_level(logging.WARNING, logger="pos_engine.rules_build"):
        assert_same_rulebook(load_rulebook_quietly(rules), load_rulebook(rules))
    assert any("ran other code" in record.getMessage() for record in caplog.records)


def test_a_child_that_hangs_is_killed_and_the_watcher_tries_again_at_its_next_poll(monkeypatch: pytest.MonkeyPatch, rules: Path) -> None:
    """No load in the worker (it would hang on the same file, or starve a saturated host's swipes); no verdict kept."""
    command = rules_build._child_command
    hangs = [True]
    monkeypatch.setattr(
        rules_build,
        "_child_command",
        lambda directory: [sys.executable, "-c", "import time; time.sleep(60)"] if hangs[0] else command(directory),
    )
    monkeypatch.setattr(rules_build, "RULES_BUILD_TIMEOUT_S", 1.0)
    installed: list[Rulebook] = []
    watcher = RulebookWatcher(rules, load_rulebook_quietly, installed.append)
    city = rules / "campaigns" / "city-dining.yaml"
    city.write_text(city.read_text().replace("name:", "name: Renamed", 1))
    os.utime(city, ns=(city.stat().st_atime_ns, city.stat().st_mtime_ns + 1_000_000_000))
    in_the_worker_refused(monkeypatch)
    with pytest.raises(RulebookBuildTimedOut, match="took longer than 1 s"):
        load_rulebook_quietly(rules)
    assert watcher.check_now() is False
    assert watcher.last_error is not None and "took longer than 1 s" in watcher.last_error
    assert watcher.last_error_unreadable is False
    assert installed == []
    hangs[0] = False  # the files did not change since: the next poll loads them all the same
    monkeypatch.setattr(rules_build, "RULES_BUILD_TIMEOUT_S", RULES_BUILD_TIMEOUT_S)  # a real build, on a busy machine
    assert watcher.check_now() is True
    assert watcher.last_error is None
    assert_same_rulebook(installed[0], load_rulebook(rules))


def test_the_watcher_reloads_through_the_child_and_catches_up_at_start_in_the_worker(monkeypatch: pytest.MonkeyPatch, rules: Path) -> None:
    """The app's watcher: a change arrives built by a child, a broken one is refused; a worker not yet serving loads itself."""
    children: list[list[str]] = []
    command = rules_build._child_command

    def counted(directory: Path) -> list[str]:
        children.append(command(directory))
        return children[-1]

    monkeypatch.setattr(rules_build, "_child_command", counted)
    in_the_worker_refused(monkeypatch)
    installed: list[Rulebook] = []
    watcher = RulebookWatcher(rules, load_rulebook_quietly, installed.append, load_at_start=load_rulebook)
    city = rules / "campaigns" / "city-dining.yaml"
    city.write_text(city.read_text().replace("name:", "name: Renamed", 1))
    os.utime(city, ns=(city.stat().st_atime_ns, city.stat().st_mtime_ns + 1_000_000_000))
    assert watcher.check_now() is True
    assert_same_rulebook(installed[-1], load_rulebook(rules))
    city.write_text(city.read_text() + "\n  surprise: field\n")
    os.utime(city, ns=(city.stat().st_atime_ns, city.stat().st_mtime_ns + 2_000_000_000))
    assert watcher.check_now() is False
    assert watcher.last_error is not None and "city-dining.yaml" in watcher.last_error
    assert watcher.last_error_unreadable is False
    assert len(installed) == 1
    assert len(children) == 2
    city.write_text(city.read_text().replace("\n  surprise: field\n", ""))
    os.utime(city, ns=(city.stat().st_atime_ns, city.stat().st_mtime_ns + 3_000_000_000))
    watcher.catch_up()
    assert watcher.refused_at_start is False
    assert len(installed) == 2
    assert len(children) == 2, "a worker catching up before it serves started a child at nice 19, under gunicorn's timeout"
