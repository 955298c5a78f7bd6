"""Edge cases of planning that a hand-built rulebook can reach even though the loader refuses them."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from pos_engine.domain.clock import local, period_key
from pos_engine.domain.evaluation import UNIT_FEN, UNIT_USES, CounterRef, Swipe, execute_plan, plan_swipe
from pos_engine.domain.rulebook import Conditions, Limit
from tests.helpers import discount, make_campaign, make_rule, make_rulebook, subsidy

NOON = datetime(2026, 11, 25, 4, 0, tzinfo=timezone.utc)


def swipe(amount_fen: int = 10_000) -> Swipe:
    return Swipe(amount_fen, NOON, "m-1", "dining", "wujin", "card-1")


def test_two_caps_on_the_same_counter_keep_the_tighter_and_count_once() -> None:
    rule = make_rule(
        benefit=subsidy(percent_bp=1000),
        limits=(Limit("card", "day", fen_max=1500), Limit("card", "day", fen_max=800)),
    )
    plan = plan_swipe(make_rulebook(make_campaign(rules=(rule,))), swipe())
    assert [(counter.key, counter.limit) for counter in plan.steps[0].counters] == [("rule:camp/r1:card:card-1:day:2026-11-25:fen", 800)]
    counters: dict[str, int] = {}
    for _ in range(3):
        execute_plan(plan_swipe(make_rulebook(make_campaign(rules=(rule,))), swipe()), counters)
    assert counters == {"rule:camp/r1:card:card-1:day:2026-11-25:fen": 800}


def test_an_empty_category_list_matches_nothing_and_is_indexed_nowhere() -> None:
    rule = make_rule(conditions=Conditions(categories=frozenset()))
    rulebook = make_rulebook(make_campaign(rules=(rule,)))
    assert rulebook.candidates("m-1", "dining", "wujin") == ()
    assert plan_swipe(rulebook, swipe()).steps == ()


def counters_by_the_book(prefix_limits: list[tuple[str, tuple[Limit, ...]]], budget: CounterRef | None, swipe: Swipe) -> list[CounterRef]:
    """A step's counters as the rule semantics state them, built afresh for each swipe: every cap of the
    rule, then of its campaign, uses before fen, then the budget; one counter per key, the tighter cap
    taking the first one's place."""
    at_local = local(swipe.occurred_at)
    merged: dict[str, CounterRef] = {}
    for prefix, limits in prefix_limits:
        for limit in limits:
            subject = swipe.card_ref if limit.per == "card" else swipe.merchant_id
            base = f"{prefix}:{limit.per}:{subject}:{limit.period}:{period_key(at_local, limit.period)}"
            for unit, bound in ((UNIT_USES, limit.uses_max), (UNIT_FEN, limit.fen_max)):
                if bound is not None:
                    counter = CounterRef(f"{base}:{unit}", unit, bound, limit.label(prefix.partition(":")[0], unit))
                    if counter.key not in merged or counter.limit < merged[counter.key].limit:
                        merged[counter.key] = counter
    return [*merged.values(), *([budget] if budget else [])]


limits = st.lists(
    st.builds(
        Limit,
        st.sampled_from(["card", "merchant"]),
        st.sampled_from(["day", "week", "month", "year", "campaign"]),
        st.none() | st.integers(1, 5),
        st.none() | st.integers(1, 100_000),
    ).filter(lambda limit: limit.uses_max is not None or limit.fen_max is not None),
    max_size=5,
).map(tuple)


@settings(max_examples=200)
@given(
    limits,
    limits,
    st.none() | st.integers(1, 10**9),
    st.lists(
        st.tuples(st.sampled_from(["card-1", "card-2"]), st.sampled_from(["m-1", "m-2"]), st.integers(0, 400)), min_size=1, max_size=4
    ),
)
def test_every_swipe_gets_its_own_counters_from_the_rules_caps(
    rule_limits: tuple[Limit, ...], campaign_limits: tuple[Limit, ...], budget_fen: int | None, swipes: list[tuple[str, str, int]]
) -> None:
    rule = make_rule(benefit=subsidy(percent_bp=1000), limits=rule_limits)
    rulebook = make_rulebook(make_campaign(rules=(rule,), limits=campaign_limits, budget_fen=budget_fen))
    budget = None if budget_fen is None else CounterRef(f"campaign:camp:budget:{UNIT_FEN}", UNIT_FEN, budget_fen, "campaign/budget/fen")
    # The same rulebook plans swipe after swipe, of other cards, merchants and days.
    for card_ref, merchant_id, days_later in swipes:
        at = NOON + timedelta(days=days_later, hours=days_later % 24)
        one = Swipe(10_000, at, merchant_id, "dining", "wujin", card_ref)
        plan = plan_swipe(rulebook, one)
        expected = counters_by_the_book([("rule:camp/r1", rule_limits), ("campaign:camp", campaign_limits)], budget, one)
        assert list(plan.steps[0].counters) == expected


def test_every_value_a_plan_and_its_run_are_made_of_is_whole() -> None:
    """plan_swipe and execute_plan build their NamedTuples with tuple.__new__, which checks no field count.

    A field added to one of them but not at its hot call sites would leave short tuples that fail only
    when the new field is read; here each value must have every field, and equal the one its own
    constructor makes of the same values.
    """
    capped = make_rule(
        rule_id="capped",
        benefit=discount(percent_bp=1000),
        exclusive=True,
        limits=(Limit("card", "day", uses_max=2), Limit("merchant", "month", fen_max=50_000)),
    )
    shut_out = make_rule(rule_id="shut-out", benefit=discount(fixed_fen=100))  # by `capped`, exclusive
    elsewhere = make_rule(rule_id="elsewhere", conditions=Conditions(districts=frozenset({"wujin", "jintan"}), amount_fen_min=10**6))
    over = make_rule("over", "old")
    rulebook = make_rulebook(
        make_campaign(rules=(capped, shut_out, elsewhere), budget_fen=10**6),
        make_campaign("over", (over,), valid_from=date(2025, 1, 1), valid_until=date(2025, 12, 31)),
    )
    plan = plan_swipe(rulebook, swipe())
    outcomes = execute_plan(plan, {})
    assert [step.rule.rule_id for step in plan.steps] == ["capped", "shut-out"]
    assert [(skip.rule.rule_id, skip.condition) for skip in plan.skipped] == [("elsewhere", "amount_fen_min"), ("old", "campaign_validity")]
    assert [outcome.stopped_by for outcome in outcomes] == [None, "exclusive:camp/capped"]
    values = [plan, *plan.steps, *plan.skipped, *outcomes, *(counter for step in plan.steps for counter in step.counters)]
    assert len([value for value in values if isinstance(value, CounterRef)]) == 4  # two caps and the budget, the budget
    for value in values:
        assert len(value) == len(type(value)._fields), value
        assert type(value)(*value) == value
