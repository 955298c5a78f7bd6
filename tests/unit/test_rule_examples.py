"""The demo rulebook and the worked examples that rule files carry."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pos_engine.domain.clock import SHANGHAI
from pos_engine.domain.evaluation import Swipe, decide, execute_plan, plan_swipe
from pos_engine.domain.rulebook import CATEGORIES, DISTRICTS, Example, Rulebook
from pos_engine.rules_loader import load_rulebook, run_examples
from tests.unit.test_rules_loader import CAMPAIGN_YAML, write_rulebook

REPO = Path(__file__).resolve().parents[2]
DEMO_RULES = REPO / "rules"
DEMO_MERCHANT = re.compile(rf"m-({'|'.join(DISTRICTS)})-({'|'.join(CATEGORIES)})-00[1-8]")
DEMO_FUNDERS = {"city_federation", "wujin_federation", "jintan_federation", "liyang_federation", "industry_union_machinery", "partner_bank"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Rulebook:
    """The demo rulebook, loaded from a copy so a concurrent edit of rules/ cannot change a test half-way."""
    copy = tmp_path_factory.mktemp("demo") / "rules"
    shutil.copytree(DEMO_RULES, copy)
    return load_rulebook(copy)


def test_the_demo_rulebook_loads_and_all_its_examples_pass(demo: Rulebook) -> None:
    assert demo.rule_count > 0
    assert run_examples(demo) == []


def test_the_demo_rulebook_in_the_repository_loads_as_it_is() -> None:
    assert run_examples(load_rulebook(DEMO_RULES)) == []


def test_every_demo_campaign_file_carries_a_worked_example(demo: Rulebook) -> None:
    examples_per_file = Counter(example.source.rsplit(":", 1)[0] for example in demo.examples)

    assert {campaign.source for campaign in demo.campaigns.values()} == set(examples_per_file)


def test_the_demo_funders_are_the_six_the_demo_world_uses_and_each_funds_a_campaign(demo: Rulebook) -> None:
    funding = {share.funder_id for campaign in demo.campaigns.values() for share in campaign.funders}

    assert set(demo.funders) == DEMO_FUNDERS
    assert funding == DEMO_FUNDERS


def test_the_demo_campaigns_are_valid_today_and_for_a_month_yet(demo: Rulebook) -> None:
    # The demo, the README's swipe and the live tests swipe now: once the demo campaigns end, this fails first.
    today = datetime.now(SHANGHAI).date()
    for campaign in demo.campaigns.values():
        assert campaign.valid_from <= today
        assert campaign.valid_until >= today + timedelta(days=31), f"{campaign.campaign_id} ends {campaign.valid_until}: move the demo on"


def test_the_demo_rulebook_names_only_demo_merchants_and_member_groups(demo: Rulebook) -> None:
    for campaign in demo.campaigns.values():
        for rule in campaign.rules:
            for merchant_id in rule.conditions.merchant_ids or ():
                assert DEMO_MERCHANT.fullmatch(merchant_id), merchant_id
            assert (rule.conditions.member_groups or frozenset()) <= {"model_worker", "hardship"}
    for example in demo.examples:
        assert DEMO_MERCHANT.fullmatch(example.merchant_id), example.merchant_id
        assert example.merchant_id.split("-")[1:3] == [example.district, example.category]


def test_the_readme_swipe_gets_both_a_discount_and_a_subsidy(demo: Rulebook) -> None:
    swipe = Swipe(
        amount_fen=10000,
        occurred_at=datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI),
        merchant_id="m-wujin-dining-001",
        category="dining",
        district="wujin",
        card_ref="ordinary-member",
    )
    plan = plan_swipe(demo, swipe)

    decision = decide(plan, execute_plan(plan, {}), demo.version)

    # docs/rules.md: the 5 % partner discount, then the city's 10 % on the 9,500 fen left (a Wednesday).
    assert decision.status == "approved"
    assert (decision.discount_fen, decision.subsidy_fen, decision.payable_fen) == (500, 950, 8_550)
    assert decision.rules_version == demo.version


def test_the_demo_covers_every_kind_of_condition_limit_and_benefit(demo: Rulebook) -> None:
    rules = [rule for campaign in demo.campaigns.values() for rule in campaign.rules]
    limits = [limit for campaign in demo.campaigns.values() for limit in campaign.limits] + [
        limit for rule in rules for limit in rule.limits
    ]

    for condition in ("categories", "merchant_ids", "districts", "member_groups", "weekdays", "time_from", "amount_fen_min"):
        assert any(getattr(rule.conditions, condition) is not None for rule in rules), condition
    assert {limit.per for limit in limits} == {"card", "merchant"}
    assert {limit.period for limit in limits} >= {"day", "week", "month", "year"}
    assert any(rule.benefit.fixed_fen is not None for rule in rules)
    assert any(rule.benefit.amount_fen_max is not None for rule in rules)
    assert any(rule.exclusive for rule in rules)
    assert any(len(campaign.funders) > 1 for campaign in demo.campaigns.values())
    assert all(campaign.budget_fen for campaign in demo.campaigns.values() if campaign.funders)


def test_a_failing_example_names_its_file_line_expected_and_got(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace("{rule: lunch-10pct, subsidy_fen: 1000}", "{rule: lunch-10pct, subsidy_fen: 999}")
    text = text.replace('occurred_at: "2026-11-25T12:00:00+08:00"', 'occurred_at: "2026-11-28T12:00:00+08:00"')
    rulebook = load_rulebook(write_rulebook(tmp_path, {"test.yaml": text}))

    failures = run_examples(rulebook)

    line = next(number for number, line in enumerate(text.splitlines(), start=1) if "- name: wednesday lunch" in line)
    assert failures == [
        f"{tmp_path / 'campaigns' / 'test.yaml'}:{line}: example 'wednesday lunch': "
        "expected [test-campaign/lunch-10pct subsidy 999 fen], got no benefit "
        "(test-campaign/lunch-10pct: condition:weekdays)"
    ]


def test_a_wrong_amount_is_reported_with_both_amounts(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace("{rule: lunch-10pct, subsidy_fen: 1000}", "{rule: lunch-10pct, subsidy_fen: 999}")
    rulebook = load_rulebook(write_rulebook(tmp_path, {"test.yaml": text}))

    (failure,) = run_examples(rulebook)

    assert failure.endswith(
        "example 'wednesday lunch': expected [test-campaign/lunch-10pct subsidy 999 fen], got [test-campaign/lunch-10pct subsidy 1000 fen]"
    )


def test_an_example_expecting_nothing_fails_when_a_rule_gives_something(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace("      expect:\n        - {rule: lunch-10pct, subsidy_fen: 1000}\n", "      expect: []\n")
    rulebook = load_rulebook(write_rulebook(tmp_path, {"test.yaml": text}))

    (failure,) = run_examples(rulebook)

    assert failure.endswith("expected no benefit, got [test-campaign/lunch-10pct subsidy 1000 fen]")


def test_each_example_runs_on_fresh_counters(tmp_path: Path) -> None:
    # The rule allows one use a day per card; two examples of the same day both get it.
    second = (
        "    - name: the same lunch again\n"
        '      swipe: {amount_fen: 10000, occurred_at: "2026-11-25T12:30:00+08:00", merchant_id: m-wujin-dining-001, category: dining,\n'
        "              district: wujin}\n"
        "      expect: [{rule: lunch-10pct, subsidy_fen: 1000}]\n"
    )
    rulebook = load_rulebook(write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML + second}))

    assert len(rulebook.examples) == 2
    assert run_examples(rulebook) == []


def test_an_example_sees_the_whole_rulebook_so_stacking_shows(tmp_path: Path) -> None:
    discount = """\
campaign:
  id: partner
  name: Partner discount
  valid: {from: 2026-01-01, until: 2026-12-31}
  rules:
    - id: five
      when: {merchant_ids: [m-wujin-dining-001]}
      benefit: {discount: {percent: 5}}
"""
    rulebook = load_rulebook(write_rulebook(tmp_path, {"partner.yaml": discount, "test.yaml": CAMPAIGN_YAML}))

    (failure,) = run_examples(rulebook)

    assert "got [partner/five discount 500 fen, test-campaign/lunch-10pct subsidy 950 fen]" in failure


def test_a_hand_built_example_with_a_bad_time_is_reported_not_raised() -> None:
    example = Example(
        source="hand.yaml:1",
        name="no offset",
        amount_fen=100,
        occurred_at="2026-11-25T12:00:00",
        merchant_id="m-wujin-dining-001",
        category="dining",
        district="wujin",
        member_groups=frozenset(),
        expect_benefits=(),
    )

    assert run_examples(Rulebook("v", [], [], [example])) == [
        "hand.yaml:1: example 'no offset': occurred_at '2026-11-25T12:00:00' needs a UTC offset"
    ]
