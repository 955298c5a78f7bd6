"""Group commit on PostgreSQL: records that arrive while another is on its way go together, each with its own outcome.

A transaction holding `idempotency_records` in EXCLUSIVE mode keeps the first record (the leader's) waiting
in PostgreSQL while other threads' records queue behind it; rows written by one statement share their
`xmin` (the transaction that wrote them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from pos_engine.service.errors import DuplicateKey, OutcomeUnknown
from pos_engine.store import db
from pos_engine.store.db import RECORD_GROUP_MAX, Database
from tests.integration.test_direct_recording import _fields, _stored

Row = tuple[str, dict[str, Any], dict[str, Any]]
# Sessions of this test's database whose record (or its preparation) waits for a lock.
_RECORDS_WAITING = (
    "FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    " AND query LIKE '%INSERT INTO idempotency_records%'"
)


def _entry(request_id: str) -> Row:
    fields, idempotency = _fields(f"au_{request_id}", request_id)
    return "ledger_entries", fields, idempotency


def _decline(request_id: str) -> Row:
    _entry_fields, idempotency = _fields(f"de_{request_id}", request_id)
    fields = {
        "decline_id": f"de_{request_id}",
        "terminal_id": "t-1",
        "request_id": request_id,
        "merchant_id": "m-1",
        "card_last4": "0001",
        "decline_code": "no_benefit",
        "amount_fen": 500,
        "occurred_at": _entry_fields["occurred_at"],
        "recorded_at": _entry_fields["recorded_at"],
        "rules_version": "v-1",
    }
    return "declines", fields, {**idempotency, "response_body": b'{"status":"declined"}'}


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("TRUNCATE ledger_entries, declines, idempotency_records")
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def threads(database: Database) -> Iterator[ThreadPoolExecutor]:
    """Threads, each with its connection open (a new connection prepares its statements, which waits for the table)."""
    workers = RECORD_GROUP_MAX + 4
    everyone = threading.Barrier(workers)
    direct = database._direct
    assert direct is not None

    def connect() -> None:
        direct.get()
        everyone.wait(timeout=10)  # so that each task runs on a thread of its own

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for opened in [pool.submit(connect) for _worker in range(workers)]:
            opened.result(timeout=10)
        yield pool


def _record(database: Database, row: Row) -> None:
    with database.single_statement() as uow:
        uow.repo.record(*row)


@contextmanager
def _records_held(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """While open, every record waits in PostgreSQL for the table lock."""
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE idempotency_records IN EXCLUSIVE MODE")
        yield holder


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _waiting_in_postgresql(pg_url: str, statements: int) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            row = admin.execute(f"SELECT count(*) {_RECORDS_WAITING}").fetchone()
        return row is not None and row[0] == statements

    return check


def _queued(database: Database, records: int) -> Callable[[], bool]:
    group = database._record_group
    assert group is not None
    return lambda: len(group._queue) == records


def _writers(pg_url: str) -> dict[str, int]:
    """Each stored request's writing transaction."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        return {request_id: int(xmin) for request_id, xmin in admin.execute("SELECT request_id, xmin::text FROM idempotency_records")}


def _start(threads: ThreadPoolExecutor, database: Database, rows: list[Row]) -> list[Future[None]]:
    return [threads.submit(_record, database, row) for row in rows]


def _lead_and_queue(
    pg_url: str, database: Database, threads: ThreadPoolExecutor, lead: Row, queued: list[Row]
) -> tuple[Future[None], list[Future[None]]]:
    """`lead` waits in PostgreSQL and `queued` wait behind it in the group (the caller holds the table)."""
    leader = threads.submit(_record, database, lead)
    _until(_waiting_in_postgresql(pg_url, 1), "the leader's record to wait for the lock")
    followers = []
    for row in queued:
        followers.append(threads.submit(_record, database, row))
        _until(_queued(database, len(followers)), "a record to queue")
    return leader, followers


def test_records_that_arrive_while_one_is_on_its_way_are_written_by_one_statement(
    pg_url: str, database: Database, threads: ThreadPoolExecutor
) -> None:
    every_byte = _entry("req-4")
    every_byte[2]["response_body"] = bytes(range(256))  # bytea goes in binary format: text would stop at the NUL
    queued = [_entry("req-2"), _decline("req-3"), every_byte, _decline("req-5")]
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), queued)
        assert not leader.done() and not any(follower.done() for follower in followers)
    leader.result(timeout=10)
    for follower in followers:
        follower.result(timeout=10)
    writers = _writers(pg_url)
    assert len({writers[f"req-{number}"] for number in range(2, 6)}) == 1  # one statement for all four
    assert writers["req-1"] != writers["req-2"]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM ledger_entries").fetchone() == (3,)
        assert admin.execute("SELECT decline_id, decline_code, amount_fen FROM declines ORDER BY 1").fetchall() == [
            ("de_req-3", "no_benefit", 500),
            ("de_req-5", "no_benefit", 500),
        ]
    # Stored as a lone record stores them, byte for byte.
    alone_row = _entry("req-alone")
    alone_row[2]["response_body"] = bytes(range(256))
    _record(database, alone_row)
    alone = _stored(database, "au_req-alone")
    assert _stored(database, "au_req-4") == alone


def test_a_group_never_holds_more_than_its_maximum_and_the_rest_follow(
    pg_url: str, database: Database, threads: ThreadPoolExecutor
) -> None:
    queued = [_entry(f"req-{number}") for number in range(2, RECORD_GROUP_MAX + 4)]
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), queued)
    for future in [leader, *followers]:
        future.result(timeout=10)
    writers = _writers(pg_url)
    statements = sorted(list(writers.values()).count(xmin) for xmin in set(writers.values()))
    assert statements == [1, 2, RECORD_GROUP_MAX]  # the leader; the first eight queued; the two after them


def test_a_duplicate_request_in_a_group_is_refused_alone_and_the_others_are_recorded(
    pg_url: str, database: Database, threads: ThreadPoolExecutor
) -> None:
    _record(database, _entry("req-dup"))
    duplicate = _entry("req-dup")
    duplicate[1]["entry_id"] = duplicate[1]["authorisation_id"] = duplicate[2]["resource_id"] = "au_second"
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [_entry("req-2"), duplicate, _decline("req-3")])
    leader.result(timeout=10)
    followers[0].result(timeout=10)
    with pytest.raises(DuplicateKey):
        followers[1].result(timeout=10)
    followers[2].result(timeout=10)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM ledger_entries WHERE entry_id = 'au_second'").fetchone() == (0,)
        assert admin.execute("SELECT count(*) FROM idempotency_records").fetchone() == (4,)


def test_a_value_the_record_refuses_fails_only_its_own_swipe(pg_url: str, database: Database, threads: ThreadPoolExecutor) -> None:
    bad = _entry("req-nul")
    bad[1]["merchant_id"] = "m-1\x00-and-more"
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [bad, _entry("req-2"), _entry("req-3")])
    leader.result(timeout=10)
    with pytest.raises(ValueError, match="NUL"):
        followers[0].result(timeout=10)
    for follower in followers[1:]:
        follower.result(timeout=10)
    writers = _writers(pg_url)
    assert "req-nul" not in writers
    assert writers["req-2"] == writers["req-3"]


def test_a_group_cancelled_by_the_server_writes_nothing_and_each_swipe_gets_the_error(
    pg_url: str, database: Database, threads: ThreadPoolExecutor
) -> None:
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [_entry("req-2"), _entry("req-3")])
        (leader_pid,) = _pids_waiting(pg_url)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (leader_pid,))
        with pytest.raises(psycopg.errors.QueryCanceled):
            leader.result(timeout=10)
        _until(_waiting_in_postgresql(pg_url, 1), "the group's statement to wait for the lock")
        (group_pid,) = _pids_waiting(pg_url)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (group_pid,))
        errors = [_error(follower) for follower in followers]
    assert all(isinstance(error, psycopg.errors.QueryCanceled) for error in errors)
    assert errors[0] is not errors[1]  # each thread raises its own
    assert _writers(pg_url) == {}
    _record(database, _entry("req-2"))  # the group is free again
    assert set(_writers(pg_url)) == {"req-2"}


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not committed"])
def test_a_group_whose_answer_is_lost_looks_each_swipe_up(
    pg_url: str, database: Database, threads: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    execute = db._GroupStatements.execute

    def lost(self: Any, connection: psycopg.Connection[Any], group: list[Any]) -> None:
        if committed:
            execute(self, connection, group)
        connection.pgconn.finish()  # the session ends: a statement not sent never will commit
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(db._GroupStatements, "execute", lost)
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [_entry("req-2"), _decline("req-3")])
    leader.result(timeout=10)
    errors = [_error(follower) for follower in followers]
    if committed:
        assert errors == [None, None]
        assert set(_writers(pg_url)) == {"req-1", "req-2", "req-3"}
    else:
        assert all(type(error) is psycopg.OperationalError for error in errors)  # nothing written: a 503, caps given back
        assert set(_writers(pg_url)) == {"req-1"}


def test_a_group_whose_outcome_cannot_be_told_is_outcome_unknown_for_each_swipe(
    pg_url: str, database: Database, threads: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost(self: Any, connection: psycopg.Connection[Any], group: list[Any]) -> None:  # the session stays open
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(db._GroupStatements, "execute", lost)
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [_entry("req-2"), _entry("req-3")])
    leader.result(timeout=10)
    assert all(isinstance(_error(follower), OutcomeUnknown) for follower in followers)


def _pids_waiting(pg_url: str) -> list[int]:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        return [pid for (pid,) in admin.execute(f"SELECT pid {_RECORDS_WAITING}")]


def _error(future: Future[None]) -> BaseException | None:
    try:
        future.result(timeout=10)
    except BaseException as error:  # the outcome under test
        return error
    return None


def test_two_groups_holding_each_other_s_repeats_do_not_deadlock(pg_url: str, database: Database) -> None:
    """Each group statement takes its idempotency keys in one order: a repeat waits for the first, never in a cycle.

    A trigger slows every insert of these requests' keys, so that both statements hold their first key
    before either asks for its second. Taken in the order each group came in (x then y, y then x) they
    would wait for each other until the statement limit cancelled one: a 503 for swipes that could go.
    """
    limited = Database(pg_url, statement_timeout_ms=600)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION slow_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $$;"
            " CREATE TRIGGER slow_key BEFORE INSERT ON idempotency_records FOR EACH ROW"
            " WHEN (NEW.request_id LIKE 'slow-%') EXECUTE FUNCTION slow_key()"
        )
    try:
        first, again = {}, {}
        for request_id in ("slow-x", "slow-y"):
            first[request_id] = db._Waiting(_entry(request_id))
            repeat = _entry(request_id)
            repeat[1]["entry_id"] = repeat[1]["authorisation_id"] = repeat[2]["resource_id"] = f"au_again_{request_id}"
            again[request_id] = db._Waiting(repeat)
        groups = [[first["slow-x"], first["slow-y"]], [again["slow-y"], again["slow-x"]]]
        everyone = threading.Barrier(2)

        def send(group: list[db._Waiting]) -> None:
            with limited.single_statement() as uow:
                everyone.wait(timeout=10)
                uow.repo.record_group(group)

        with ThreadPoolExecutor(max_workers=2) as pool:
            for sent in [pool.submit(send, group) for group in groups]:
                sent.result(timeout=20)
        outcomes = [type(waiting.error).__name__ for group in groups for waiting in group]
        assert sorted(outcomes) == ["DuplicateKey", "DuplicateKey", "NoneType", "NoneType"], outcomes
        assert all(waiting.done for group in groups for waiting in group)
    finally:
        limited.dispose()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("DROP TRIGGER slow_key ON idempotency_records; DROP FUNCTION slow_key()")


def test_a_group_refused_for_a_lock_one_row_could_not_take_sends_each_swipe_alone(
    pg_url: str, database: Database, threads: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, not cancelled (a lock timeout, a serialisation failure): nothing was written, and that was one row's doing."""

    def refused(self: Any, connection: psycopg.Connection[Any], group: list[Any]) -> None:
        raise psycopg.errors.LockNotAvailable("could not obtain lock on row in relation")

    monkeypatch.setattr(db._GroupStatements, "execute", refused)
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [_entry("req-2"), _decline("req-3")])
    leader.result(timeout=10)
    assert [_error(follower) for follower in followers] == [None, None]
    writers = _writers(pg_url)
    assert set(writers) == {"req-1", "req-2", "req-3"}
    assert writers["req-2"] != writers["req-3"]  # each by a statement of its own


@pytest.mark.parametrize("failure", [SystemExit(1), OSError("poll failed")], ids=["stopped", "failed otherwise"])
def test_a_sender_stopped_or_failing_with_its_group_on_the_way_leaves_every_swipe_outcome_unknown_and_no_one_waiting(
    pg_url: str, database: Database, threads: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """The statement went out (and committed) when the sender was stopped, or failed (a bug, the process): no swipe of
    the group may give its caps back, and the lead passes on."""
    execute = db._GroupStatements.execute

    def sent_then_failed(self: Any, connection: psycopg.Connection[Any], group: list[Any]) -> None:
        execute(self, connection, group)
        raise failure

    monkeypatch.setattr(db._GroupStatements, "execute", sent_then_failed)
    with _records_held(pg_url):
        leader, followers = _lead_and_queue(pg_url, database, threads, _entry("req-1"), [_entry("req-2"), _entry("req-3"), _entry("req-4")])
    leader.result(timeout=10)
    errors = [_error(follower) for follower in followers]
    if isinstance(failure, SystemExit):
        assert errors[0] is failure  # the sender (the first queued) stops; the others may have committed
        errors = errors[1:]
    assert all(isinstance(error, OutcomeUnknown) for error in errors)
    monkeypatch.undo()
    _record(database, _entry("req-5"))  # the group is free again
    assert set(_writers(pg_url)) == {"req-1", "req-2", "req-3", "req-4", "req-5"}


def test_a_group_on_a_closed_connection_fails_each_swipe_as_nothing_written(pg_url: str, database: Database) -> None:
    direct = database._direct
    assert direct is not None
    connection = direct.get()
    connection.close()
    group = [db._Waiting(_entry("req-1")), db._Waiting(_decline("req-2"))]
    db.DirectRepository(connection, database._conninfo).record_group(group)
    assert all(waiting.done and type(waiting.error) is psycopg.OperationalError for waiting in group)  # a 503, caps given back
    assert _writers(pg_url) == {}


def test_each_mix_of_entries_and_declines_is_prepared_on_a_connection_when_first_sent(pg_url: str, database: Database) -> None:
    direct = database._direct
    assert direct is not None
    repository = db.DirectRepository(direct.get(), database._conninfo)
    mixes = [
        [_entry("req-1"), _decline("req-2")],
        [_entry("req-3"), _entry("req-4"), _decline("req-5")],
        [_decline("req-6"), _decline("req-7")],
        [_entry("req-8"), _decline("req-9")],  # the first mix again: prepared already
    ]
    for rows in mixes:
        group = [db._Waiting(row) for row in rows]
        repository.record_group(group)
        assert [waiting.error for waiting in group] == [None] * len(group)
    writers = _writers(pg_url)
    statements = [{writers[row[2]["request_id"]] for row in rows} for rows in mixes]
    assert all(len(statement) == 1 for statement in statements)  # each group by one statement
    assert len(set.union(*statements)) == len(mixes)
