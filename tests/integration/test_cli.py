"""The `pos-engine` command: clear messages and non-zero exits for bad input, nothing half-written."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from pos_engine.cli import main
from pos_engine.store.db import Database
from pos_engine.store.migrate import upgrade
from pos_engine.store.models import CardRow, MemberRow, MerchantRow, TerminalRow
from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "POS_ENGINE_DATABASE_URL": f"sqlite:///{tmp_path}/engine.sqlite3",
        "POS_ENGINE_RULES_DIR": str(ROOT / "rules"),
        "POS_ENGINE_REDIS_URL": "",
    }


@pytest.fixture
def rules(env: dict[str, str], tmp_path: Path) -> Path:
    """A copy of the shipped rulebook to edit, beside a database made ready."""
    import shutil

    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    assert run(env, "init-db").exit_code == 0
    return tmp_path / "rules"


def run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def count(env: dict[str, str], model: Any) -> int:
    database = Database(env["POS_ENGINE_DATABASE_URL"])
    with database.sessions() as session:
        value = session.execute(select(func.count()).select_from(model)).scalar_one()
    database.dispose()
    return int(value)


def test_demo_writes_credentials_in_the_documented_shape_and_is_repeatable(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, "demo", "--out", str(tmp_path / "demo.json"))
    assert result.exit_code == 0, result.output
    credentials = json.loads((tmp_path / "demo.json").read_text())
    assert set(credentials) == {"terminals", "cards"}
    assert set(credentials["cards"]) == {"usable", "lost", "review_due", "not_in_service"}
    assert all(credentials["cards"][kind] for kind in credentials["cards"])
    first = credentials["terminals"][0]
    assert set(first) == {"terminal_id", "secret", "merchant_id", "category", "district"}
    assert (first["merchant_id"], first["category"], first["district"]) == ("m-wujin-dining-001", "dining", "wujin")
    assert count(env, MerchantRow) >= 300
    assert count(env, MemberRow) >= 2000
    again = run(env, "demo", "--out", str(tmp_path / "again.json"))
    assert again.exit_code == 0
    assert json.loads((tmp_path / "again.json").read_text()) == credentials  # same world, same secrets


def test_demo_credentials_that_cannot_be_written_are_one_line_and_written_again_the_same(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--out", "/dev/full"], env=env)
    assert result.exit_code == 1, result.output
    assert "/dev/full: cannot write: No space left on device. The demo world is loaded" in result.output
    assert run(env, "demo", "--out", str(tmp_path / "demo.json")).exit_code == 0
    assert json.loads((tmp_path / "demo.json").read_text())["terminals"]


def test_demo_credentials_are_private_and_replaced_whole(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "creds" / "demo.json"
    assert run(env, "demo", "--out", str(out)).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o600  # terminal secrets: the owner's only
    written, first = out.read_text(), out.stat().st_ino
    link = tmp_path / "link.json"
    link.symlink_to(out)
    assert run(env, "demo", "--out", str(link)).exit_code == 0
    assert link.is_symlink() and out.read_text() == written  # the link kept, its target written again (same world, same text)
    assert out.stat().st_ino != first and out.stat().st_mode & 0o777 == 0o600  # a new file, renamed into place

    real_fsync = os.fsync

    def disk_full(descriptor: int) -> None:
        real_fsync(descriptor)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    result = CliRunner().invoke(main, ["demo", "--out", str(out)], env=env)
    assert result.exit_code == 1
    assert f"{out}: cannot write: No space left on device" in result.output
    assert out.read_text() == written  # the earlier file is whole
    assert sorted(path.name for path in out.parent.iterdir()) == ["demo.json"]  # and nothing was left beside it


def test_demo_credentials_in_a_directory_their_owner_may_not_write_are_rewritten_in_place(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "demo.json"
    out.write_text("an older file, made by an operator\n")
    out.chmod(0o644)

    def no_new_files(*_args: Any, **_kwargs: Any) -> Any:  # as for a user who may write the file, not its directory
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_new_files)
    real_chmod = os.chmod

    def not_the_owner(*_args: Any, **_kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", not_the_owner)  # a file it may write but not make owner-only: refused, untouched
    result = CliRunner().invoke(main, ["demo", "--out", str(out)], env=env)
    assert result.exit_code == 1 and "demo.json: cannot write: Operation not permitted" in result.output
    assert out.read_text() == "an older file, made by an operator\n"
    monkeypatch.setattr(os, "chmod", real_chmod)
    assert run(env, "demo", "--out", str(out)).exit_code == 0
    assert json.loads(out.read_text())["terminals"] and out.stat().st_mode & 0o777 == 0o600
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "new.json")], env=env)
    assert result.exit_code == 1
    assert "new.json: cannot write: Permission denied. The demo world is loaded" in result.output


def test_demo_writes_credentials_to_its_standard_output_a_pipe_or_a_file_it_appends_to(env: dict[str, str], tmp_path: Path) -> None:
    command = [str(Path(sys.executable).parent / "pos-engine"), "demo", "--out", "/dev/stdout"]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    credentials, _, summary = result.stdout.rpartition("\ndemo world ready: ")
    assert json.loads(credentials)["terminals"] and "credentials in /dev/stdout" in summary

    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    with log.open("a") as appended:  # `>> log.txt`
        result = subprocess.run(command, env={**os.environ, **env}, stdout=appended, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    earlier, _, rest = log.read_text().partition("\n")
    credentials, _, summary = rest.rpartition("\ndemo world ready: ")
    assert earlier == "an earlier line" and json.loads(credentials)["terminals"] and summary.endswith("credentials in /dev/stdout\n")


def test_init_db_creates_and_then_keeps_the_schema(env: dict[str, str]) -> None:
    assert run(env, "init-db").exit_code == 0
    assert run(env, "init-db").exit_code == 0
    assert count(env, MemberRow) == 0


def test_rules_check_accepts_the_demo_rulebook(env: dict[str, str]) -> None:
    result = run(env, "rules", "check", str(ROOT / "rules"))
    assert result.exit_code == 0, result.output
    assert "examples pass" in result.output


def test_rules_check_refuses_a_broken_rulebook_with_file_line_and_reason(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "rules" / "campaigns").mkdir(parents=True)
    (tmp_path / "rules" / "funders.yaml").write_text("funders:\n  - {id: city_federation, name: City, kind: city_federation}\n")
    (tmp_path / "rules" / "campaigns" / "bad.yaml").write_text(
        "campaign:\n  id: bad\n  name: Bad\n  valid: {from: 2026-01-01, until: 2026-12-31}\n  rules:\n"
        "    - id: r1\n      when: {weekdays: [sunday]}\n      benefit: {discount: {percent: 5}}\n"
    )
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "rules")], env=env)
    assert result.exit_code == 1
    assert "bad.yaml:7" in result.output
    assert "weekdays[0]" in result.output
    assert "sunday" in result.output


def test_the_engine_refuses_to_start_on_a_broken_rulebook(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "funders.yaml").write_text("funders: [\n")
    result = CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_RULES_DIR": str(tmp_path / "broken")})
    assert result.exit_code == 1
    assert "funders.yaml" in result.output


@pytest.mark.parametrize("value", ["5s", "inf", "nan", "-1", "3601"])
def test_a_setting_the_engine_cannot_use_is_named_with_a_non_zero_exit(env: dict[str, str], value: str) -> None:
    result = CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_LOOKUP_CACHE_TTL_S": value})
    assert result.exit_code == 1, result.output
    assert f"POS_ENGINE_LOOKUP_CACHE_TTL_S must be a number of seconds from 0 to 3600, got {value!r}" in result.output
    assert "Traceback" not in result.output


SCHEMA_BEHIND = "the database's schema is at 0003, this release needs 0004; run `pos-engine init-db` to migrate it"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("POS_ENGINE_LOOKUP_CACHE_TTL_S", "5s", "POS_ENGINE_LOOKUP_CACHE_TTL_S must be a number of seconds from 0 to 3600, got '5s'"),
        ("POS_ENGINE_RULES_DIR", "broken", "the rulebook is invalid"),
        ("POS_ENGINE_DATABASE_URL", "behind.sqlite3", f"pos-engine cannot start: {SCHEMA_BEHIND}"),
    ],
)
def test_gunicorn_stops_with_a_plain_message_when_the_engine_cannot_start(
    env: dict[str, str], tmp_path: Path, setting: str, value: str, message: str
) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "funders.yaml").write_text("funders: [\n")
    assert run(env, "init-db").exit_code == 0
    upgrade(f"sqlite:///{tmp_path}/behind.sqlite3", "0003")  # a database the release must migrate first
    if setting == "POS_ENGINE_RULES_DIR":
        value = str(tmp_path / value)
    elif setting == "POS_ENGINE_DATABASE_URL":
        value = f"sqlite:///{tmp_path}/{value}"
    served = {**os.environ, **env, setting: value}
    finished = subprocess.run(
        # Four workers failing at once: gunicorn halts on the first one's report, and the others must
        # not report it again while it stops (it would print a traceback of its own).
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "-w", "4", "-b", "127.0.0.1:0", "pos_engine.wsgi:app"],
        env=served,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode != 0  # the arbiter stops, rather than restarting workers that cannot start
    assert message in finished.stderr, finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr


def test_a_command_refuses_a_schema_this_release_must_migrate_first_until_init_db_does(env: dict[str, str], tmp_path: Path) -> None:
    behind = f"sqlite:///{tmp_path}/behind.sqlite3"
    upgrade(behind, "0003")
    result = CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_DATABASE_URL": behind})
    assert result.exit_code == 1, result.output
    assert SCHEMA_BEHIND in result.output
    assert run({**env, "POS_ENGINE_DATABASE_URL": behind}, "init-db").exit_code == 0
    assert CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_DATABASE_URL": behind}).exit_code == 0


def test_serve_without_a_database_says_to_create_it_and_creates_nothing(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "fresh" / "engine.sqlite3"
    result = CliRunner().invoke(main, ["serve", "--port", "1"], env={**env, "POS_ENGINE_DATABASE_URL": f"sqlite:///{missing}"})
    assert result.exit_code == 1, result.output
    assert f"no database at {missing}; run `pos-engine init-db` first" in result.output
    assert not (tmp_path / "fresh").exists()


def test_serve_reloads_a_changed_rulebook_and_keeps_the_one_it_had_when_a_new_one_is_broken(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, rules: Path
) -> None:
    from flask import Flask

    from pos_engine import rules_build

    served: list[Flask] = []
    monkeypatch.setattr(Flask, "run", lambda app, **_options: served.append(app))  # build the app as `serve` does, serve nothing
    children: list[Path] = []
    child_command = rules_build._child_command
    monkeypatch.setattr(rules_build, "_child_command", lambda directory: children.append(directory) or child_command(directory))
    load_in_worker = rules_build.load_rulebook

    assert run({**env, "POS_ENGINE_RULES_DIR": str(rules)}, "serve").exit_code == 0

    (app,) = served
    watcher, ctx = app.extensions["pos_engine_rules_watcher"], app.extensions["pos_engine"]
    assert watcher is not None, "serve does not watch the rulebook"
    watcher.stop()  # its thread; the checks below are made here, one at a time

    def not_in_the_worker(directory: Path) -> Any:
        raise AssertionError(f"the reload of {directory} was loaded in the worker, not built by a child")

    monkeypatch.setattr(rules_build, "load_rulebook", not_in_the_worker)  # a child never sees the patch
    version = ctx.rulebook.version
    (rules / "funders.yaml").write_text((rules / "funders.yaml").read_text() + "# changed\n")
    assert watcher.check_now()
    changed = ctx.rulebook.version
    assert changed != version
    (rules / "funders.yaml").write_text("funders: [\n")
    assert not watcher.check_now()
    assert ctx.rulebook.version == changed  # the last good one stays
    assert watcher.last_error is not None
    assert children == [rules, rules], "the reloads were not built in a child process, off the swipes' GIL"
    monkeypatch.setattr(rules_build, "load_rulebook", load_in_worker)
    (rules / "funders.yaml").write_text((ROOT / "rules" / "funders.yaml").read_text() + "# mended\n")
    watcher.catch_up()  # a forked worker before it serves: loads the files itself, under gunicorn's timeout
    assert ctx.rulebook.version not in (version, changed)
    assert children == [rules, rules]


def test_a_rule_file_edited_while_the_app_reads_the_rulebook_is_loaded_at_the_first_poll(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, rules: Path
) -> None:
    from pos_engine import rules_loader
    from pos_engine.api import create_app
    from pos_engine.config import Settings

    funders = rules / "funders.yaml"
    read, edits = rules_loader.load_rulebook, []

    def read_then_edited(directory: Any) -> Any:
        rulebook = read(directory)
        if not edits:  # the first read only, the app's own
            funders.write_text(funders.read_text() + "# edited just after it was read\n")
            edits.append(directory)
        return rulebook

    monkeypatch.setattr(rules_loader, "load_rulebook", read_then_edited)
    app = create_app(Settings(database_url=env["POS_ENGINE_DATABASE_URL"], rules_dir=str(rules)), start=False)
    assert edits
    watcher, ctx = app.extensions["pos_engine_rules_watcher"], app.extensions["pos_engine"]
    version = ctx.rulebook.version

    assert watcher.check_now(), "the edit was taken for read"
    assert ctx.rulebook.version != version


def test_a_worker_started_again_on_a_rulebook_broken_since_leaves_the_server_serving(
    env: dict[str, str], tmp_path: Path, rules: Path
) -> None:
    """A worker killed (OOM, timeout) after a broken rulebook reached the disk: the others keep the rulebook they had."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.live import free_port

    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    mark = tmp_path / "serving"  # gunicorn.conf.py's hooks write one line per worker that loaded the engine
    served = {**os.environ, **env, "POS_ENGINE_RULES_DIR": str(rules), "POS_ENGINE_SERVING_MARK": str(mark)}
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "-w", "2", "-b", f"127.0.0.1:{port}"]
    with open(log_path, "w") as log:
        server = subprocess.Popen([*command, "pos_engine.wsgi:app"], env=served, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if mark.exists() and len(mark.read_text().split()) == 2:  # both workers serve the good rulebook
                break
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        workers = [int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        (rules / "funders.yaml").write_text("funders: [\n")
        os.kill(workers[0], signal.SIGKILL)
        # gunicorn starts a worker again, which finds the broken rulebook, pauses and exits; then
        # gunicorn starts another, which does the same: a whole cycle, with the server still up.
        deadline = time.monotonic() + 60
        while log_path.read_text().count("this one is started again in") < 2:
            assert server.poll() is None, log_path.read_text()  # the server did not halt
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert server.poll() is None, log_path.read_text()
        assert "the rulebook is invalid" in log_path.read_text()
        for _ in range(5):  # new connections: the worker that kept the good rulebook answers them all
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_counters_reconcile_exits_non_zero_and_lists_a_difference(env: dict[str, str], tmp_path: Path) -> None:
    assert run(env, "demo", "--out", str(tmp_path / "demo.json")).exit_code == 0
    assert "agree" in run(env, "counters", "reconcile").output
    database = Database(env["POS_ENGINE_DATABASE_URL"])
    from pos_engine.store.sql_counters import SqlCounterStore

    with database.sessions() as session, session.begin():
        SqlCounterStore(database).apply({"campaign:city-dining:budget:fen": 42}, session)
    database.dispose()
    result = CliRunner().invoke(main, ["counters", "reconcile"], env=env)
    assert result.exit_code == 1
    assert "campaign:city-dining:budget:fen: ledger 0, stored 42" in result.output
    assert run(env, "counters", "rebuild").exit_code == 0
    assert CliRunner().invoke(main, ["counters", "reconcile"], env=env).exit_code == 0


def test_counters_expire_drops_the_rows_of_a_period_long_over_and_keeps_the_rest(env: dict[str, str], tmp_path: Path) -> None:
    assert run(env, "demo", "--out", str(tmp_path / "demo.json")).exit_code == 0
    database = Database(env["POS_ENGINE_DATABASE_URL"])
    from pos_engine.store.sql_counters import SqlCounterStore

    store = SqlCounterStore(database)
    old = {"rule:city-dining/ten-percent:card:c-1:day:2020-01-06:uses": 1, "rule:city-dining/ten-percent:card:c-1:week:2020-W02:fen": 300}
    with database.sessions() as session, session.begin():
        before = store.snapshot(session)
        store.apply(old, session)
    result = run(env, "counters", "expire", "--everything")  # which the SQL store, reading every row anyway, accepts
    assert result.exit_code == 0, result.output
    assert result.output == "dropped 2 counters of periods that are over; gave 0 counters a time to live\n"
    assert store.snapshot() == before
    database.dispose()
    assert "agree" in run(env, "counters", "reconcile").output


MEMBERS_HEADER = "member_id,name,unit_id,union_id,district,groups,in_service,annual_review_year,card_number,card_status\n"


def test_import_members_loads_every_line(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    path = tmp_path / "members.csv"
    path.write_text(
        MEMBERS_HEADER
        + "mem-a,Li Lei,unit-1,union-wujin,wujin,model_worker;hardship,true,2026,6217000000001111,active\n"
        + "mem-b,Han Meimei,unit-2,union-xinbei,xinbei,,false,,6217000000002222,lost\n"
    )
    result = run(env, "import", "members", str(path))
    assert result.exit_code == 0, result.output
    assert count(env, MemberRow) == 2
    assert count(env, CardRow) == 2


def test_import_members_refuses_the_whole_file_naming_each_bad_line(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    path = tmp_path / "members.csv"
    path.write_text(
        MEMBERS_HEADER
        + "mem-a,Li Lei,unit-1,union-wujin,wujin,,true,2026,6217000000001111,active\n"
        + "mem-b,Han,unit-2,union-x,changzhou,,yes,2026,12ab,stolen\n"
        + "mem-a,Dup,unit-1,union-wujin,wujin,,true,2026,6217000000003333,active\n"
        # Digits to str.isdigit(), not to int(): superscripts.
        + "mem-c,Wang,unit-1,union-wujin,wujin,,true,20\u00b2\u00b3,62170000000044\u00b2\u00b2,active\n"
    )
    result = CliRunner().invoke(main, ["import", "members", str(path)], env=env)
    assert result.exit_code == 1
    for expected in (
        ":3: district",
        ":3: in_service",
        ":3: card_number",
        ":3: card_status",
        ":4: member_id: 'mem-a' already on line 2",
        ":5: annual_review_year",
        ":5: card_number",
    ):
        assert expected in result.output
    assert count(env, MemberRow) == 0  # nothing half-written


def test_import_members_refuses_what_the_database_or_the_rules_could_not_take(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    path = tmp_path / "members.csv"
    path.write_text(
        MEMBERS_HEADER
        + "mem-a,Li\x00Lei,unit-1,union-wujin,wujin,,true,2026,6217000000001111,active\n"  # PostgreSQL refuses a NUL
        + "mem-b,Han,unit-1,union-wujin,wujin,Model_Worker,true,2026,6217000000002222,active\n"  # no rule can name it
        + "mem-c,Wang,unit-1,union-wujin,wujin,"
        + ";".join(f"group-{index:02d}-" + "x" * 50 for index in range(10))  # 589 characters: over the column
        + ",true,2026,6217000000003333,active\n"
    )
    result = CliRunner().invoke(main, ["import", "members", str(path)], env=env)
    assert result.exit_code == 1, result.output
    assert ":2: name: required, at most 200 printable characters" in result.output
    assert ":3: groups: names separated by ';', each of lower-case letters" in result.output
    assert ":4: groups: at most 500 characters in all" in result.output
    assert count(env, MemberRow) == 0


def test_import_members_updates_a_card_loaded_otherwise_and_keeps_its_id(env: dict[str, str], tmp_path: Path) -> None:
    """The demo's cards have ids of their own: importing one of their numbers (to report it lost) updates that card."""
    assert run(env, "demo", "--out", str(tmp_path / "demo.json")).exit_code == 0
    number = json.loads((tmp_path / "demo.json").read_text())["cards"]["usable"][0]
    database = Database(env["POS_ENGINE_DATABASE_URL"])
    with database.sessions() as session:
        same_last4 = session.execute(select(CardRow.card_id, CardRow.member_id).where(CardRow.last4 == number[-4:]))
        holders = {row.card_id: row.member_id for row in same_last4}
    path = tmp_path / "members.csv"
    path.write_text(MEMBERS_HEADER + f"mem-lost,Li Lei,unit-1,union-wujin,wujin,,true,2026,{number},lost\n")
    cards_before = count(env, CardRow)
    result = CliRunner().invoke(main, ["import", "members", str(path)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert count(env, CardRow) == cards_before
    with database.sessions() as session:
        lost = session.execute(select(CardRow.card_id).where(CardRow.status == "lost", CardRow.member_id == "mem-lost")).all()
    database.dispose()
    assert len(lost) == 1 and lost[0].card_id in holders  # the same card, under its own id
    # Another member held it: imported, and the clerk is told which line moved it, from whom.
    assert result.stdout == "imported 1 member\n"
    assert result.stderr == (
        "warning: 1 card moved from another member; check that each was meant:\n"
        f"  {path}:2: card ending {number[-4:]} moved from member {holders[lost[0].card_id]} to mem-lost\n"
    )
    again = CliRunner().invoke(main, ["import", "members", str(path)], env=env, catch_exceptions=False)
    assert (again.exit_code, again.stderr) == (0, "")  # now it is that member's: nothing moved


GOOD_MEMBER = "mem-a,Li Lei,unit-1,union-wujin,wujin,,true,2026,6217000000001111,active\n"
REST_OF_B = ",unit-1,union-wujin,wujin,,true,2026,6217000000002222,active\n"  # mem-b's line after its name


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("POS_ENGINE_DATABASE_URL", "not a url", "POS_ENGINE_DATABASE_URL is not a database URL: give sqlite:///PATH"),
        (
            "POS_ENGINE_DATABASE_URL",
            "mysql://u:secret@127.0.0.1:1/x",
            "POS_ENGINE_DATABASE_URL names 'mysql': the engine runs on",
        ),
        ("POS_ENGINE_REDIS_URL", "http://u:secret@127.0.0.1:1", "POS_ENGINE_REDIS_URL must start with redis://, rediss://, unix://"),
        ("POS_ENGINE_REDIS_URL", "redis://:secret@127.0.0.1:99999999", "POS_ENGINE_REDIS_URL cannot be used: its host or port"),
        ("POS_ENGINE_REDIS_URL", "redis://:secret@127.0.0.1:1/0?socket_connect_timeout=abc", "Invalid value for 'socket_connect_timeout'"),
        ("POS_ENGINE_REDIS_URL", "redis-cluster://127.0.0.1", "a cluster URL needs a host and a port"),
    ],
)
@pytest.mark.parametrize("command", [["init-db"], ["counters", "reconcile"], ["import", "members", "members.csv"]])
def test_a_url_the_engine_cannot_use_is_named_without_its_password(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "members.csv").write_text(MEMBERS_HEADER + "mem-a,Li Lei,unit-1,union-wujin,wujin,,true,2026,6217000000001111,active\n")
    result = CliRunner().invoke(main, command, env={**env, variable: value})
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "secret" not in result.output
    assert "Traceback" not in result.output


def test_a_database_that_cannot_be_reached_is_one_plain_line_naming_it(env: dict[str, str]) -> None:
    unreachable = {**env, "POS_ENGINE_DATABASE_URL": "postgresql://postgres:secret@127.0.0.1:1/nothing_listens_here"}
    for command in (["init-db"], ["counters", "reconcile"], ["counters", "rebuild"]):
        result = CliRunner().invoke(main, command, env=unreachable)
        assert result.exit_code == 1, result.output
        assert "POS_ENGINE_DATABASE_URL (postgresql://postgres:***@127.0.0.1:1/nothing_listens_here): the database failed" in result.output
        assert "secret" not in result.output
        assert "Traceback" not in result.output


def test_a_password_in_the_query_is_not_shown_either(env: dict[str, str]) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nothing_listens_here?password=secret&sslpassword=secret"
    result = CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_DATABASE_URL": url})
    assert result.exit_code == 1, result.output
    assert "the database failed" in result.output
    assert "secret" not in result.output


def _sqlite_syntax_error() -> OperationalError:
    try:
        sqlite3.connect(":memory:").execute("SELEC 1")
    except sqlite3.OperationalError as error:  # sqlite3 says OperationalError for a syntax error too
        return OperationalError("SELEC 1", {}, error)
    raise AssertionError("SQLite took SELEC")


@pytest.mark.parametrize(
    ("make_error", "one_line"),
    [
        pytest.param(
            lambda: IntegrityError("INSERT …", {}, sqlite3.IntegrityError("UNIQUE constraint failed: counters.key")),
            None,
            id="a broken constraint is a bug: it keeps its traceback",
        ),
        pytest.param(_sqlite_syntax_error, None, id="so is bad SQL on SQLite"),
        pytest.param(
            lambda: OperationalError("SELECT …", {}, sqlite3.OperationalError("")),
            "the database failed: OperationalError",
            id="a failing database with no message is still one line",
        ),
    ],
)
def test_only_a_failing_database_loses_its_traceback(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, make_error: Any, one_line: str | None
) -> None:
    run(env, "init-db")
    error = make_error()

    def failing(_ctx: Any, **_options: Any) -> int:
        raise error

    monkeypatch.setattr("pos_engine.service.counters.rebuild_counters", failing)
    result = CliRunner().invoke(main, ["counters", "rebuild"], env=env)
    if one_line is None:
        assert result.exception is error
    else:
        assert result.exit_code == 1, result.output
        assert one_line in result.output


@pytest.mark.redis
def test_a_redis_rebuild_waits_for_quiet_terminals_and_says_so_when_they_are_not(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pos_engine.store import redis_counters

    namespace = f"test-{uuid.uuid4().hex}"
    redis_env = {**env, "POS_ENGINE_REDIS_URL": REDIS_URL, "POS_ENGINE_REDIS_NAMESPACE": namespace}
    assert run(env, "demo", "--out", str(tmp_path / "demo.json")).exit_code == 0
    client = redis.Redis.from_url(REDIS_URL)
    claim = "{" + namespace + "}claim:t-1:req-1"
    client.set(claim, "attempt-1", ex=30)  # a swipe a moment ago
    monkeypatch.setattr(redis_counters, "COUNTERS_QUIET_WAIT_S_MAX", 0.2)
    monkeypatch.setattr(redis_counters, "QUIET_POLL_S", 0.05)
    monkeypatch.setattr(redis_counters, "REBUILD_SETTLE_S", 0.0)
    drifted = "{" + namespace + "}:campaign:city-dining:budget:fen"
    client.set(drifted, 42)  # a counter the ledger does not have: the rebuild deletes it
    try:
        busy = CliRunner().invoke(main, ["counters", "rebuild"], env=redis_env)
        assert busy.exit_code == 1, busy.output
        assert "waiting until terminals are quiet (no swipe has reserved caps for 30 s" in busy.output
        assert "terminals did not go quiet within 0.2 s" in busy.output
        assert "Traceback" not in busy.output
        assert client.get(drifted) == b"42"  # nothing written
        forced = run(redis_env, "counters", "rebuild", "--under-traffic")
        assert (forced.exit_code, forced.output) == (0, "rebuilt 0 counters from the ledger\n")
        assert client.get(drifted) is None
        client.set(drifted, 42)
        client.delete(claim)
        quiet = run(redis_env, "counters", "rebuild")
        assert quiet.exit_code == 0, quiet.output
        assert quiet.output.endswith("rebuilt 0 counters from the ledger\n")
        assert client.get(drifted) is None
    finally:
        keys = list(client.scan_iter(match="{" + namespace + "}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.redis
def test_a_redis_counters_expire_reads_every_counter_on_its_first_run_and_when_asked(env: dict[str, str], tmp_path: Path) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    redis_env = {**env, "POS_ENGINE_REDIS_URL": REDIS_URL, "POS_ENGINE_REDIS_NAMESPACE": namespace}
    assert run(env, "demo", "--out", str(tmp_path / "demo.json")).exit_code == 0
    client = redis.Redis.from_url(REDIS_URL)
    untimed = "{" + namespace + "}:rule:city-dining/ten-percent:card:c-1:year:2999:uses"  # no swipe noted it
    try:
        client.set(untimed, 1)
        first = run(redis_env, "counters", "expire")
        assert (first.exit_code, first.output) == (0, "dropped 0 counters of periods that are over; gave 1 counters a time to live\n")
        assert client.ttl(untimed) > 0
        client.persist(untimed)
        again = run(redis_env, "counters", "expire")  # only what swipes noted since: nothing
        assert (again.exit_code, again.output) == (0, "dropped 0 counters of periods that are over; gave 0 counters a time to live\n")
        assert client.ttl(untimed) == -1
        everything = run(redis_env, "counters", "expire", "--everything")
        assert everything.exit_code == 0, everything.output
        assert everything.output == "dropped 0 counters of periods that are over; gave 1 counters a time to live\n"
        assert client.ttl(untimed) > 0
    finally:
        keys = list(client.scan_iter(match="{" + namespace + "}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_an_sqlite_uri_filename_is_left_to_sqlite(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    uri = f"sqlite:///file:{tmp_path}/engine.sqlite3?mode=rw&uri=true"
    result = CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_DATABASE_URL": uri})
    assert result.exit_code == 0, result.output
    assert "counters agree with the ledger" in result.output


def test_redis_that_cannot_be_reached_is_one_plain_line_naming_it(env: dict[str, str]) -> None:
    run(env, "init-db")
    for url in (
        "redis://:secret@127.0.0.1:1",
        "redis://secret@127.0.0.1:1",
        "redis://127.0.0.1:1/0?password=secret",
        "redis-cluster://127.0.0.1:1",
    ):
        result = CliRunner().invoke(main, ["counters", "reconcile"], env={**env, "POS_ENGINE_REDIS_URL": url})
        assert result.exit_code == 1, result.output
        assert result.output.startswith("POS_ENGINE_REDIS_URL (redis")
        assert "): Redis failed: " in result.output and "Error 111 connecting to 127.0.0.1:1" in result.output
        assert "secret" not in result.output


def test_a_database_without_its_schema_says_to_run_init_db(env: dict[str, str], tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "engine.sqlite3").close()  # a file, with no tables
    result = CliRunner().invoke(main, ["counters", "reconcile"], env=env)
    assert result.exit_code == 1, result.output
    assert "the database has no schema yet; run `pos-engine init-db` first" in result.output


def test_a_command_that_reads_a_database_never_creates_one(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "members.csv").write_text(MEMBERS_HEADER + "mem-a,Li Lei,unit-1,union-wujin,wujin,,true,2026,6217000000001111,active\n")
    missing = tmp_path / "typo" / "engine.sqlite3"
    for command in (["import", "members", str(tmp_path / "members.csv")], ["counters", "reconcile"], ["counters", "rebuild"]):
        result = CliRunner().invoke(main, command, env={**env, "POS_ENGINE_DATABASE_URL": f"sqlite:///{missing}"})
        assert result.exit_code == 1, result.output
        assert f"no database at {missing}; run `pos-engine init-db` first" in result.output
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            MEMBERS_HEADER.replace("\n", ",name\n").encode() + GOOD_MEMBER.replace("\n", ",Other\n").encode(),
            ":1: columns given more than once: name",
            id="a column twice",
        ),
        pytest.param(
            (MEMBERS_HEADER + GOOD_MEMBER + "mem-b," + "x" * 200_000 + REST_OF_B).encode(),
            ":3: field larger than field limit",
            id="a field too long, on its own line",
        ),
        pytest.param(
            (MEMBERS_HEADER + GOOD_MEMBER + 'mem-b,"Han' + REST_OF_B + GOOD_MEMBER).encode(),
            ":3: unexpected end of data (in the record that starts on this line)",
            id="a quote never closed, named where it opened",
        ),
        pytest.param(
            (MEMBERS_HEADER + 'mem-b,"Han"x' + REST_OF_B).encode(),
            ":2: ',' expected after '\"'",
            id="text after a closing quote",
        ),
        pytest.param(
            MEMBERS_HEADER.encode() + GOOD_MEMBER.encode() + ("mem-b,李雷" + REST_OF_B).encode("gbk"),
            ":3: not UTF-8 text (byte 0xc0 at byte 7 of the line)",
            id="GBK, named by line",
        ),
        pytest.param(
            (MEMBERS_HEADER + GOOD_MEMBER).replace("\n", "\r").encode() + "mem-b,李雷".encode("gbk") + REST_OF_B.encode(),
            ":3: not UTF-8 text (byte 0xc0 at byte 7 of the line)",
            id="GBK in an old Mac file, named by line",
        ),
        pytest.param(
            (MEMBERS_HEADER + "\n" + "mem-b,Han,unit-1,union-wujin,nowhere,,true,2026,6217000000002222,active\n").encode(),
            ":3: district",
            id="a blank line before a bad record",
        ),
        pytest.param(
            (MEMBERS_HEADER + 'mem-b,"Han\nMeimei"' + REST_OF_B + GOOD_MEMBER).encode(),
            ":2: name: required, at most 200 printable characters",
            id="a record over two lines, named by its first",
        ),
    ],
)
def test_import_names_the_line_of_a_malformed_csv_and_imports_nothing(
    env: dict[str, str], tmp_path: Path, content: bytes, expected: str
) -> None:
    run(env, "init-db")
    path = tmp_path / "members.csv"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["import", "members", str(path)], env=env)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert count(env, MemberRow) == 0


def test_import_reads_old_mac_line_ends_and_a_pipe(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    mac = tmp_path / "mac.csv"
    mac.write_bytes((MEMBERS_HEADER + GOOD_MEMBER).replace("\n", "\r").encode())
    result = run(env, "import", "members", str(mac))
    assert result.exit_code == 0, result.output

    pipe = tmp_path / "members.pipe"  # as `pos-engine import members <(zcat members.csv.gz)` gives it
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_text, args=(MEMBERS_HEADER + GOOD_MEMBER.replace("mem-a", "mem-p"),), daemon=True)
    writer.start()
    result = run(env, "import", "members", str(pipe))
    writer.join(10)
    assert result.exit_code == 0, result.output
    assert count(env, MemberRow) == 2


def test_import_refuses_a_file_over_its_byte_limit(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(env, "init-db")
    monkeypatch.setattr("pos_engine.jobs.imports.IMPORT_BYTES_MAX", 100)
    path = tmp_path / "members.csv"
    path.write_text(MEMBERS_HEADER + GOOD_MEMBER)
    result = CliRunner().invoke(main, ["import", "members", str(path)], env=env)
    assert result.exit_code == 1, result.output
    assert "larger than 100 bytes" in result.output
    assert count(env, MemberRow) == 0


def test_import_refuses_a_device_rather_than_reading_it_for_ever(env: dict[str, str]) -> None:
    run(env, "init-db")
    result = CliRunner().invoke(main, ["import", "members", "/dev/zero"], env=env)
    assert result.exit_code == 1, result.output
    assert "/dev/zero: not a regular file" in result.output


def test_import_refuses_a_file_with_missing_columns(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    path = tmp_path / "merchants.csv"
    path.write_text("merchant_id,name\nm-1,Shop\n")
    result = CliRunner().invoke(main, ["import", "merchants", str(path)], env=env)
    assert result.exit_code == 1
    assert "missing columns: category, district, status" in result.output


def test_import_merchants_creates_terminals_and_writes_their_secrets(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    path = tmp_path / "merchants.csv"
    path.write_text("merchant_id,name,category,district,status,terminal_id\nm-new,New Noodles,dining,jintan,active,t-new\n")
    result = run(env, "import", "merchants", str(path), "--secrets-out", str(tmp_path / "secrets.json"))
    assert result.exit_code == 0, result.output
    secrets = json.loads((tmp_path / "secrets.json").read_text())
    assert list(secrets) == ["t-new"]
    assert count(env, TerminalRow) == 1


def test_import_merchants_refuses_new_terminals_whose_secrets_would_be_lost(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    path = tmp_path / "merchants.csv"
    path.write_text("merchant_id,name,category,district,status,terminal_id\nm-new,New Noodles,dining,jintan,active,t-new\n")
    for args, reason in (
        ((), "1 new terminals: give --secrets-out FILE to receive their secrets (shown once)"),
        (("--secrets-out", str(tmp_path / "no-such-dir" / "secrets.json")), "cannot write: No such file or directory"),
    ):
        result = CliRunner().invoke(main, ["import", "merchants", str(path), *args], env=env)
        assert result.exit_code == 1, result.output
        assert reason in result.output
        assert (count(env, MerchantRow), count(env, TerminalRow)) == (0, 0)  # nothing imported, so a re-run creates them
    (tmp_path / "old.json").write_text("{}")
    result = CliRunner().invoke(main, ["import", "merchants", str(path), "--secrets-out", str(tmp_path / "old.json")], env=env)
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "old.json").read_text() == "{}"
    assert run(env, "import", "merchants", str(path), "--secrets-out", str(tmp_path / "secrets.json")).exit_code == 0
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    again = run(env, "import", "merchants", str(path))  # nothing new: no secrets to deliver
    assert again.exit_code == 0, again.output


def test_a_secrets_file_written_before_a_failed_commit_is_pointed_out(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(env, "init-db")

    def import_then_fail_to_commit(_database: Any, _file: Path, deliver_secrets: Any) -> Any:
        deliver_secrets({"t-new": "s3cr3t"})
        raise OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr("pos_engine.jobs.imports.import_merchants", import_then_fail_to_commit)
    path = tmp_path / "merchants.csv"
    path.write_text("merchant_id,name,category,district,status,terminal_id\nm-new,New Noodles,dining,jintan,active,t-new\n")
    secrets = tmp_path / "secrets.json"
    result = CliRunner().invoke(main, ["import", "merchants", str(path), "--secrets-out", str(secrets)], env=env)
    assert result.exit_code == 1, result.output
    assert f"{secrets} was written before the import failed: check that its terminals exist" in result.output
    assert "the database failed: disk I/O error" in result.output


def test_import_merchants_names_every_line_whose_terminal_is_bound_elsewhere(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "init-db")
    first = tmp_path / "first.csv"
    first.write_text(
        "merchant_id,name,category,district,status,terminal_id\nm-1,One,dining,jintan,active,t-1\nm-2,Two,dining,jintan,active,t-2\n"
    )
    assert run(env, "import", "merchants", str(first), "--secrets-out", str(tmp_path / "s.json")).exit_code == 0
    swapped = tmp_path / "swapped.csv"
    swapped.write_text(
        "merchant_id,name,category,district,status,terminal_id\nm-1,One,dining,jintan,active,t-2\nm-2,Two,dining,jintan,active,t-1\n"
    )
    result = CliRunner().invoke(main, ["import", "merchants", str(swapped)], env=env)
    assert result.exit_code == 1
    assert f"{swapped}:2: terminal_id: 't-2' is bound to merchant 'm-2'" in result.output
    assert f"{swapped}:3: terminal_id: 't-1' is bound to merchant 'm-1'" in result.output


def test_a_missing_argument_is_a_usage_error_not_a_traceback(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["demo"], env=env)
    assert result.exit_code == 2
    assert "--out" in result.output
