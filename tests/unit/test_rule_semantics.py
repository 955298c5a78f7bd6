"""Rule semantics, pinned in ARCHITECTURE.md, through plan_swipe / execute_plan / decide.

Rulebooks are built from the domain dataclasses here (one test per kind of
condition, order and limit), plus Hypothesis properties over random
rulebooks and swipes, and one over random YAML spellings of a rule.
"""

from __future__ import annotations

import dataclasses
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pos_engine.domain.clock import SHANGHAI
from pos_engine.domain.evaluation import (
    DECLINE_NO_BENEFIT,
    CounterRef,
    Decision,
    Swipe,
    decide,
    execute_plan,
    plan_swipe,
)
from pos_engine.domain.rulebook import (
    CATEGORIES,
    DISTRICTS,
    WEEKDAYS,
    Benefit,
    Campaign,
    Conditions,
    Limit,
    Rule,
    Rulebook,
)
from pos_engine.rules_loader import load_rulebook

WEDNESDAY_NOON = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)


def make_rule(
    rule_id: str = "r",
    *,
    kind: str = "subsidy",
    percent_bp: int | None = 1000,
    fixed_fen: int | None = None,
    amount_fen_max: int | None = None,
    priority: int = 100,
    exclusive: bool = False,
    limits: tuple[Limit, ...] = (),
    **conditions: Any,
) -> Rule:
    """A rule of campaign 'c' (make_campaign sets the real one): 10 % subsidy unless told otherwise."""
    if fixed_fen is not None:
        percent_bp = None
    benefit = Benefit(kind, percent_bp=percent_bp, amount_fen_max=amount_fen_max, fixed_fen=fixed_fen)  # type: ignore[arg-type]
    return Rule("c", rule_id, benefit, Conditions(**conditions), priority, exclusive, limits)


def make_campaign(
    campaign_id: str = "c",
    *rules: Rule,
    valid_from: date = date(2026, 1, 1),
    valid_until: date = date(2027, 12, 31),
    budget_fen: int | None = None,
    limits: tuple[Limit, ...] = (),
) -> Campaign:
    return Campaign(
        campaign_id=campaign_id,
        name=campaign_id,
        valid_from=valid_from,
        valid_until=valid_until,
        rules=tuple(dataclasses.replace(rule, campaign_id=campaign_id) for rule in rules),
        budget_fen=budget_fen,
        limits=limits,
    )


def make_rulebook(*campaigns: Campaign) -> Rulebook:
    return Rulebook("test", campaigns)


def only(*rules: Rule, **campaign_options: Any) -> Rulebook:
    """A rulebook of one campaign 'c' holding `rules`."""
    return make_rulebook(make_campaign("c", *rules, **campaign_options))


def make_swipe(**overrides: Any) -> Swipe:
    values: dict[str, Any] = {
        "amount_fen": 10000,
        "occurred_at": WEDNESDAY_NOON,
        "merchant_id": "m-wujin-dining-001",
        "category": "dining",
        "district": "wujin",
        "card_ref": "card-1",
        "member_groups": frozenset(),
    }
    values.update(overrides)
    return Swipe(**values)


def run(rulebook: Rulebook, swipe: Swipe, counters: dict[str, int] | None = None) -> Decision:
    """Plan, reserve against `counters` (fresh if not given) and decide, with explanations."""
    plan = plan_swipe(rulebook, swipe)
    outcomes = execute_plan(plan, {} if counters is None else counters)
    return decide(plan, outcomes, rulebook.version, with_explanations=True)


def benefits(decision: Decision) -> list[tuple[str, str, int]]:
    return [(line.rule_id, line.kind, line.amount_fen) for line in decision.benefits]


def why(decision: Decision, rule_id: str) -> tuple[str, str | None]:
    (line,) = [line for line in decision.explanations if line.rule_id == rule_id]
    return line.outcome, line.reason


def applies(rulebook: Rulebook, **swipe: Any) -> bool:
    return run(rulebook, make_swipe(**swipe)).status == "approved"


# -- conditions --------------------------------------------------------------------------


def test_a_category_condition_matches_only_its_categories() -> None:
    rulebook = only(make_rule(categories=frozenset({"dining", "lodging"})))

    assert applies(rulebook, category="dining")
    assert applies(rulebook, category="lodging")
    assert not applies(rulebook, category="shopping")


def test_a_merchant_condition_matches_only_its_merchants() -> None:
    rulebook = only(make_rule(merchant_ids=frozenset({"m-wujin-dining-001"})))

    assert applies(rulebook, merchant_id="m-wujin-dining-001")
    assert not applies(rulebook, merchant_id="m-wujin-dining-002")


def test_a_merchant_rule_still_checks_its_other_conditions() -> None:
    rulebook = only(make_rule(merchant_ids=frozenset({"m-wujin-dining-001"}), categories=frozenset({"shopping"})))

    decision = run(rulebook, make_swipe())

    assert decision.status == "declined"
    assert why(decision, "r") == ("not_applied", "condition:categories")


def test_a_district_condition_matches_only_its_districts() -> None:
    rulebook = only(make_rule(districts=frozenset({"wujin"})))

    assert applies(rulebook, district="wujin")
    assert not applies(rulebook, district="xinbei")


def test_a_member_group_condition_needs_the_member_in_one_of_the_groups() -> None:
    rulebook = only(make_rule(member_groups=frozenset({"model_worker", "hardship"})))

    assert applies(rulebook, member_groups=frozenset({"hardship"}))
    assert applies(rulebook, member_groups=frozenset({"model_worker", "retired"}))
    assert not applies(rulebook, member_groups=frozenset({"retired"}))
    assert not applies(rulebook, member_groups=frozenset())


def test_weekdays_are_read_in_asia_shanghai_not_utc() -> None:
    rulebook = only(make_rule(weekdays=frozenset({WEEKDAYS.index("wed")})))

    # 20:00 UTC on Tuesday is 04:00 on Wednesday in Changzhou, and the other way round.
    assert applies(rulebook, occurred_at=datetime(2026, 11, 24, 20, 0, tzinfo=UTC))
    assert not applies(rulebook, occurred_at=datetime(2026, 11, 25, 16, 0, tzinfo=UTC))
    assert not applies(rulebook, occurred_at=datetime(2026, 11, 24, 15, 59, tzinfo=UTC))


def test_time_of_day_is_a_half_open_window_in_asia_shanghai() -> None:
    rulebook = only(make_rule(time_from=time(11, 0), time_until=time(14, 0)))

    def at(hour: int, minute: int) -> datetime:
        return datetime(2026, 11, 25, hour, minute, tzinfo=SHANGHAI)

    assert not applies(rulebook, occurred_at=at(10, 59))
    assert applies(rulebook, occurred_at=at(11, 0))
    assert applies(rulebook, occurred_at=at(13, 59))
    assert not applies(rulebook, occurred_at=at(14, 0))
    assert applies(rulebook, occurred_at=datetime(2026, 11, 25, 3, 30, tzinfo=UTC))  # 11:30 in Changzhou
    assert not applies(rulebook, occurred_at=datetime(2026, 11, 25, 11, 30, tzinfo=UTC))  # 19:30 in Changzhou


def test_a_time_window_open_at_the_end_runs_to_midnight() -> None:
    rulebook = only(make_rule(time_from=time(18, 0)))

    assert applies(rulebook, occurred_at=datetime(2026, 11, 25, 23, 59, tzinfo=SHANGHAI))
    assert not applies(rulebook, occurred_at=datetime(2026, 11, 25, 17, 59, tzinfo=SHANGHAI))


def test_a_date_range_is_inclusive_and_read_in_asia_shanghai() -> None:
    rulebook = only(make_rule(date_from=date(2026, 12, 1), date_until=date(2026, 12, 31)))

    assert not applies(rulebook, occurred_at=datetime(2026, 11, 30, 15, 59, tzinfo=UTC))  # 23:59 on 30 Nov
    assert applies(rulebook, occurred_at=datetime(2026, 11, 30, 16, 0, tzinfo=UTC))  # 00:00 on 1 Dec
    assert applies(rulebook, occurred_at=datetime(2026, 12, 31, 15, 59, tzinfo=UTC))  # 23:59 on 31 Dec
    assert not applies(rulebook, occurred_at=datetime(2026, 12, 31, 16, 0, tzinfo=UTC))  # 00:00 on 1 Jan


def test_a_minimum_amount_is_inclusive() -> None:
    rulebook = only(make_rule(amount_fen_min=2000))

    assert applies(rulebook, amount_fen=2000)
    assert not applies(rulebook, amount_fen=1999)


def test_a_campaign_applies_only_within_its_validity_window_in_asia_shanghai() -> None:
    rulebook = only(make_rule(), valid_from=date(2026, 11, 25), valid_until=date(2026, 11, 25))

    assert applies(rulebook, occurred_at=datetime(2026, 11, 24, 16, 0, tzinfo=UTC))  # 00:00 on 25 Nov
    assert applies(rulebook, occurred_at=datetime(2026, 11, 25, 23, 59, tzinfo=SHANGHAI))
    decision = run(rulebook, make_swipe(occurred_at=datetime(2026, 11, 25, 16, 0, tzinfo=UTC)))  # 00:00 on 26 Nov
    assert decision.status == "declined"
    assert why(decision, "r") == ("not_applied", "condition:campaign_validity")


@pytest.mark.parametrize(
    ("conditions", "swipe", "condition"),
    [
        ({"categories": frozenset({"lodging"})}, {}, None),
        ({"merchant_ids": frozenset({"m-wujin-dining-001"})}, {"merchant_id": "m-wujin-dining-002"}, None),
        ({"districts": frozenset({"jintan"}), "categories": frozenset({"dining"})}, {}, None),
        ({"member_groups": frozenset({"hardship"})}, {}, "member_groups"),
        ({"weekdays": frozenset({5, 6})}, {}, "weekdays"),
        ({"time_from": time(18, 0)}, {}, "time_of_day"),
        ({"date_until": date(2026, 11, 24)}, {}, "dates"),
        ({"amount_fen_min": 20000}, {}, "amount_fen_min"),
    ],
    ids=["category", "merchant", "district", "member group", "weekday", "time of day", "date", "minimum amount"],
)
def test_a_rule_that_does_not_match_is_explained_by_its_condition_or_not_looked_at(
    conditions: dict[str, Any], swipe: dict[str, Any], condition: str | None
) -> None:
    rulebook = only(make_rule(**conditions))

    decision = run(rulebook, make_swipe(**swipe))

    assert decision.status == "declined"
    if condition is None:
        # Not indexed for this merchant, category or district: never looked at, so never explained.
        assert decision.explanations == ()
    else:
        assert why(decision, "r") == ("not_applied", f"condition:{condition}")


# -- order and arithmetic ----------------------------------------------------------------


def test_discounts_apply_before_subsidies_whatever_their_priority() -> None:
    rulebook = only(
        make_rule("subsidy-first-by-priority", priority=1),
        make_rule("discount", kind="discount", fixed_fen=1000, priority=999),
    )

    decision = run(rulebook, make_swipe())

    assert benefits(decision) == [("discount", "discount", 1000), ("subsidy-first-by-priority", "subsidy", 900)]
    assert (decision.discount_fen, decision.subsidy_fen, decision.payable_fen) == (1000, 900, 8100)


def test_each_benefit_applies_to_the_amount_still_payable() -> None:
    rulebook = only(make_rule("a"), make_rule("b"), make_rule("c", kind="discount", percent_bp=2000))

    assert benefits(run(rulebook, make_swipe())) == [("c", "discount", 2000), ("a", "subsidy", 800), ("b", "subsidy", 720)]


def test_a_lower_priority_number_runs_first() -> None:
    rulebook = only(make_rule("late", fixed_fen=800, priority=20), make_rule("early", fixed_fen=800, priority=10))

    assert benefits(run(rulebook, make_swipe(amount_fen=1000))) == [("early", "subsidy", 800), ("late", "subsidy", 200)]


def test_equal_priorities_are_ordered_by_campaign_id_then_rule_id() -> None:
    rulebook = make_rulebook(
        make_campaign("b-campaign", make_rule("a-rule", fixed_fen=400)),
        make_campaign("a-campaign", make_rule("z-rule", fixed_fen=400), make_rule("y-rule", fixed_fen=400)),
    )

    decision = run(rulebook, make_swipe(amount_fen=1000))

    assert [(line.campaign_id, line.rule_id, line.amount_fen) for line in decision.benefits] == [
        ("a-campaign", "y-rule", 400),
        ("a-campaign", "z-rule", 400),
        ("b-campaign", "a-rule", 200),
    ]


def test_percentages_round_down_to_the_fen() -> None:
    assert benefits(run(only(make_rule(percent_bp=1000)), make_swipe(amount_fen=999))) == [("r", "subsidy", 99)]
    assert benefits(run(only(make_rule(percent_bp=3333)), make_swipe(amount_fen=100))) == [("r", "subsidy", 33)]
    assert run(only(make_rule(percent_bp=1000)), make_swipe(amount_fen=9)).status == "declined"


def test_a_percent_stops_at_its_maximum() -> None:
    rulebook = only(make_rule(percent_bp=1000, amount_fen_max=500))

    assert benefits(run(rulebook, make_swipe(amount_fen=4000))) == [("r", "subsidy", 400)]
    assert benefits(run(rulebook, make_swipe(amount_fen=50000))) == [("r", "subsidy", 500)]


def test_a_fixed_amount_larger_than_what_is_payable_gives_what_is_payable() -> None:
    rulebook = only(make_rule("big", fixed_fen=5000, priority=1), make_rule("after", priority=2))

    decision = run(rulebook, make_swipe(amount_fen=3000))

    assert benefits(decision) == [("big", "subsidy", 3000)]
    assert decision.payable_fen == 0
    assert why(decision, "after") == ("not_applied", "zero_benefit")


def test_payable_never_goes_below_zero() -> None:
    rulebook = only(make_rule("discount", kind="discount", fixed_fen=8000), make_rule("subsidy", fixed_fen=8000))

    decision = run(rulebook, make_swipe(amount_fen=10000))

    assert (decision.discount_fen, decision.subsidy_fen, decision.payable_fen) == (8000, 2000, 0)


# -- exclusive ---------------------------------------------------------------------------


def test_an_exclusive_rule_stops_later_rules_of_its_kind_only() -> None:
    rulebook = only(
        make_rule("first", kind="discount", percent_bp=500, exclusive=True, priority=1),
        make_rule("second", kind="discount", percent_bp=500, priority=2),
        make_rule("subsidy"),
    )

    decision = run(rulebook, make_swipe())

    assert benefits(decision) == [("first", "discount", 500), ("subsidy", "subsidy", 950)]
    assert why(decision, "second") == ("not_applied", "exclusive:c/first")


def test_an_exclusive_rule_does_not_stop_rules_that_ran_before_it() -> None:
    rulebook = only(
        make_rule("earlier", priority=1),
        make_rule("exclusive", exclusive=True, priority=2),
        make_rule("later", priority=3),
    )

    assert [rule_id for rule_id, _, _ in benefits(run(rulebook, make_swipe()))] == ["earlier", "exclusive"]


def test_an_exclusive_subsidy_does_not_stop_discounts() -> None:
    rulebook = only(make_rule("exclusive", exclusive=True, priority=1), make_rule("discount", kind="discount", priority=500))

    assert benefits(run(rulebook, make_swipe())) == [("discount", "discount", 1000), ("exclusive", "subsidy", 900)]


def test_an_exclusive_rule_that_gives_nothing_stops_nothing() -> None:
    capped = make_rule("exclusive", kind="discount", exclusive=True, priority=1, limits=(Limit("card", "day", uses_max=1),))
    rulebook = only(capped, make_rule("next", kind="discount", priority=2))
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(), counters)

    decision = run(rulebook, make_swipe(), counters)

    assert benefits(decision) == [("next", "discount", 1000)]
    assert why(decision, "exclusive") == ("not_applied", "rule/card/day/uses")


# -- limits ------------------------------------------------------------------------------

# For each period: a later moment in the same period, and the first moment of the next (Asia/Shanghai).
PERIOD_MOMENTS = {
    "day": (datetime(2026, 11, 25, 23, 59, tzinfo=SHANGHAI), datetime(2026, 11, 26, 0, 0, tzinfo=SHANGHAI)),
    "week": (datetime(2026, 11, 29, 23, 59, tzinfo=SHANGHAI), datetime(2026, 11, 30, 0, 0, tzinfo=SHANGHAI)),
    "month": (datetime(2026, 11, 30, 23, 59, tzinfo=SHANGHAI), datetime(2026, 12, 1, 0, 0, tzinfo=SHANGHAI)),
    "year": (datetime(2026, 12, 31, 23, 59, tzinfo=SHANGHAI), datetime(2027, 1, 1, 0, 0, tzinfo=SHANGHAI)),
    "campaign": (datetime(2027, 12, 31, 23, 59, tzinfo=SHANGHAI), None),
}


@pytest.mark.parametrize("period", list(PERIOD_MOMENTS))
def test_a_per_card_use_limit_holds_within_its_period_and_resets_after(period: str) -> None:
    rulebook = only(make_rule(limits=(Limit("card", period, uses_max=1),)))  # type: ignore[arg-type]
    same_period, next_period = PERIOD_MOMENTS[period]
    counters: dict[str, int] = {}

    first = run(rulebook, make_swipe(), counters)
    again = run(rulebook, make_swipe(occurred_at=same_period), counters)

    assert benefits(first) == [("r", "subsidy", 1000)]
    assert again.status == "declined"
    assert why(again, "r") == ("not_applied", f"rule/card/{period}/uses")
    if next_period is not None:
        assert benefits(run(rulebook, make_swipe(occurred_at=next_period), counters)) == [("r", "subsidy", 1000)]


@pytest.mark.parametrize("period", list(PERIOD_MOMENTS))
def test_a_per_card_fen_limit_holds_within_its_period_and_resets_after(period: str) -> None:
    rulebook = only(make_rule(limits=(Limit("card", period, fen_max=1500),)))  # type: ignore[arg-type]
    same_period, next_period = PERIOD_MOMENTS[period]
    counters: dict[str, int] = {}

    first = run(rulebook, make_swipe(), counters)
    partly = run(rulebook, make_swipe(occurred_at=same_period), counters)
    nothing = run(rulebook, make_swipe(occurred_at=same_period), counters)

    assert benefits(first) == [("r", "subsidy", 1000)]
    assert benefits(partly) == [("r", "subsidy", 500)]
    assert why(partly, "r") == ("partly_applied", f"rule/card/{period}/fen")
    assert why(nothing, "r") == ("not_applied", f"rule/card/{period}/fen")
    if next_period is not None:
        assert benefits(run(rulebook, make_swipe(occurred_at=next_period), counters)) == [("r", "subsidy", 1000)]


@pytest.mark.parametrize("period", list(PERIOD_MOMENTS))
def test_a_per_merchant_fen_limit_is_shared_by_every_card_at_that_merchant(period: str) -> None:
    rulebook = only(make_rule(limits=(Limit("merchant", period, fen_max=1500),)))  # type: ignore[arg-type]
    same_period, next_period = PERIOD_MOMENTS[period]
    counters: dict[str, int] = {}

    first = run(rulebook, make_swipe(card_ref="card-1"), counters)
    second = run(rulebook, make_swipe(card_ref="card-2", occurred_at=same_period), counters)
    elsewhere = run(rulebook, make_swipe(card_ref="card-2", merchant_id="m-wujin-dining-002", occurred_at=same_period), counters)

    assert benefits(first) == [("r", "subsidy", 1000)]
    assert benefits(second) == [("r", "subsidy", 500)]
    assert why(second, "r") == ("partly_applied", f"rule/merchant/{period}/fen")
    assert benefits(elsewhere) == [("r", "subsidy", 1000)]
    if next_period is not None:
        assert benefits(run(rulebook, make_swipe(card_ref="card-3", occurred_at=next_period), counters)) == [("r", "subsidy", 1000)]


def test_the_week_starts_on_monday_in_asia_shanghai() -> None:
    rulebook = only(make_rule(limits=(Limit("card", "week", uses_max=1),)))
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(occurred_at=datetime(2026, 11, 23, 0, 0, tzinfo=SHANGHAI)), counters)  # Monday 00:00

    sunday_night_utc_monday_in_changzhou = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    sunday_late_in_changzhou = datetime(2026, 11, 29, 15, 59, tzinfo=UTC)

    assert run(rulebook, make_swipe(occurred_at=sunday_late_in_changzhou), counters).status == "declined"
    assert run(rulebook, make_swipe(occurred_at=sunday_night_utc_monday_in_changzhou), counters).status == "approved"


def test_iso_weeks_cross_the_new_year() -> None:
    rulebook = only(make_rule(limits=(Limit("card", "week", uses_max=1),)))
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(occurred_at=datetime(2026, 12, 28, 12, 0, tzinfo=SHANGHAI)), counters)  # Monday of 2026-W53

    assert run(rulebook, make_swipe(occurred_at=datetime(2027, 1, 3, 12, 0, tzinfo=SHANGHAI)), counters).status == "declined"
    assert run(rulebook, make_swipe(occurred_at=datetime(2027, 1, 4, 12, 0, tzinfo=SHANGHAI)), counters).status == "approved"


def test_a_per_card_limit_is_counted_per_card() -> None:
    rulebook = only(make_rule(limits=(Limit("card", "day", uses_max=1),)))
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(card_ref="card-1"), counters)

    assert run(rulebook, make_swipe(card_ref="card-1"), counters).status == "declined"
    assert run(rulebook, make_swipe(card_ref="card-2"), counters).status == "approved"


def test_the_campaign_budget_is_shared_by_every_card_and_rule() -> None:
    rulebook = only(make_rule("a"), make_rule("b", kind="discount", fixed_fen=100), budget_fen=2500)
    counters: dict[str, int] = {}

    decisions = [run(rulebook, make_swipe(card_ref=f"card-{n}"), counters) for n in range(3)]

    assert [benefits(decision) for decision in decisions] == [
        [("b", "discount", 100), ("a", "subsidy", 990)],
        [("b", "discount", 100), ("a", "subsidy", 990)],
        [("b", "discount", 100), ("a", "subsidy", 220)],
    ]
    assert why(decisions[2], "a") == ("partly_applied", "campaign/budget/fen")
    assert run(rulebook, make_swipe(card_ref="card-9"), counters).status == "declined"


def test_campaign_limits_are_shared_by_all_its_rules() -> None:
    rulebook = only(make_rule("a"), make_rule("b"), limits=(Limit("card", "month", fen_max=1500),))

    decision = run(rulebook, make_swipe())

    assert benefits(decision) == [("a", "subsidy", 1000), ("b", "subsidy", 500)]
    assert why(decision, "b") == ("partly_applied", "campaign/card/month/fen")


def test_a_campaign_use_limit_counts_a_use_for_each_rule_that_gives() -> None:
    rulebook = only(make_rule("a"), make_rule("b"), make_rule("c"), limits=(Limit("card", "day", uses_max=2),))
    counters: dict[str, int] = {}

    decision = run(rulebook, make_swipe(), counters)

    assert [rule_id for rule_id, _, _ in benefits(decision)] == ["a", "b"]
    assert why(decision, "c") == ("not_applied", "campaign/card/day/uses")
    assert counters["campaign:c:card:card-1:day:2026-11-25:uses"] == 2


def test_a_rule_limit_is_not_shared_with_the_other_rules() -> None:
    rulebook = only(make_rule("a", limits=(Limit("card", "day", uses_max=1),)), make_rule("b"))
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(), counters)

    assert [rule_id for rule_id, _, _ in benefits(run(rulebook, make_swipe(), counters))] == ["b"]


def test_limits_of_one_campaign_do_not_touch_another() -> None:
    rulebook = make_rulebook(
        make_campaign("a", make_rule(), limits=(Limit("card", "day", uses_max=1),), budget_fen=1000),
        make_campaign("b", make_rule()),
    )
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(), counters)

    decision = run(rulebook, make_swipe(), counters)

    assert [(line.campaign_id, line.amount_fen) for line in decision.benefits] == [("b", 1000)]


def test_a_benefit_that_partly_fits_gets_exactly_what_is_left_under_the_tightest_cap() -> None:
    rule = make_rule(limits=(Limit("card", "day", fen_max=700), Limit("merchant", "month", fen_max=300)))
    decision = run(only(rule, budget_fen=5000), make_swipe())

    assert benefits(decision) == [("r", "subsidy", 300)]
    assert why(decision, "r") == ("partly_applied", "rule/merchant/month/fen")


def test_a_rule_that_gives_nothing_counts_no_use_and_names_the_cap_that_stopped_it() -> None:
    rule = make_rule(limits=(Limit("card", "month", uses_max=5, fen_max=1000),))
    rulebook = only(rule)
    counters: dict[str, int] = {}
    run(rulebook, make_swipe(), counters)
    uses_key = "rule:c/r:card:card-1:month:2026-11:uses"
    assert counters[uses_key] == 1

    decision = run(rulebook, make_swipe(), counters)

    assert decision.status == "declined"
    assert decision.decline_code == DECLINE_NO_BENEFIT
    assert why(decision, "r") == ("not_applied", "rule/card/month/fen")
    assert counters[uses_key] == 1
    assert decision.counter_deltas is None


def test_the_counters_change_by_exactly_the_decisions_deltas() -> None:
    rulebook = only(
        make_rule("a", limits=(Limit("card", "day", uses_max=3, fen_max=5000),)),
        make_rule("b", kind="discount", fixed_fen=200, limits=(Limit("merchant", "week", fen_max=9000),)),
        budget_fen=100_000,
    )
    counters = {"rule:c/a:card:card-1:day:2026-11-25:uses": 1}
    before = dict(counters)

    decision = run(rulebook, make_swipe(), counters)

    assert decision.counter_deltas == {key: counters[key] - before.get(key, 0) for key in counters}
    assert decision.counter_deltas == {
        "rule:c/a:card:card-1:day:2026-11-25:uses": 1,
        "rule:c/a:card:card-1:day:2026-11-25:fen": 980,
        "rule:c/b:merchant:m-wujin-dining-001:week:2026-W48:fen": 200,
        "campaign:c:budget:fen": 1180,
    }


# -- properties --------------------------------------------------------------------------

PERIODS = ("day", "week", "month", "year", "campaign")
START = datetime(2026, 11, 20, tzinfo=SHANGHAI)


@st.composite
def limits(draw: st.DrawFn) -> Limit:
    per = draw(st.sampled_from(("card", "merchant")))
    period = draw(st.sampled_from(PERIODS))
    fen_max = draw(st.none() | st.integers(1, 5000))
    uses_max = None if per == "merchant" else draw(st.none() | st.integers(1, 3))
    if fen_max is None and uses_max is None:
        fen_max = draw(st.integers(1, 5000))
    return Limit(per, period, uses_max, fen_max)  # type: ignore[arg-type]


# The loader refuses a cap (subject, period, unit) given twice in one rule or campaign; here one Limit
# per subject and period carries both units, which counts the same as two limits of one unit each.
limit_lists = st.lists(limits(), max_size=3, unique_by=lambda limit: (limit.per, limit.period))


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> Rule:
    kind = draw(st.sampled_from(("discount", "subsidy")))
    fixed = draw(st.booleans())
    benefit = (
        Benefit(kind, fixed_fen=draw(st.integers(1, 20000)))  # type: ignore[arg-type]
        if fixed
        else Benefit(kind, percent_bp=draw(st.integers(1, 10000)), amount_fen_max=draw(st.none() | st.integers(1, 20000)))  # type: ignore[arg-type]
    )
    conditions = Conditions(
        categories=draw(st.none() | st.frozensets(st.sampled_from(CATEGORIES[:2]), min_size=1)),
        merchant_ids=draw(st.none() | st.frozensets(st.sampled_from(("m-1", "m-2")), min_size=1)),
        weekdays=draw(st.none() | st.frozensets(st.integers(0, 6), min_size=1)),
        amount_fen_min=draw(st.none() | st.integers(1, 5000)),
    )
    return Rule(
        "c",
        rule_id,
        benefit,
        conditions,
        priority=draw(st.integers(0, 3)),
        exclusive=draw(st.booleans()),
        limits=tuple(draw(limit_lists)),
    )


@st.composite
def rulebooks(draw: st.DrawFn) -> Rulebook:
    campaigns = []
    for campaign_number in range(draw(st.integers(1, 3))):
        campaign_rules = [draw(rules(f"r{n}")) for n in range(draw(st.integers(1, 4)))]
        campaigns.append(
            make_campaign(
                f"c{campaign_number}",
                *campaign_rules,
                valid_from=date(2026, 11, 20),
                valid_until=draw(st.sampled_from((date(2026, 12, 31), date(2026, 11, 30)))),
                budget_fen=draw(st.none() | st.integers(1, 50000)),
                limits=tuple(draw(limit_lists)),
            )
        )
    return make_rulebook(*campaigns)


swipes = st.builds(
    make_swipe,
    amount_fen=st.integers(0, 50000),
    occurred_at=st.integers(0, 40 * 24 * 60).map(lambda minutes: START + timedelta(minutes=minutes)),
    merchant_id=st.sampled_from(("m-1", "m-2", "m-3")),
    category=st.sampled_from(CATEGORIES[:3]),
    district=st.sampled_from(DISTRICTS[:2]),
    card_ref=st.sampled_from(("card-1", "card-2")),
    member_groups=st.just(frozenset()),
)


@settings(max_examples=300, deadline=None)
@given(rulebook=rulebooks(), swipe_sequence=st.lists(swipes, min_size=1, max_size=25))
def test_benefits_add_up_and_no_counter_ever_exceeds_its_limit(rulebook: Rulebook, swipe_sequence: list[Swipe]) -> None:
    counters: dict[str, int] = {}
    seen: dict[str, CounterRef] = {}
    for swipe in swipe_sequence:
        plan = plan_swipe(rulebook, swipe)
        before = dict(counters)
        outcomes = execute_plan(plan, counters)
        decision = decide(plan, outcomes, rulebook.version)

        assert decision.discount_fen + decision.subsidy_fen + decision.payable_fen == swipe.amount_fen
        assert decision.discount_fen >= 0
        assert decision.subsidy_fen >= 0
        assert decision.payable_fen >= 0
        assert all(line.amount_fen > 0 for line in decision.benefits)
        assert sum(line.amount_fen for line in decision.benefits) == decision.discount_fen + decision.subsidy_fen
        assert (decision.counter_deltas or {}) == {
            key: counters[key] - before.get(key, 0) for key in counters if counters[key] != before.get(key, 0)
        }
        for step in plan.steps:
            for counter in step.counters:
                seen[counter.key] = counter
        for key, counter in seen.items():
            assert counters.get(key, 0) <= counter.limit, (key, counters.get(key), counter.limit)


@settings(max_examples=200, deadline=None)
@given(rulebook=rulebooks(), swipe=swipes)
def test_every_rule_is_applied_explained_or_skipped(rulebook: Rulebook, swipe: Swipe) -> None:
    plan = plan_swipe(rulebook, swipe)
    decision = decide(plan, execute_plan(plan, {}), rulebook.version, with_explanations=True)

    looked_at = {(rule.campaign_id, rule.rule_id) for rule in rulebook.candidates(swipe.merchant_id, swipe.category, swipe.district)}
    explained = [(line.campaign_id, line.rule_id) for line in decision.explanations]
    assert sorted(explained) == sorted(looked_at)
    for line in decision.explanations:
        assert (line.outcome == "not_applied") == (line.given_fen == 0)
        assert line.given_fen <= line.wanted_fen or line.outcome == "not_applied"


# One rule, spelled in YAML at random, must load back as exactly the rule it spells.
yaml_rules = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(("discount", "subsidy")),
        "percent_bp": st.none() | st.integers(1, 10000),
        "fixed_fen": st.integers(1, 10**6),
        "fen_max": st.none() | st.integers(1, 10**6),
        "priority": st.integers(0, 1000),
        "exclusive": st.booleans(),
        "categories": st.none() | st.lists(st.sampled_from(CATEGORIES), min_size=1, unique=True),
        "districts": st.none() | st.lists(st.sampled_from(DISTRICTS), min_size=1, unique=True),
        "weekdays": st.none() | st.lists(st.sampled_from(WEEKDAYS), min_size=1, unique=True),
        "window": st.none() | st.tuples(st.integers(0, 23 * 60), st.integers(1, 60)),
        "amount_fen_min": st.none() | st.integers(1, 10**6),
        "limit": st.none() | limits(),
    }
)


def spell(draw: dict[str, Any]) -> tuple[dict[str, Any], Rule]:
    """The YAML mapping of a campaign with one rule, and the Rule it must compile to."""
    when: dict[str, Any] = {}
    conditions: dict[str, Any] = {}
    for name in ("categories", "districts"):
        if draw[name] is not None:
            when[name] = draw[name]
            conditions[name] = frozenset(draw[name])
    if draw["weekdays"] is not None:
        when["weekdays"] = draw["weekdays"]
        conditions["weekdays"] = frozenset(WEEKDAYS.index(day) for day in draw["weekdays"])
    if draw["window"] is not None:
        start, length = draw["window"]
        end = min(start + length, 24 * 60 - 1)
        when["time_of_day"] = {"from": f"{start // 60:02d}:{start % 60:02d}", "until": f"{end // 60:02d}:{end % 60:02d}"}
        conditions["time_from"], conditions["time_until"] = time(start // 60, start % 60), time(end // 60, end % 60)
    if draw["amount_fen_min"] is not None:
        when["amount_fen_min"] = conditions["amount_fen_min"] = draw["amount_fen_min"]
    if draw["percent_bp"] is not None:
        bp = draw["percent_bp"]
        amount: dict[str, Any] = {"percent": bp // 100 if bp % 100 == 0 else float(f"{bp // 100}.{bp % 100:02d}")}
        if draw["fen_max"] is not None:
            amount["fen_max"] = draw["fen_max"]
        benefit = Benefit(draw["kind"], percent_bp=bp, amount_fen_max=draw["fen_max"])
    else:
        amount = {"fixed_fen": draw["fixed_fen"]}
        benefit = Benefit(draw["kind"], fixed_fen=draw["fixed_fen"])
    rule_yaml: dict[str, Any] = {"id": "r", "priority": draw["priority"], "exclusive": draw["exclusive"], "benefit": {draw["kind"]: amount}}
    if when:
        rule_yaml["when"] = when
    limits_: tuple[Limit, ...] = ()
    if draw["limit"] is not None:
        limit: Limit = draw["limit"]
        spelled: dict[str, Any] = {"per": limit.per, "period": limit.period}
        spelled |= {key: value for key, value in (("uses_max", limit.uses_max), ("fen_max", limit.fen_max)) if value is not None}
        rule_yaml["limits"] = [spelled]
        limits_ = (limit,)
    campaign = {
        "campaign": {
            "id": "generated",
            "name": "Generated",
            "funders": [{"funder": "city_federation", "share_percent": 100}],
            "valid": {"from": "2026-01-01", "until": "2026-12-31"},
            "rules": [rule_yaml],
        }
    }
    return campaign, Rule("generated", "r", benefit, Conditions(**conditions), draw["priority"], draw["exclusive"], limits_)


@settings(max_examples=100, deadline=None)
@given(draw=yaml_rules)
def test_any_rule_spelled_in_yaml_loads_as_exactly_that_rule(draw: dict[str, Any]) -> None:
    campaign, expected = spell(draw)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "campaigns").mkdir()
        (root / "funders.yaml").write_text("funders: [{id: city_federation, name: City, kind: city_federation}]\n", encoding="utf-8")
        (root / "campaigns" / "generated.yaml").write_text(yaml.safe_dump(campaign, sort_keys=False), encoding="utf-8")

        rulebook = load_rulebook(root)

    assert rulebook.campaigns["generated"].rules == (expected,)
