"""A forked worker (`gunicorn --preload`) that cannot load the rulebook says why: files it cannot read, or a rulebook refused.

So does a running worker's watcher, in its log, when a reload fails either way.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pos_engine import rules_watch, serving
from pos_engine.rules_watch import RulebookWatcher


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        ("listing", "the rulebook cannot be read"),  # the directory's files cannot be listed (permissions, a lost mount)
        ("reading", "the rulebook cannot be read"),  # an OSError while loading (a file, the reload turn's lock)
        ("refused", "the rulebook is invalid"),  # the loader refused the rulebook
    ],
)
def test_a_forked_worker_that_cannot_load_the_rulebook_exits_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], failure: str, says: str
) -> None:
    (tmp_path / "rules.yaml").write_text("changed since the master read it\n")

    def load(directory: Path) -> Any:
        if failure == "reading":
            raise OSError(errno.ENOLCK, "No locks available")
        raise ValueError("rules.yaml, line 1: not a rulebook")

    def unlistable(directory: Path) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(directory))

    watcher = RulebookWatcher(tmp_path, load, lambda rulebook: None, 3600, seen=())  # "listing" fails before any load
    if failure == "listing":
        monkeypatch.setattr(rules_watch, "fingerprint", unlistable)
    monkeypatch.delenv("POS_ENGINE_SERVING_MARK", raising=False)  # not serving yet: gunicorn halts
    app = SimpleNamespace(extensions={"pos_engine_started": False, "pos_engine_rules_watcher": watcher, "pos_engine": None})
    try:
        with pytest.raises(SystemExit) as exited:
            serving.start_forked_worker(app)
    finally:
        watcher.stop()
    assert exited.value.code == serving.WORKER_BOOT_ERROR
    err = capsys.readouterr().err
    assert f"pos-engine cannot start: {says}:\n" in err
    expected = {"listing": "Permission denied", "reading": "No locks available", "refused": "rules.yaml, line 1: not a rulebook"}
    assert expected[failure] in err


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (OSError(errno.EIO, "Input/output error"), "rule files in {dir} could not be read; keeping the running rulebook: "),
        (ValueError("rules.yaml, line 1: not a rulebook"), "new rulebook in {dir} refused; keeping the running one:\n"),
    ],
)
def test_a_watcher_logs_whether_a_reload_could_not_read_the_files_or_refused_the_rulebook(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, logged: str
) -> None:
    (tmp_path / "rules.yaml").write_text("changed\n")

    def load(directory: Path) -> Any:
        raise error

    watcher = RulebookWatcher(tmp_path, load, lambda rulebook: None, 3600, seen=())
    watcher.thread.driven_by_hand()
    with caplog.at_level(logging.ERROR, logger=rules_watch.log.name):
        assert watcher.check_now() is False
    assert logged.format(dir=tmp_path) + str(error) in caplog.text
    assert watcher.last_error == str(error)
