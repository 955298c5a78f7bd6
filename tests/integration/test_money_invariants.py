"""Money invariants under concurrency, retries and crashes, on every backend.

Backends: SQLite with the SQL counter store (the embedded default),
PostgreSQL with Redis, and PostgreSQL with the SQL counter store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from pos_engine.domain.clock import FixedClock
from pos_engine.domain.registry import Terminal
from pos_engine.domain.rulebook import Limit, Rulebook
from pos_engine.limits import OCCURRED_AT_BEHIND_S_MAX
from pos_engine.service import counters as counters_service
from pos_engine.service import swipes
from pos_engine.service.context import EngineContext
from pos_engine.service.counters import rebuild_counters, reconcile_counters
from pos_engine.service.errors import CountersBusy, OutcomeUnknown
from pos_engine.store import redis_counters
from pos_engine.store.models import LedgerEntryRow
from tests.conftest import WEDNESDAY_NOON, Backend, forget_claims
from tests.helpers import (
    World,
    capped_subsidy_rulebook,
    discount,
    make_campaign,
    make_context,
    make_rule,
    make_rulebook,
    psycopg_url,
    subsidy,
)

CARD = "6217000000000001"
THREADS = 50


def setup(backend: Backend, rulebook: Rulebook, clock: FixedClock) -> tuple[EngineContext, Terminal]:
    world = World(backend.database)
    terminal_id = world.add_merchant("m-1")
    world.add_card(CARD)
    ctx = make_context(backend.database, backend.counters, rulebook, clock)
    terminal = ctx.terminal(terminal_id)
    assert terminal is not None
    return ctx, terminal


def swipe(ctx: EngineContext, terminal: Terminal, request_id: str, amount_fen: int = 10_000) -> dict[str, Any]:
    request = swipes.AuthorisationRequest(request_id, CARD, "m-1", amount_fen, ctx.clock.now())
    body = {"request_id": request_id, "amount_fen": amount_fen}
    response = swipes.authorise(ctx, terminal, request, json.dumps(body))
    return json.loads(response.body)  # type: ignore[no-any-return]


def ledger(backend: Backend) -> list[LedgerEntryRow]:
    with backend.database.sessions() as session:
        return list(session.execute(select(LedgerEntryRow)).scalars())


def in_parallel(count: int, work: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(work, range(count)))


def test_fifty_concurrent_swipes_against_a_cap_of_seven_subsidise_exactly_seven(any_backend: Backend, clock: FixedClock) -> None:
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(uses_max=7), clock)
    answers = in_parallel(THREADS, lambda index: swipe(ctx, terminal, f"req-{index}"))
    approved = [answer for answer in answers if answer["status"] == "approved"]
    assert len(approved) == 7
    assert all(answer["subsidy_fen"] == 1000 for answer in approved)
    assert {answer["decline_code"] for answer in answers if answer["status"] == "declined"} == {"no_benefit"}
    uses = {key: value for key, value in any_backend.counters.snapshot().items() if key.endswith(":uses")}
    assert list(uses.values()) == [7]
    assert len(ledger(any_backend)) == 7
    assert reconcile_counters(ctx) == []


def test_concurrent_swipes_never_spend_more_than_the_budget(any_backend: Backend, clock: FixedClock) -> None:
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(budget_fen=1000), clock)
    answers = in_parallel(THREADS, lambda index: swipe(ctx, terminal, f"req-{index}", amount_fen=1500))
    given_fen = sorted(answer["subsidy_fen"] for answer in answers if answer["status"] == "approved")
    assert sum(given_fen) == 1000
    assert given_fen == [100] + [150] * 6  # six whole benefits and the one that only partly fits
    assert any_backend.counters.snapshot() == {"campaign:city-dining:budget:fen": 1000}


def test_the_same_request_sent_twenty_times_at_once_is_recorded_once(any_backend: Backend, clock: FixedClock) -> None:
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(uses_max=7), clock)
    answers = in_parallel(20, lambda _index: swipe(ctx, terminal, "req-same"))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["status"] == "approved"
    assert len(ledger(any_backend)) == 1
    uses = {key: value for key, value in any_backend.counters.snapshot().items() if key.endswith(":uses")}
    assert list(uses.values()) == [1]


class _NoCounterStore:
    """Stands in for the counter store where a swipe must not touch it: any use but `transactional` fails."""

    def __init__(self, transactional: bool) -> None:
        self.transactional = transactional

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a swipe with nothing to reserve used the counter store ({name})")


def test_an_uncapped_swipe_calls_no_counter_store_and_its_repeats_are_still_recorded_once(
    any_backend: Backend, clock: FixedClock, monkeypatch: Any
) -> None:
    """With no cap or budget to reserve there is no counter store call, so no Redis claim either: the
    ledger's unique key alone keeps twenty simultaneous sends of one request to one record and one answer."""
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(), clock)
    monkeypatch.setattr(ctx, "counters", _NoCounterStore(ctx.counters.transactional))
    answers = in_parallel(20, lambda _index: swipe(ctx, terminal, "req-same"))
    assert all(answer == answers[0] for answer in answers)
    assert (answers[0]["status"], answers[0]["subsidy_fen"], answers[0]["payable_fen"]) == ("approved", 1000, 9000)
    assert len(ledger(any_backend)) == 1
    assert swipe(ctx, terminal, "req-other")["subsidy_fen"] == 1000  # a new request is a new swipe
    assert len(ledger(any_backend)) == 2
    monkeypatch.undo()
    assert any_backend.counters.snapshot() == {}
    assert reconcile_counters(ctx) == []


def test_an_uncapped_plan_run_in_process_gives_what_the_rules_say_and_explains_it(
    any_backend: Backend, clock: FixedClock, monkeypatch: Any
) -> None:
    """A fixed exclusive discount stops the percent discount after it; the subsidy applies to what is left."""
    fixed = make_rule("agreement-m-1", "five-yuan-off", discount(fixed_fen=500), priority=1, exclusive=True)
    percent = make_rule("agreement-m-1", "ten-percent-off", discount(percent_bp=1000), priority=2)
    city = make_rule("city-dining", "ten-percent", subsidy(percent_bp=1000))
    rulebook = make_rulebook(make_campaign("agreement-m-1", (fixed, percent), funders=()), make_campaign("city-dining", (city,)))
    ctx, terminal = setup(any_backend, rulebook, clock)
    monkeypatch.setattr(ctx, "counters", _NoCounterStore(ctx.counters.transactional))
    request = swipes.AuthorisationRequest("req-1", CARD, "m-1", 10_000, ctx.clock.now())
    body = json.loads(swipes.authorise(ctx, terminal, request, "req-1", explain=True).body)
    assert (body["discount_fen"], body["subsidy_fen"], body["payable_fen"]) == (500, 950, 8550)
    assert [(line["rule_id"], line["amount_fen"]) for line in body["benefits"]] == [("five-yuan-off", 500), ("ten-percent", 950)]
    assert [(line["rule_id"], line["outcome"], line["reason"], line["given_fen"]) for line in body["explanations"]] == [
        ("five-yuan-off", "applied", None, 500),
        ("ten-percent-off", "not_applied", "exclusive:agreement-m-1/five-yuan-off", 0),
        ("ten-percent", "applied", None, 950),
    ]


def test_concurrent_refunds_never_give_back_more_than_the_swipe(any_backend: Backend, clock: FixedClock) -> None:
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(fen_max=100_000), clock)
    auth = swipe(ctx, terminal, "req-1", amount_fen=10_000)

    def refund(index: int) -> int:
        try:
            swipes.adjust(ctx, terminal, auth["id"], "refund", f"rf-{index}", f"hash-{index}", 1_500)
        except swipes.Unprocessable:
            return 0
        return 1

    assert sum(in_parallel(20, refund)) == 6  # 6 × 1500 fits in 10000; a seventh would not
    entries = ledger(any_backend)
    assert sum(entry.amount_fen for entry in entries) == 1_000
    assert sum(entry.subsidy_fen for entry in entries) >= 0
    assert reconcile_counters(ctx) == []


def test_a_crash_before_the_ledger_commit_leaves_no_reservation_behind(any_backend: Backend, clock: FixedClock, monkeypatch: Any) -> None:
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(uses_max=7), clock)
    swipe(ctx, terminal, "req-1")
    before = any_backend.counters.snapshot()
    from pos_engine.store.db import DirectRepository, SqliteDirectRepository
    from pos_engine.store.repository import Repository

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(Repository, "record", crash)
    monkeypatch.setattr(DirectRepository, "record", crash)  # PostgreSQL + Redis: one statement on the driver
    monkeypatch.setattr(SqliteDirectRepository, "record", crash)  # SQLite: the swipe's transaction on the driver
    with pytest.raises(RuntimeError):
        swipe(ctx, terminal, "req-2")
    monkeypatch.undo()
    assert any_backend.counters.snapshot() == before
    assert len(ledger(any_backend)) == 1
    # The terminal's retry of the same request then goes through once.
    assert swipe(ctx, terminal, "req-2")["status"] == "approved"
    assert len(ledger(any_backend)) == 2
    assert reconcile_counters(ctx) == []


FAILURES = [RuntimeError("power cut"), OutcomeUnknown("answer lost"), SystemExit(1)]


@pytest.mark.parametrize("failure", FAILURES, ids=type)
@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_failed_swipe_with_nothing_to_reserve_leaves_the_request_claim_of_another_attempt_alone(
    backend: Backend, clock: FixedClock, monkeypatch: Any, failure: BaseException
) -> None:
    """An attempt that asked Redis for nothing drops no claim, whichever way its record fails: here another
    attempt, one that reserved caps under a rulebook with a cap and is still in flight, holds the request's claim."""
    from pos_engine.domain.evaluation import Swipe, plan_swipe
    from pos_engine.service.errors import AlreadyClaimed
    from pos_engine.service.ports import Claim
    from pos_engine.store.db import DirectRepository

    ctx, terminal = setup(backend, capped_subsidy_rulebook(), clock)
    claim = Claim(f"{terminal.terminal_id}:req-1", "the other attempt")
    capped = plan_swipe(capped_subsidy_rulebook(uses_max=7), Swipe(10_000, clock.now(), "m-1", "dining", "wujin", "card-1"))
    assert [counter.key for step in capped.steps for counter in step.counters]  # the other attempt's plan has a cap
    backend.counters.reserve(capped, claim=claim)

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise failure

    monkeypatch.setattr(DirectRepository, "record", crash)
    with pytest.raises(type(failure)):
        swipe(ctx, terminal, "req-1")
    monkeypatch.undo()
    with pytest.raises(AlreadyClaimed):
        backend.counters.reserve(capped, claim=Claim(claim.request, "a retry"))
    assert ledger(backend) == []


@pytest.mark.parametrize("failure", FAILURES, ids=type)
@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_failed_swipe_drops_the_claim_it_took_and_never_one_taken_since_by_another_attempt(
    backend: Backend, clock: FixedClock, monkeypatch: Any, failure: BaseException
) -> None:
    """A swipe's claim holds its would-be authorisation id; a failed record drops the claim while it is still
    that, and leaves it when another attempt holds it by then (this one's expired and was taken meanwhile)."""
    from pos_engine.store.db import DirectRepository

    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7), clock)
    client = backend.counters.client
    answer = swipe(ctx, terminal, "req-0")
    assert client.get(backend.counters._claim_key(f"{terminal.terminal_id}:req-0")) == answer["id"].encode()

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise failure

    monkeypatch.setattr(DirectRepository, "record", crash)
    with pytest.raises(type(failure)):
        swipe(ctx, terminal, "req-1")
    assert client.exists(backend.counters._claim_key(f"{terminal.terminal_id}:req-1")) == 0  # its own: dropped
    # ... but kept pending, for a rebuild to wait on, when the record may still commit (its caps stay taken too).
    pending = list(client.scan_iter(match=backend.counters._claim_key("pending:*")))
    assert len(pending) == (0 if isinstance(failure, RuntimeError) else 1)

    retaken = backend.counters._claim_key(f"{terminal.terminal_id}:req-2")

    def crash_after_another_attempt_took_the_claim(*_args: Any, **_kwargs: Any) -> None:
        assert client.get(retaken).startswith(b"au_")  # this attempt's own claim ...
        client.set(retaken, "another attempt")  # ... expires, and a retry claims the request
        raise failure

    monkeypatch.setattr(DirectRepository, "record", crash_after_another_attempt_took_the_claim)
    with pytest.raises(type(failure)):
        swipe(ctx, terminal, "req-2")
    assert client.get(retaken) == b"another attempt"
    monkeypatch.undo()
    assert len(ledger(backend)) == 1


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_swipe_whose_reservation_reply_is_lost_leaves_a_claim_it_did_not_take(
    backend: Backend, clock: FixedClock, monkeypatch: Any
) -> None:
    """The script found the request claimed by another attempt, and its reply was lost: the failing swipe must
    not drop that attempt's claim on its way out."""
    import redis

    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7), clock)
    client = backend.counters.client
    key = backend.counters._claim_key(f"{terminal.terminal_id}:req-1")

    def reply_lost(_keys: list[str], _args: list[str]) -> None:
        client.set(key, "another attempt")
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(backend.counters, "_run_reserve", reply_lost)
    with pytest.raises(redis.exceptions.TimeoutError):
        swipe(ctx, terminal, "req-1")
    assert client.get(key) == b"another attempt"
    monkeypatch.undo()
    assert ledger(backend) == []


@pytest.fixture
def quick_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis rebuild's settling pause, which outlasts a record in flight, cut short: nothing is in flight here."""
    monkeypatch.setattr(redis_counters, "REBUILD_SETTLE_S", 0.0)


def test_rebuild_after_wiping_the_counters_restores_exactly_the_state_before(
    backend: Backend, clock: FixedClock, quick_rebuild: None
) -> None:
    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7, budget_fen=50_000), clock)
    answers = [swipe(ctx, terminal, f"req-{index}", amount_fen=3_000 + index) for index in range(5)]
    swipes.adjust(ctx, terminal, answers[0]["id"], "reversal", "rev-0", "h-rev-0")
    swipes.adjust(ctx, terminal, answers[1]["id"], "refund", "rf-1", "h-rf-1", 1_234)
    clock.set(clock.now() + timedelta(days=1))
    swipe(ctx, terminal, "req-next-day")
    before = backend.counters.snapshot()
    assert before
    backend.counters.replace_all({})  # wipe: Redis flushed, or the SQL table emptied
    assert reconcile_counters(ctx)
    forget_claims(backend.counters)  # the terminals have been quiet for a claim's 30 s
    assert rebuild_counters(ctx) == len(before)
    assert backend.counters.snapshot() == before
    assert reconcile_counters(ctx) == []


def test_counters_of_a_period_that_is_over_are_neither_compared_nor_rebuilt(
    any_backend: Backend, clock: FixedClock, quick_rebuild: None
) -> None:
    """Once a day is over (and a day more, for late swipes) its counters cap nothing: reconcile passes over them,
    and rebuild drops them, so the store holds only what can still cap a swipe (Redis lets them expire besides)."""
    rule = make_rule(
        "city-dining",
        "ten-percent",
        subsidy(percent_bp=1000),
        limits=(Limit("card", "day", uses_max=5), Limit("card", "month", uses_max=50)),
    )
    ctx, terminal = setup(any_backend, make_rulebook(make_campaign("city-dining", (rule,), budget_fen=1_000_000)), clock)
    swipe(ctx, terminal, "req-1")
    stored = any_backend.counters.snapshot()
    (day,) = (key for key in stored if ":day:" in key)
    (month,) = (key for key in stored if ":month:" in key)
    assert stored == {day: 1, month: 1, "campaign:city-dining:budget:fen": 1000}
    if isinstance(any_backend.counters, redis_counters.RedisCounterStore):
        assert counters_service.expire_counters(ctx) == (0, 2)  # the day's and the month's; the budget lasts
        # Counted from the engine's clock, Wednesday noon in Shanghai: 12 h of the day, 24 h for late swipes, 1 h more.
        left_s = any_backend.counters.client.pttl(any_backend.counters._key(day)) / 1000
        assert 37 * 3600 - 60 < left_s <= 37 * 3600
    clock.set(clock.now() + timedelta(days=2))  # Wednesday's counters closed on Friday at midnight; the month is open
    assert swipe(ctx, terminal, "req-2")["subsidy_fen"] == 1000
    stored = any_backend.counters.snapshot()
    any_backend.counters.replace_all(stored | {day: 5})  # a counter that caps nothing any more: no difference
    assert reconcile_counters(ctx) == []
    any_backend.counters.replace_all(stored | {day: 5, month: 3})
    assert reconcile_counters(ctx) == [counters_service.CounterDifference(month, 2, 3)]
    forget_claims(any_backend.counters)
    assert rebuild_counters(ctx) == 3  # Friday's day counter, the month, the budget
    assert day not in any_backend.counters.snapshot()
    assert any_backend.counters.snapshot()[month] == 2
    assert reconcile_counters(ctx) == []


def test_a_rebuild_just_after_a_day_closed_keeps_its_counter_for_a_worker_whose_clock_is_behind(
    any_backend: Backend, clock: FixedClock, quick_rebuild: None
) -> None:
    """A till resends a swipe from just before midnight a day late, as the day closes; `counters rebuild` runs on
    a host whose clock is ahead of the worker's (or a swipe waits for the counters' lock meanwhile). The rebuild
    keeps the day's counter for the hour Redis would, so the late swipe still finds the cap used."""
    rule = make_rule("city-dining", "ten-percent", subsidy(percent_bp=1000), limits=(Limit("card", "day", uses_max=1),))
    ctx, terminal = setup(any_backend, make_rulebook(make_campaign("city-dining", (rule,))), clock)
    day_end = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)  # midnight in Shanghai, the end of 25 November
    closes = day_end + timedelta(seconds=OCCURRED_AT_BEHIND_S_MAX)

    def late_swipe(request_id: str) -> dict[str, Any]:
        request = swipes.AuthorisationRequest(request_id, CARD, "m-1", 10_000, day_end - timedelta(seconds=1))
        return json.loads(swipes.authorise(ctx, terminal, request, request_id).body)  # type: ignore[no-any-return]

    clock.set(closes - timedelta(seconds=10))
    assert late_swipe("req-1")["subsidy_fen"] == 1000
    assert late_swipe("req-2")["subsidy_fen"] == 0  # the day's cap of one use holds
    forget_claims(any_backend.counters)
    clock.set(closes + timedelta(minutes=59))  # the rebuild's host: the day closed 59 minutes ago by its clock
    rebuild_counters(ctx)
    clock.set(closes - timedelta(seconds=5))  # the worker: still inside the 24 h a swipe may be late
    assert late_swipe("req-3")["subsidy_fen"] == 0
    clock.set(closes + timedelta(minutes=61))
    forget_claims(any_backend.counters)
    rebuild_counters(ctx)  # an hour after the close, the counter goes
    assert not [key for key in any_backend.counters.snapshot() if ":day:" in key]


def test_expiring_counters_under_traffic_drops_only_those_of_periods_over_and_changes_no_value(
    any_backend: Backend, clock: FixedClock
) -> None:
    rule = make_rule("city-dining", "ten-percent", subsidy(percent_bp=1000), limits=(Limit("card", "day", uses_max=1),))
    ctx, terminal = setup(any_backend, make_rulebook(make_campaign("city-dining", (rule,), budget_fen=10**6)), clock)
    swipe(ctx, terminal, "req-wednesday")
    (wednesday,) = (key for key in any_backend.counters.snapshot() if ":day:" in key)
    clock.set(clock.now() + timedelta(days=1))
    swipe(ctx, terminal, "req-thursday")  # Wednesday's counter is still open on Thursday: a swipe may come 24 h late
    redis = isinstance(any_backend.counters, redis_counters.RedisCounterStore)
    assert counters_service.expire_counters(ctx) == (0, 2 if redis else 0)  # Redis: Wednesday's and Thursday's get a time to live
    wednesday_closed = WEDNESDAY_NOON + timedelta(hours=36)  # Friday 00:00 in Shanghai: Thursday's end, 24 h late
    clock.set(wednesday_closed + timedelta(minutes=59))  # kept an hour more, for clocks that disagree
    assert counters_service.expire_counters(ctx) == (0, 0)
    clock.set(WEDNESDAY_NOON + timedelta(days=2))
    # Redis lets a counter with a time to live expire by its own clock, which this test's does not move: a run that
    # reads every counter (as the first on a namespace does) drops it.
    answers = in_parallel(
        8, lambda index: swipe(ctx, terminal, f"req-friday-{index}") if index else counters_service.expire_counters(ctx, everything=True)
    )
    assert answers[0][0] == 1  # Wednesday's, closed at midnight and over an hour ago (and Friday's may get a time to live)
    assert sorted(answer["subsidy_fen"] for answer in answers[1:]) == [0] * 6 + [1000]  # Friday's cap of one use
    stored = any_backend.counters.snapshot()
    assert wednesday not in stored
    assert sorted(stored.values()) == [1, 1, 3000]  # Thursday's day (open until Saturday), Friday's, the budget
    assert reconcile_counters(ctx) == []


def _swipe_after_the_ledger_read(monkeypatch: pytest.MonkeyPatch, ctx: EngineContext, terminal: Terminal) -> list[dict[str, Any]]:
    """Make the next rebuild's ledger read be followed, before its write, by a swipe that reserves caps."""
    answers: list[dict[str, Any]] = []
    totals = counters_service._totals

    def read_then_swipe(deltas: Any) -> dict[str, int]:
        values = totals(deltas)
        if not answers:  # once
            answers.append(swipe(ctx, terminal, "req-during"))
        return values

    monkeypatch.setattr(counters_service, "_totals", read_then_swipe)
    return answers


def test_a_swipe_between_a_redis_rebuild_s_ledger_read_and_its_write_keeps_its_caps(
    pg_redis_backend: Backend, clock: FixedClock, quick_rebuild: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis is not in the ledger's transaction: the rebuild checks that no counter changed since it waited for quiet,
    and writes nothing if one did, rather than write the swipe's reservation over (a cap could then be passed)."""
    backend = pg_redis_backend
    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7, budget_fen=50_000), clock)
    for index in range(3):
        swipe(ctx, terminal, f"req-{index}")
    backend.counters.apply({"campaign:city-dining:budget:fen": 5})  # drift for the rebuild to mend
    forget_claims(backend.counters)
    during = _swipe_after_the_ledger_read(monkeypatch, ctx, terminal)
    with pytest.raises(CountersBusy, match="nothing was written"):
        rebuild_counters(ctx)
    assert during[0]["status"] == "approved"
    differences = reconcile_counters(ctx)
    assert [(d.key, d.stored_value - d.ledger_value) for d in differences] == [("campaign:city-dining:budget:fen", 5)]
    forget_claims(backend.counters)
    rebuild_counters(ctx)
    assert reconcile_counters(ctx) == []
    uses = {key: value for key, value in backend.counters.snapshot().items() if key.endswith(":uses")}
    assert list(uses.values()) == [4]


ADJUSTMENTS = {
    "refund": lambda ctx, terminal, answer: swipes.adjust(ctx, terminal, answer["id"], "refund", "rf-1", "h-rf-1", 10_000),
    "reversal": lambda ctx, terminal, answer: swipes.adjust(ctx, terminal, answer["id"], "reversal", "rev-1", "h-rev-1"),
    "void": lambda ctx, terminal, answer: swipes.reverse_request(ctx, terminal, "void-1", answer["request_id"], "h-void-1"),
}


@pytest.mark.parametrize("kind", sorted(ADJUSTMENTS))
def test_an_adjustment_committed_between_a_redis_rebuild_s_wait_and_its_ledger_read_is_not_given_back_twice(
    pg_redis_backend: Backend, clock: FixedClock, quick_rebuild: None, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A refund or reversal writes the ledger first and gives caps back in Redis after: its give-back, landing after
    the rebuild wrote the ledger's values (adjustment included), would count it twice. Its note, made before the
    commit, moves the change count, so the rebuild writes nothing; a rebuild that starts before the give-back waits."""
    backend = pg_redis_backend
    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7, budget_fen=50_000), clock)
    answers = [swipe(ctx, terminal, f"req-{index}") for index in range(3)]
    forget_claims(backend.counters)
    late: list[Callable[[], None]] = []
    give_back = swipes._give_back_after_commit
    monkeypatch.setattr(swipes, "_give_back_after_commit", lambda *args: late.append(lambda: give_back(*args)))
    monkeypatch.setattr(redis_counters, "COUNTERS_QUIET_WAIT_S_MAX", 0.1)
    wait = backend.counters.wait_until_quiet

    def wait_then_adjust() -> Any:
        mark = wait()
        ADJUSTMENTS[kind](ctx, terminal, answers[0])  # commits; its give-back waits
        return mark

    monkeypatch.setattr(backend.counters, "wait_until_quiet", wait_then_adjust)
    hold = backend.counters.hold_give_back
    ledger_at_note: list[int] = []
    monkeypatch.setattr(backend.counters, "hold_give_back", lambda token: (ledger_at_note.append(len(ledger(backend))), hold(token)))
    with pytest.raises(CountersBusy, match="nothing was written"):
        rebuild_counters(ctx)
    assert ledger_at_note == [3]  # the note came before the commit: no moment with the adjustment committed and un-noted
    assert len(ledger(backend)) == 4
    monkeypatch.setattr(backend.counters, "wait_until_quiet", wait)
    with pytest.raises(CountersBusy, match="did not go quiet"):  # committed, not yet given back: its note holds it off
        rebuild_counters(ctx)
    (land,) = late
    land()
    assert reconcile_counters(ctx) == []
    assert not backend.counters._claims_left()  # the give-back dropped its note


def test_a_redis_rebuild_under_traffic_writes_at_once_and_says_what_it_risks(
    pg_redis_backend: Backend, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--under-traffic` neither waits for claims to expire nor checks: the swipe meanwhile is lost from its counters."""
    backend = pg_redis_backend
    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7), clock)
    swipe(ctx, terminal, "req-0")  # its claim is still there: a waiting rebuild would wait
    during = _swipe_after_the_ledger_read(monkeypatch, ctx, terminal)
    assert rebuild_counters(ctx, under_traffic=True) == 1
    assert during[0]["status"] == "approved"
    assert [(d.ledger_value, d.stored_value) for d in reconcile_counters(ctx)] == [(2, 1)]


def test_reconcile_reports_a_planted_difference(backend: Backend, clock: FixedClock) -> None:
    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7), clock)
    swipe(ctx, terminal, "req-1")
    assert reconcile_counters(ctx) == []
    snapshot = backend.counters.snapshot()
    key = next(key for key in snapshot if key.endswith(":uses"))
    with backend.database.sessions() as session, session.begin():
        backend.counters.apply({key: 3, "planted:extra:fen": 5}, session)
    differences = {difference.key: difference for difference in reconcile_counters(ctx)}
    assert set(differences) == {key, "planted:extra:fen"}
    assert (differences[key].ledger_value, differences[key].stored_value) == (1, 4)
    assert (differences["planted:extra:fen"].ledger_value, differences["planted:extra:fen"].stored_value) == (0, 5)


refund_plans = st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amount_fen=st.integers(min_value=1, max_value=50_000), refund_percents=refund_plans)
def test_refunds_claw_back_pro_rata_never_go_negative_and_end_at_zero(
    tmp_path_factory: Any, clock: FixedClock, amount_fen: int, refund_percents: list[int]
) -> None:
    from pos_engine.store.db import Database
    from pos_engine.store.migrate import upgrade
    from pos_engine.store.sql_counters import SqlCounterStore

    url = f"sqlite:///{tmp_path_factory.mktemp('refunds')}/engine.sqlite3"
    upgrade(url)
    database = Database(url)
    backend = Backend("sqlite", database, SqlCounterStore(database), url)
    ctx, terminal = setup(backend, capped_subsidy_rulebook(fen_max=10**9), clock)
    auth = swipe(ctx, terminal, "req-1", amount_fen=amount_fen)
    if auth["status"] != "approved":
        assert auth["subsidy_fen"] == 0  # 10 % of under 10 fen rounds down to nothing
        database.dispose()
        return
    remaining = amount_fen
    subsidy_back = 0
    for index, percent in enumerate(refund_percents):
        refund_fen = max(1, remaining * percent // 100)
        if remaining == 0:
            break
        body = json.loads(swipes.adjust(ctx, terminal, auth["id"], "refund", f"rf-{index}", f"h-{index}", refund_fen).body)
        assert body["discount_fen"] + body["subsidy_fen"] + body["payable_fen"] == refund_fen
        assert min(body["discount_fen"], body["subsidy_fen"], body["payable_fen"]) >= 0
        remaining -= refund_fen
        # Pro rata on what was refunded so far: the funder gets back its exact share, rounded up.
        subsidy_back += body["subsidy_fen"]
        exact_times_amount = auth["subsidy_fen"] * (amount_fen - remaining)
        assert 0 <= subsidy_back * amount_fen - exact_times_amount < amount_fen
        totals = ledger(backend)
        assert sum(entry.subsidy_fen for entry in totals) >= 0
        assert sum(entry.payable_fen for entry in totals) >= 0
    if remaining:
        swipes.adjust(ctx, terminal, auth["id"], "reversal", "rev", "h-rev")
    entries = ledger(backend)
    assert sum(entry.amount_fen for entry in entries) == 0
    assert sum(entry.subsidy_fen for entry in entries) == 0
    assert sum(entry.payable_fen for entry in entries) == 0
    assert backend.counters.snapshot() == {}
    with database.sessions() as session:
        assert session.execute(select(func.count()).select_from(LedgerEntryRow)).scalar_one() == len(entries)
    database.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "pg_sql"])
def test_the_registry_version_moves_with_every_terminal_or_merchant_change_and_only_then(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    from sqlalchemy import delete, text, update

    from pos_engine.store.db import SqlRegistry
    from pos_engine.store.models import MerchantRow, TerminalRow
    from tests.conftest import open_backend

    with open_backend(kind, request, tmp_path) as backend:
        database = backend.database
        registry = SqlRegistry(database)
        seen: list[str | None] = [registry.fingerprint()]

        def moved() -> bool:
            version = registry.fingerprint()
            is_new = version not in seen
            seen.append(version)
            return is_new

        world = World(database)
        world.add_merchant("m-1")  # a merchant and its terminal
        assert moved()
        assert not moved()  # nothing changed: the same version
        world.add_card()  # cards and members are not the registry
        assert not moved()
        with database.sessions() as session, session.begin():
            session.execute(update(MerchantRow).where(MerchantRow.merchant_id == "m-1").values(status="suspended"))
        assert moved()
        with database.sessions() as session, session.begin():
            session.execute(update(TerminalRow).where(TerminalRow.terminal_id == "t-m-1").values(secret="rotated"))
        assert moved()
        with database.sessions() as session, session.begin():
            session.execute(update(TerminalRow).where(TerminalRow.terminal_id == "t-m-1").values(status="inactive"))
            session.rollback()  # a change rolled back is no change
        assert not moved()
        with database.sessions() as session, session.begin():
            session.execute(delete(TerminalRow))
        assert moved()
        with database.sessions() as session, session.begin():
            session.execute(delete(MerchantRow))
        assert moved()
        if database.is_postgresql:
            world.add_merchant("m-2")
            assert moved()
            with database.engine.begin() as connection:
                connection.execute(text("TRUNCATE terminals"))
            assert moved()
        assert None not in seen


def test_read_gives_stored_values_and_zero_for_keys_never_written(backend: Backend, clock: FixedClock) -> None:
    ctx, terminal = setup(backend, capped_subsidy_rulebook(uses_max=7), clock)
    swipe(ctx, terminal, "req-1")
    snapshot = backend.counters.snapshot()
    assert backend.counters.read([*snapshot, "never:written:fen"]) == {**snapshot, "never:written:fen": 0}


@pytest.mark.parametrize("any_backend", ["pg_redis", "pg_sql"], indirect=True)
def test_swipes_and_refunds_cancelled_by_the_statement_limit_and_retried_never_break_a_cap(
    any_backend: Backend, clock: FixedClock, request: pytest.FixtureRequest
) -> None:
    """Another session keeps taking the lock every record needs for longer than a (short) statement limit:
    PostgreSQL cancels records in every state (counters reserved, rows half inserted) and the tills retry
    until they get an answer. Caps hold, each request is recorded once, and the counters agree with the ledger."""
    import threading
    import time

    import psycopg

    from pos_engine.api.errors import DEPENDENCY_ERRORS
    from pos_engine.store.db import Database
    from pos_engine.store.sql_counters import SqlCounterStore

    hurried = Database(any_backend.url, statement_timeout_ms=50)
    request.addfinalizer(hurried.dispose)  # after the replays at the end
    counters = SqlCounterStore(hurried) if any_backend.name == "pg_sql" else any_backend.counters
    ctx, terminal = setup(any_backend, capped_subsidy_rulebook(uses_max=7), clock)
    ctx = make_context(hurried, counters, ctx.rulebook, clock)
    cancelled = {"swipe": 0, "refund": 0}
    locked, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with psycopg.connect(psycopg_url(any_backend.url)) as holder:
            while not done.is_set():
                holder.execute("LOCK TABLE idempotency_records IN EXCLUSIVE MODE")  # every record's insert waits
                locked.set()
                time.sleep(0.12)
                holder.rollback()
                time.sleep(0.03)

    def until_answered(kind: str, call: Callable[[], Any]) -> Any:
        for _attempt in range(500):
            try:
                return call()
            except DEPENDENCY_ERRORS:
                cancelled[kind] += 1
                time.sleep(0.01)
        raise AssertionError("never answered")

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    try:
        assert locked.wait(10)
        answers = in_parallel(THREADS, lambda index: until_answered("swipe", lambda: swipe(ctx, terminal, f"req-{index}")))
        approved = [answer for answer in answers if answer["status"] == "approved"]
        auth = approved[0]

        def refund(index: int) -> int:
            adjust = lambda: swipes.adjust(ctx, terminal, auth["id"], "refund", f"rf-{index}", f"hash-{index}", 1_500)  # noqa: E731
            try:
                until_answered("refund", adjust)
            except swipes.Unprocessable:
                return 0
            return 1

        locked.clear()
        assert locked.wait(10)
        refunded = sum(in_parallel(10, refund))
    finally:
        done.set()
        holder.join()
    # Else the test proved nothing.
    assert cancelled["swipe"] > 0, "no swipe was cancelled"
    assert cancelled["refund"] > 0, "no refund was cancelled"
    assert len(approved) == 7
    assert {answer["decline_code"] for answer in answers if answer["status"] == "declined"} == {"no_benefit"}
    assert refunded == 6  # 6 × 1,500 fen fits in the swipe's 10,000; a seventh would not
    entries = ledger(any_backend)
    assert len([entry for entry in entries if entry.kind == "authorisation"]) == 7
    assert sum(entry.amount_fen for entry in entries if entry.authorisation_id == auth["id"]) == 10_000 - 1_500 * 6
    uses = {key: value for key, value in any_backend.counters.snapshot().items() if key.endswith(":uses")}
    assert list(uses.values()) == [7]
    assert reconcile_counters(make_context(any_backend.database, any_backend.counters, ctx.rulebook, clock)) == []
    for index, answer in enumerate(answers):  # each request was recorded once: a repeat replays its answer
        assert swipe(ctx, terminal, f"req-{index}") == answer
