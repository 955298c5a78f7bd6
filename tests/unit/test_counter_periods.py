"""When a counter's period is over: the day, week, month or year named in its key, in Asia/Shanghai."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pos_engine.domain.clock import SHANGHAI, local, period_end, period_key
from pos_engine.domain.evaluation import Swipe, plan_swipe
from pos_engine.domain.rulebook import Limit
from pos_engine.limits import OCCURRED_AT_BEHIND_S_MAX
from pos_engine.service.counters import counter_closes_at
from tests.helpers import make_campaign, make_rule, make_rulebook, subsidy

LATE = timedelta(seconds=OCCURRED_AT_BEHIND_S_MAX)
PERIOD_LENGTH_MAX = {"day": timedelta(days=1), "week": timedelta(weeks=1), "month": timedelta(days=31), "year": timedelta(days=366)}


def shanghai(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=SHANGHAI)  # type: ignore[misc]


def keys_of_a_swipe(at: datetime) -> dict[str, str]:
    """The counter keys a swipe at `at` counts on, by the period they name: the rule's caps per card and per
    merchant, the campaign's per card, and the budget."""
    periods = ("day", "week", "month", "year", "campaign")
    rule = make_rule(benefit=subsidy(percent_bp=1000), limits=tuple(Limit("card", period, uses_max=9) for period in periods))
    campaign = make_campaign(rules=(rule,), budget_fen=10**6, limits=(Limit("merchant", "month", fen_max=10**6),))
    plan = plan_swipe(make_rulebook(campaign), Swipe(10_000, at, "m-1", "dining", "wujin", "card:with:colons"))
    (step,) = plan.steps
    return {counter.label: counter.key for counter in step.counters}


def test_the_keys_a_swipe_counts_on_close_a_day_after_their_period_ends() -> None:
    at = shanghai(2026, 12, 31, 23, 59, 59)  # the last second of a Thursday, of ISO week 53, of December, of 2026
    closes = {label: counter_closes_at(key) for label, key in keys_of_a_swipe(at).items()}
    assert closes == {
        "rule/card/day/uses": shanghai(2027, 1, 1) + LATE,
        "rule/card/week/uses": shanghai(2027, 1, 4) + LATE,  # 2026-W53 ends on Monday 4 January
        "rule/card/month/uses": shanghai(2027, 1, 1) + LATE,
        "rule/card/year/uses": shanghai(2027, 1, 1) + LATE,
        "rule/card/campaign/uses": None,  # the campaign's whole run
        "campaign/merchant/month/fen": shanghai(2027, 1, 1) + LATE,
        "campaign/budget/fen": None,
    }
    next_second = {label: counter_closes_at(key) for label, key in keys_of_a_swipe(at + timedelta(seconds=1)).items()}
    assert next_second["rule/card/day/uses"] == shanghai(2027, 1, 2) + LATE
    assert next_second["rule/card/week/uses"] == shanghai(2027, 1, 4) + LATE
    assert next_second["rule/card/year/uses"] == shanghai(2028, 1, 1) + LATE


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_a_moment_s_period_ends_after_it_within_the_period_s_length_and_the_end_begins_the_next(at: datetime) -> None:
    at_local = local(at)
    for period, length in PERIOD_LENGTH_MAX.items():
        key = period_key(at_local, period)
        end = period_end(period, key)
        assert end is not None
        assert at < end <= at + length
        assert period_key(local(end), period) != key
        assert period_key(local(end - timedelta(microseconds=1)), period) == key


@pytest.mark.parametrize(
    "key",
    [
        "campaign:c1:budget:fen",
        "campaign:day:budget:fen",  # a campaign named "day"
        "rule:r1:card:C1:day:2026-13-01:uses",
        "rule:r1:card:C1:day:2026-1-05:uses",
        "rule:r1:card:C1:week:2026-W54:uses",
        "rule:r1:card:C1:month:2026-00:fen",
        "rule:r1:card:C1:year:+202:fen",
        "rule:r1:card:C1:fortnight:2026-12-05:uses",
        "short:key",
    ],
)
def test_a_key_that_names_no_period_never_closes(key: str) -> None:
    assert counter_closes_at(key) is None
