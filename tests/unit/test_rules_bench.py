"""The rules micro-benchmark compares like with like: zen's decision tables give the same benefits as our rulebooks."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
import zen

from loadtests import rules_bench
from loadtests.rulegen import city_merchants, city_rulebook
from loadtests.rules_bench import city_swipes, our_benefits, zen_benefits, zen_decision, zen_input
from pos_engine.domain.clock import SHANGHAI
from pos_engine.domain.evaluation import Swipe, execute_plan, plan_swipe
from pos_engine.domain.rulebook import Benefit, Campaign, Conditions, FunderShare, Rule, Rulebook

PLACE_CAMPAIGNS = 8


def amounts_from_zen_rows(rows: list[dict[str, Any]], amount_fen: int) -> list[int]:
    """What each matched row gives on empty counters, by the pinned semantics, from zen's rows alone."""
    payable_fen = amount_fen
    stopped_kinds: set[str] = set()
    given: list[int] = []
    for row in rows:
        if row["kind"] in stopped_kinds:
            given.append(0)
            continue
        if row.get("percent_bp") is not None:
            wanted = payable_fen * row["percent_bp"] // 10_000
            if row.get("amount_fen_max") is not None:
                wanted = min(wanted, row["amount_fen_max"])
        else:
            wanted = min(row["fixed_fen"], payable_fen)
        given.append(wanted)
        payable_fen -= wanted
        if row["exclusive"] and wanted > 0:
            stopped_kinds.add(row["kind"])
    return given


def assert_both_sides_agree(rulebook: Rulebook, swipes: list[Swipe]) -> Counter[str]:
    """Check every swipe on both sides; return how often each condition turned a candidate away on ours."""
    decision = zen_decision(zen.ZenEngine(), rulebook)
    failures: Counter[str] = Counter()
    for swipe in swipes:
        plan = plan_swipe(rulebook, swipe)
        # zen's stub types 'result' as a dict; a table with hit policy collect answers a list of rows.
        answer: Any = decision.evaluate(zen_input(swipe))
        assert our_benefits(plan) == zen_benefits(answer), swipe
        given = [outcome.given_fen for outcome in execute_plan(plan, {})]
        assert given == amounts_from_zen_rows(answer["result"], swipe.amount_fen), swipe
        failures.update(skip.condition for skip in plan.skipped)
    return failures


@pytest.mark.parametrize("rule_count", [10, 100, 400])
def test_zen_tables_give_the_same_benefits_as_the_city_rulebooks(rule_count: int) -> None:
    # 100 merchants rather than 10,000, so that swipes meet partner agreements and every condition turns some rule away.
    merchants = city_merchants(100)
    rulebook = city_rulebook(rule_count, merchants)
    swipes = city_swipes(300, merchants, seed=rule_count)

    failures = assert_both_sides_agree(rulebook, swipes)

    # The agreement is not vacuous: some swipes get nothing, some a partner's benefit, some a place-wide one,
    # and each kind of condition the generator writes turned a candidate away at least once.
    matched = [{step.rule.campaign_id.startswith("partner-") for step in plan_swipe(rulebook, swipe).steps} for swipe in swipes]
    assert set() in matched
    assert any(True in kinds for kinds in matched)
    assert any(False in kinds for kinds in matched)
    assert {"member_groups", "weekdays", "time_of_day", "amount_fen_min"} <= set(failures)


def at_local(day: date, clock: time) -> datetime:
    """A swipe time given in Asia/Shanghai, sent in UTC as terminals do."""
    return datetime.combine(day, clock, tzinfo=SHANGHAI).astimezone(UTC)


def test_zen_tables_agree_at_the_edges_of_time_weekday_and_amount_conditions() -> None:
    rulebook = city_rulebook(PLACE_CAMPAIGNS, city_merchants(10))
    wednesday, friday, saturday = date(2026, 11, 25), date(2026, 11, 27), date(2026, 11, 28)
    swipes = [
        Swipe(amount_fen, at_local(day, clock), "m-x", category, district, "card-1", frozenset(groups))
        for amount_fen in (1999, 2000, 2999, 3000)
        for day in (wednesday, friday, saturday)
        for clock in (time(10, 59, 59), time(11), time(13, 59, 59), time(14), time(17, 59, 59), time(18), time(21, 59, 59), time(22))
        for category, district in (("dining", "wujin"), ("entertainment", "wujin"), ("lodging", "liyang"), ("shopping", "xinbei"))
        for groups in ((), ("model_worker",), ("hardship", "machinery_union"))
    ]
    assert_both_sides_agree(rulebook, swipes)
    lunch = [swipe for swipe in swipes if swipe.category == "dining" and swipe.amount_fen == 2000 and swipe.occurred_at.weekday() == 2]
    matched = {swipe.occurred_at.astimezone(SHANGHAI).time(): plan_swipe(rulebook, swipe).steps for swipe in lunch}
    assert any(step.rule.campaign_id == "city-weekday-lunch" for step in matched[time(11)])
    assert not any(step.rule.campaign_id == "city-weekday-lunch" for step in matched[time(10, 59, 59)])
    assert not any(step.rule.campaign_id == "city-weekday-lunch" for step in matched[time(14)])


def test_zen_tables_agree_on_dates_open_time_windows_and_merchant_lists() -> None:
    # Conditions the city generator never writes, so that every branch of the translation is held to ours.
    def rule(rule_id: str, conditions: Conditions, benefit: Benefit | None = None) -> Rule:
        return Rule("edges", rule_id, benefit or Benefit("subsidy", percent_bp=1000, amount_fen_max=500), conditions, exclusive=True)

    campaign = Campaign(
        "edges",
        "edges",
        date(2026, 3, 1),
        date(2026, 3, 31),
        (
            rule("dated", Conditions(date_from=date(2026, 3, 10), date_until=date(2026, 3, 20))),
            rule("mornings", Conditions(time_until=time(9)), Benefit("discount", fixed_fen=300)),
            rule("evenings", Conditions(time_from=time(20, 30)), Benefit("discount", percent_bp=700)),
            rule("two-shops", Conditions(merchant_ids=frozenset({"m-a", "m-b"}), districts=frozenset({"wujin", "jintan"}))),
            rule("nobody", Conditions(categories=frozenset())),
        ),
        funders=(FunderShare("city_federation", 10_000),),
    )
    rulebook = Rulebook("edges", [campaign])
    days = [
        date(2026, 2, 28),
        date(2026, 3, 1),
        date(2026, 3, 9),
        date(2026, 3, 10),
        date(2026, 3, 20),
        date(2026, 3, 21),
        date(2026, 3, 31),
    ]
    swipes = [
        Swipe(5000, at_local(day, clock), merchant_id, "dining", district, "card-1")
        for day in days
        for clock in (time(0), time(8, 59, 59), time(9), time(20, 29, 59), time(20, 30), time(23, 59, 59))
        for merchant_id in ("m-a", "m-c")
        for district in ("wujin", "liyang")
    ]
    assert_both_sides_agree(rulebook, swipes)
    # 23:59:59 on 31 March in Changzhou is 15:59:59 UTC, still inside the campaign; a second later it is over.
    last = Swipe(5000, at_local(date(2026, 3, 31), time(23, 59, 59)), "m-a", "dining", "wujin", "card-1")
    after = Swipe(5000, last.occurred_at + timedelta(seconds=1), "m-a", "dining", "wujin", "card-1")
    assert plan_swipe(rulebook, last).steps
    assert not plan_swipe(rulebook, after).steps
    assert_both_sides_agree(rulebook, [last, after])


def test_the_benchmark_runs_with_tiny_sizes_and_ends_with_its_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    rules_bench.main(["--swipes", "60", "--sizes", "5,20", "--merchants", "50", "--warmup", "10"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(re.match(r"\s+5 \|", line) for line in lines)
    assert any(re.match(r"\s+20 \|", line) for line in lines)
    assert re.fullmatch(
        r"rules_bench: us_5=[0-9.]+ us_20=[0-9.]+ ratio_20_to_5=[0-9.]+ zen_us_20=[0-9.]+ "
        r"faster_than_zen_at_all_sizes=(true|false) .*zen_agrees=true",
        lines[-1],
    )
