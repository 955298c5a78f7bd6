"""Background threads: started once per process (again in each forked child); their repeated failures logged without flooding."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator

import pytest

from pos_engine.service.background import YIELDING_SWITCH_INTERVAL_S, ProcessThread, RepeatedFailure, yielding_to_requests
from tests.helpers import in_a_forked_child


def test_a_thread_starts_once_in_a_process_and_once_again_in_a_forked_child() -> None:
    started_in: list[int] = []
    stop = threading.Event()
    worker = ProcessThread("test-worker", stop.wait, before_start=lambda: started_in.append(os.getpid()))
    worker.ensure_started()
    worker.ensure_started()
    assert started_in == [os.getpid()]

    def in_the_child() -> object:  # a gunicorn worker forked after the app was built
        worker.ensure_started()
        worker.ensure_started()
        return started_in == [started_in[0], os.getpid()]

    answer = in_a_forked_child(in_the_child)
    stop.set()

    assert answer == "True"
    assert started_in == [os.getpid()]  # the child's start changed nothing here


def test_a_background_failure_that_repeats_is_logged_in_full_once_then_as_a_line_now_and_then(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    failures = RepeatedFailure(logging.getLogger("test.background"), "directory load", "retrying", quiet_s=300.0, clock=lambda: now[0])

    with caplog.at_level(logging.WARNING, logger="test.background"):
        for attempt in range(10):  # an outage, polled every 5 s: 50 s; the message names a changing address
            failures.failed(ConnectionRefusedError(f"connection to 10.0.0.{attempt % 2} refused\nDETAIL: more"))
            now[0] += 5.0
        now[0] = 1000.0 + 300.0
        failures.failed(ConnectionRefusedError("connection to 10.0.0.1 refused"))  # still failing, five minutes on
        failures.failed(TimeoutError("timed out"))  # another kind of failure: in full again
        failures.succeeded()
        failures.succeeded()  # said once

    logged = [(record.levelname, record.getMessage(), record.exc_info is not None) for record in caplog.records]
    assert logged == [
        ("ERROR", "directory load failed; retrying", True),
        ("ERROR", "directory load still failing (10 times more in 300 s): ConnectionRefusedError: connection to 10.0.0.1 refused", False),
        ("ERROR", "directory load failed; retrying", True),
        ("WARNING", "directory load works again", False),
    ]


def test_a_service_that_comes_and_goes_shows_its_traceback_once_in_the_quiet_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    failures = RepeatedFailure(logging.getLogger("test.background"), "directory poll", "retrying", quiet_s=300.0, clock=lambda: now[0])

    with caplog.at_level(logging.WARNING, logger="test.background"):
        for _flap in range(3):  # a database that drops every other poll
            failures.failed(ConnectionResetError("server closed the connection\nunexpectedly"))
            now[0] += 5.0
            failures.succeeded()
            now[0] += 5.0
        failures.failed(TimeoutError("timed out"))  # another kind: in full
        failures.succeeded()
        now[0] = 1000.0 + 300.0  # the quiet period is over: in full again
        failures.failed(ConnectionResetError("server closed the connection"))

    logged = [(record.levelname, record.getMessage(), record.exc_info is not None) for record in caplog.records]
    again = ("ERROR", "directory poll failed again; retrying: ConnectionResetError: server closed the connection", False)
    works = ("WARNING", "directory poll works again", False)
    assert logged == [
        ("ERROR", "directory poll failed; retrying", True),
        works,
        again,
        works,
        again,
        works,
        ("ERROR", "directory poll failed; retrying", True),
        works,
        ("ERROR", "directory poll failed; retrying", True),
    ]


def test_long_background_work_shortens_the_switch_interval_until_the_last_thread_leaves() -> None:
    """Two threads' reloads overlap: the interval stays short until both are done, then is what it was before."""
    before = sys.getswitchinterval()
    assert before > YIELDING_SWITCH_INTERVAL_S  # the test would prove nothing at the short interval already
    first_inside, first_may_leave, first_left = (threading.Event() for _ in range(3))
    seen: dict[str, float] = {}

    def first() -> None:
        with yielding_to_requests():
            seen["first inside"] = sys.getswitchinterval()
            first_inside.set()
            first_may_leave.wait(5)
        first_left.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_inside.wait(5)
    with yielding_to_requests():
        first_may_leave.set()
        assert first_left.wait(5)
        seen["second, after the first left"] = sys.getswitchinterval()
    thread.join(5)
    seen["after both"] = sys.getswitchinterval()

    assert seen == pytest.approx(  # CPython keeps the interval in whole microseconds
        {"first inside": YIELDING_SWITCH_INTERVAL_S, "second, after the first left": YIELDING_SWITCH_INTERVAL_S, "after both": before}
    )


def test_the_switch_interval_is_put_back_when_the_work_fails() -> None:
    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError), yielding_to_requests():
        assert sys.getswitchinterval() == pytest.approx(YIELDING_SWITCH_INTERVAL_S)
        raise RuntimeError("the loader failed")
    assert sys.getswitchinterval() == before


@pytest.fixture
def switch_interval() -> Iterator[None]:
    """Whatever a test sets, the suite goes on at the interval it had."""
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_an_interval_of_its_own_is_put_back_to_the_microsecond_however_often(switch_interval: None) -> None:
    """CPython keeps whole microseconds and truncates: setswitchinterval(0.004003) keeps 4,002, and
    setswitchinterval(getswitchinterval()) can lose one each time."""
    sys.setswitchinterval(4003.5 / 1e6)  # 4,003 µs
    for _ in range(3):
        with yielding_to_requests():
            pass
    assert round(sys.getswitchinterval() * 1e6) == 4003


def test_an_interval_set_by_someone_else_meanwhile_is_kept(switch_interval: None) -> None:
    with yielding_to_requests():
        sys.setswitchinterval(0.002)
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_a_child_forked_while_a_thread_is_inside_starts_with_the_interval_as_it_was(switch_interval: None) -> None:
    """gunicorn forks workers; the thread that was inside does not exist in the child and will never leave."""
    sys.setswitchinterval(0.005)
    inside, may_leave = threading.Event(), threading.Event()

    def reload() -> None:
        with yielding_to_requests():
            inside.set()
            may_leave.wait(5)

    thread = threading.Thread(target=reload)
    thread.start()
    assert inside.wait(5)

    def in_the_child() -> object:  # the interval as before the reload, and the next reload works as ever
        seen = [round(sys.getswitchinterval() * 1e6)]
        with yielding_to_requests():
            seen.append(round(sys.getswitchinterval() * 1e6))
        seen.append(round(sys.getswitchinterval() * 1e6))
        return seen

    answer = in_a_forked_child(in_the_child)
    may_leave.set()
    thread.join(5)

    assert answer == repr([5000, round(YIELDING_SWITCH_INTERVAL_S * 1e6), 5000])
    assert round(sys.getswitchinterval() * 1e6) == 5000  # and here, once the thread left
