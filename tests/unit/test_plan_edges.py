"""Edge cases of planning that a hand-built rulebook can reach even though the loader refuses them."""

from __future__ import annotations

from datetime import datetime, timezone

from pos_engine.domain.evaluation import Swipe, execute_plan, plan_swipe
from pos_engine.domain.rulebook import Conditions, Limit
from tests.helpers import make_campaign, make_rule, make_rulebook, subsidy

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
