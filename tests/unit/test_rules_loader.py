"""The YAML rulebook loader: what it builds, what it refuses (with file, line and path), and the version."""

from __future__ import annotations

import shutil
from datetime import date, time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pos_engine import rules_loader
from pos_engine.domain.rulebook import Benefit, Conditions, FunderShare, Limit, Rule
from pos_engine.rules_loader import RulebookError, load_rulebook

REPO = Path(__file__).resolve().parents[2]
DEMO_RULES = REPO / "rules"

FUNDERS_YAML = """\
funders:
  - {id: city_federation, name: Changzhou Federation of Trade Unions, kind: city_federation}
  - {id: partner_bank, name: Partner bank, kind: partner_bank}
"""

# A valid campaign that uses every field; each refusal test breaks one line of it.
CAMPAIGN_YAML = """\
campaign:
  id: test-campaign
  name: Test campaign
  funders:
    - {funder: city_federation, share_percent: 60}
    - {funder: partner_bank, share_percent: 40}
  valid: {from: 2026-01-01, until: 2026-12-31}
  budget_fen: 1000000
  limits:
    - {per: card, period: month, fen_max: 5000}
  rules:
    - id: lunch-10pct
      priority: 100
      exclusive: false
      when:
        categories: [dining]
        districts: [wujin, xinbei]
        weekdays: [mon, tue, wed, thu, fri]
        time_of_day: {from: "11:00", until: "14:00"}
        dates: {from: 2026-03-01, until: 2026-11-30}
        amount_fen_min: 2000
      benefit:
        subsidy: {percent: 10, fen_max: 2000}
      limits:
        - {per: card, period: day, uses_max: 1}
        - {per: merchant, period: week, fen_max: 100000}
    - id: shop-fixed
      priority: 50
      exclusive: true
      when:
        categories: [shopping]
        merchant_ids: [m-wujin-shopping-001]
        member_groups: [hardship]
      benefit:
        discount: {fixed_fen: 500}
  examples:
    - name: wednesday lunch
      swipe:
        {amount_fen: 10000, occurred_at: "2026-11-25T12:00:00+08:00", merchant_id: m-wujin-dining-001, category: dining, district: wujin,
         member_groups: []}
      expect:
        - {rule: lunch-10pct, subsidy_fen: 1000}
"""


def write_rulebook(root: Path, campaigns: dict[str, str], funders: str | None = FUNDERS_YAML) -> Path:
    """Write a rulebook directory: funders.yaml and campaigns/<name>."""
    (root / "campaigns").mkdir(parents=True, exist_ok=True)
    if funders is not None:
        (root / "funders.yaml").write_text(funders, encoding="utf-8")
    for name, text in campaigns.items():
        (root / "campaigns" / name).write_text(text, encoding="utf-8")
    return root


def problems_of(root: Path) -> list[str]:
    with pytest.raises(RulebookError) as refused:
        load_rulebook(root)
    return refused.value.problems


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the only line of `text` that contains `needle`."""
    found = [number for number, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


def broken(old: str, new: str) -> str:
    assert CAMPAIGN_YAML.count(old) == 1, old
    return CAMPAIGN_YAML.replace(old, new)


# -- what the loader builds -------------------------------------------------------------


def test_the_full_campaign_compiles_to_the_dataclasses_it_spells(tmp_path: Path) -> None:
    rulebook = load_rulebook(write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML}))

    campaign = rulebook.campaigns["test-campaign"]
    assert campaign.name == "Test campaign"
    assert campaign.funders == (FunderShare("city_federation", 6000), FunderShare("partner_bank", 4000))
    assert (campaign.valid_from, campaign.valid_until) == (date(2026, 1, 1), date(2026, 12, 31))
    assert campaign.budget_fen == 1_000_000
    assert campaign.limits == (Limit("card", "month", None, 5000),)
    assert campaign.source == str(tmp_path / "campaigns" / "test.yaml")
    assert campaign.rules == (
        Rule(
            campaign_id="test-campaign",
            rule_id="lunch-10pct",
            benefit=Benefit("subsidy", percent_bp=1000, amount_fen_max=2000),
            conditions=Conditions(
                categories=frozenset({"dining"}),
                districts=frozenset({"wujin", "xinbei"}),
                weekdays=frozenset({0, 1, 2, 3, 4}),
                time_from=time(11, 0),
                time_until=time(14, 0),
                date_from=date(2026, 3, 1),
                date_until=date(2026, 11, 30),
                amount_fen_min=2000,
            ),
            priority=100,
            exclusive=False,
            limits=(Limit("card", "day", 1, None), Limit("merchant", "week", None, 100_000)),
        ),
        Rule(
            campaign_id="test-campaign",
            rule_id="shop-fixed",
            benefit=Benefit("discount", fixed_fen=500),
            conditions=Conditions(
                categories=frozenset({"shopping"}),
                merchant_ids=frozenset({"m-wujin-shopping-001"}),
                member_groups=frozenset({"hardship"}),
            ),
            priority=50,
            exclusive=True,
        ),
    )
    assert [funder.funder_id for funder in rulebook.funders.values()] == ["city_federation", "partner_bank"]


def test_an_example_compiles_with_its_source_line_and_full_rule_references(tmp_path: Path) -> None:
    rulebook = load_rulebook(write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML}))

    (example,) = rulebook.examples
    line = line_of(CAMPAIGN_YAML, "- name: wednesday lunch")
    assert example.source == f"{tmp_path / 'campaigns' / 'test.yaml'}:{line}"
    assert example.name == "wednesday lunch"
    assert (example.amount_fen, example.merchant_id, example.category, example.district) == (10000, "m-wujin-dining-001", "dining", "wujin")
    assert example.occurred_at == "2026-11-25T12:00:00+08:00"
    assert example.member_groups == frozenset()
    assert example.expect_benefits == (("test-campaign/lunch-10pct", "subsidy", 1000),)


def test_optional_fields_take_their_defaults(tmp_path: Path) -> None:
    text = """\
campaign:
  id: minimal
  name: Minimal
  valid: {from: 2026-01-01, until: 2026-12-31}
  rules:
    - id: r
      benefit: {discount: {percent: 5}}
"""
    rulebook = load_rulebook(write_rulebook(tmp_path, {"minimal.yaml": text}))

    campaign = rulebook.campaigns["minimal"]
    assert (campaign.funders, campaign.budget_fen, campaign.limits) == ((), None, ())
    (rule,) = campaign.rules
    assert (rule.priority, rule.exclusive, rule.limits, rule.conditions) == (100, False, (), Conditions())
    assert rulebook.examples == ()


def test_percentages_with_two_decimals_become_exact_basis_points(tmp_path: Path) -> None:
    text = broken("share_percent: 60}", "share_percent: 66.67}").replace("share_percent: 40}", "share_percent: 33.33}")
    text = text.replace("subsidy: {percent: 10, fen_max: 2000}", "subsidy: {percent: 12.5, fen_max: 2000}")

    campaign = load_rulebook(write_rulebook(tmp_path, {"test.yaml": text.replace("subsidy_fen: 1000", "subsidy_fen: 1250")})).campaigns[
        "test-campaign"
    ]

    assert [share.share_bp for share in campaign.funders] == [6667, 3333]
    assert campaign.rules[0].benefit.percent_bp == 1250


def test_times_may_be_unquoted_and_until_may_be_the_end_of_the_day(tmp_path: Path) -> None:
    text = broken('time_of_day: {from: "11:00", until: "14:00"}', "time_of_day: {from: 11:00, until: 24:00}")

    rule = load_rulebook(write_rulebook(tmp_path, {"test.yaml": text})).campaigns["test-campaign"].rules[0]

    assert (rule.conditions.time_from, rule.conditions.time_until) == (time(11, 0), None)


def test_files_outside_funders_and_campaigns_are_ignored(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML, "README.md": "not yaml: [", ".draft.yaml": "broken: ["})
    (root / "scoring.yaml").write_text("weights: {rating: 1}\n", encoding="utf-8")

    assert list(load_rulebook(root).campaigns) == ["test-campaign"]


def test_a_rulebook_may_have_no_campaigns(tmp_path: Path) -> None:
    rulebook = load_rulebook(write_rulebook(tmp_path, {}))

    assert (rulebook.campaigns, list(rulebook.funders)) == ({}, ["city_federation", "partner_bank"])


# -- what the loader refuses, and where it says the problem is -----------------------------

# The table reads best one case to a block, so the formatter leaves it alone.
# fmt: off
REFUSALS = [
    # (case, old text, new text, needle on the reported line or None for line 1, path, reason)
    ("unknown field", "      priority: 100", "      priorty: 100", "priorty", "campaign.rules[0].priorty",
     "unknown field (allowed here: id, priority, exclusive, when, benefit, limits)"),
    ("text instead of a number", "budget_fen: 1000000", "budget_fen: lots", "budget_fen", "campaign.budget_fen",
     "must be a whole number of fen, got 'lots'"),
    ("a fraction of a fen", "budget_fen: 1000000", "budget_fen: 1000.5", "budget_fen", "campaign.budget_fen",
     "must be a whole number of fen, got 1000.5"),
    ("text instead of a list", "categories: [dining]", "categories: dining", "categories: dining", "campaign.rules[0].when.categories",
     "must be a list, got 'dining'"),
    ("text instead of a flag", "exclusive: false", "exclusive: maybe", "exclusive: maybe", "campaign.rules[0].exclusive",
     "must be true or false, got 'maybe'"),
    ("a list instead of a mapping", "      when:\n        categories: [shopping]\n        merchant_ids: [m-wujin-shopping-001]\n"
     "        member_groups: [hardship]\n", "      when: [shopping]\n", "when: [shopping]", "campaign.rules[1].when",
     "must be a mapping (with categories, districts, merchant_ids, member_groups, weekdays, time_of_day, dates, amount_fen_min)"),
    ("YAML 1.1 base-60 is not a number", "amount_fen_min: 2000", "amount_fen_min: 1:30", "amount_fen_min",
     "campaign.rules[0].when.amount_fen_min", "must be a whole number of fen, got '1:30'"),
    ("missing required field", "  name: Test campaign\n", "", None, "campaign.name", "missing required field"),
    ("missing benefit", "      benefit:\n        discount: {fixed_fen: 500}\n", "", "- id: shop-fixed", "campaign.rules[1].benefit",
     "missing required field"),
    ("unknown weekday", "weekdays: [mon, tue, wed, thu, fri]", "weekdays: [mon, tue, sunday, thu, fri]", "sunday",
     "campaign.rules[0].when.weekdays[2]", "'sunday' is not one of mon, tue, wed, thu, fri, sat, sun"),
    ("unknown category", "categories: [shopping]", "categories: [groceries]", "groceries", "campaign.rules[1].when.categories[0]",
     "'groceries' is not one of dining, lodging, transport, travel, shopping, entertainment"),
    ("unknown district", "districts: [wujin, xinbei]", "districts: [wujin, suzhou]", "suzhou", "campaign.rules[0].when.districts[1]",
     "'suzhou' is not one of wujin, jintan, liyang, xinbei, tianning, zhonglou, qishuyan"),
    ("unknown period", "{per: card, period: day, uses_max: 1}", "{per: card, period: fortnight, uses_max: 1}", "fortnight",
     "campaign.rules[0].limits[0].period", "'fortnight' is not one of day, week, month, year, campaign"),
    ("unknown limit subject", "{per: card, period: month, fen_max: 5000}", "{per: member, period: month, fen_max: 5000}", "per: member",
     "campaign.limits[0].per", "'member' is not one of card, merchant"),
    ("a per-merchant use limit", "{per: merchant, period: week, fen_max: 100000}", "{per: merchant, period: week, uses_max: 10}",
     "per: merchant", "campaign.rules[0].limits[1].uses_max",
     "a per-merchant limit counts fen only (fen_max); uses are counted per card"),
    ("a limit with neither uses nor fen", "{per: card, period: day, uses_max: 1}", "{per: card, period: day}", "period: day}",
     "campaign.rules[0].limits[0]", "a limit needs uses_max, fen_max or both"),
    ("a cap given twice", "{per: merchant, period: week, fen_max: 100000}", "{per: card, period: day, uses_max: 2}", "uses_max: 2",
     "campaign.rules[0].limits[1]", "limits[0] already sets uses_max per card per day; give each cap once"),
    ("shares that do not add up to 100", "share_percent: 40}", "share_percent: 30}", "  funders:", "campaign.funders",
     "shares add up to 90 %, not 100 %"),
    ("shares just over 100", "share_percent: 40}", "share_percent: 40.01}", "  funders:", "campaign.funders",
     "shares add up to 100.01 %, not 100 %"),
    ("a funder unknown to funders.yaml", "{funder: partner_bank,", "{funder: the_bank,", "the_bank", "campaign.funders[1].funder",
     "unknown funder 'the_bank' (funders.yaml lists: city_federation, partner_bank)"),
    ("a funder listed twice", "{funder: partner_bank, share_percent: 40}", "{funder: city_federation, share_percent: 40}",
     "share_percent: 40", "campaign.funders[1].funder", "funder 'city_federation' is already listed as funders[0]"),
    ("subsidy rules without funders", "  funders:\n    - {funder: city_federation, share_percent: 60}\n"
     "    - {funder: partner_bank, share_percent: 40}\n", "", None, "campaign.funders",
     "missing: the campaign has subsidy rules (lunch-10pct), so it needs funders who pay them"),
    ("a rule id used twice", "- id: shop-fixed", "- id: lunch-10pct  # again", "# again", "campaign.rules[1].id",
     "rule id 'lunch-10pct' is already used by rules[0]"),
    ("a negative amount", "fen_max: 2000}", "fen_max: -2000}", "fen_max: -2000", "campaign.rules[0].benefit.subsidy.fen_max",
     "must be more than 0, got -2000"),
    ("a zero budget", "budget_fen: 1000000", "budget_fen: 0", "budget_fen", "campaign.budget_fen", "must be more than 0, got 0"),
    ("a zero use limit", "uses_max: 1}", "uses_max: 0}", "uses_max: 0", "campaign.rules[0].limits[0].uses_max",
     "must be more than 0, got 0"),
    ("a zero minimum amount", "amount_fen_min: 2000", "amount_fen_min: 0", "amount_fen_min", "campaign.rules[0].when.amount_fen_min",
     "must be more than 0, got 0"),
    ("a percent over 100", "{percent: 10, fen_max: 2000}", "{percent: 100.5, fen_max: 2000}", "percent: 100.5",
     "campaign.rules[0].benefit.subsidy.percent", "must be at most 100, got 100.5"),
    ("a zero percent", "{percent: 10, fen_max: 2000}", "{percent: 0, fen_max: 2000}", "percent: 0",
     "campaign.rules[0].benefit.subsidy.percent", "must be more than 0, got 0"),
    ("a percent with three decimals", "{percent: 10, fen_max: 2000}", "{percent: 10.125, fen_max: 2000}", "percent: 10.125",
     "campaign.rules[0].benefit.subsidy.percent", "10.125 has more than 2 decimals"),
    ("both percent and fixed", "{percent: 10, fen_max: 2000}", "{percent: 10, fixed_fen: 2000}", "fixed_fen: 2000",
     "campaign.rules[0].benefit.subsidy", "give percent or fixed_fen, not both"),
    ("neither percent nor fixed", "{percent: 10, fen_max: 2000}", "{fen_max: 2000}", "subsidy: {fen_max",
     "campaign.rules[0].benefit.subsidy", "give percent (with an optional fen_max) or fixed_fen"),
    ("a cap on a fixed amount", "discount: {fixed_fen: 500}", "discount: {fixed_fen: 500, fen_max: 100}", "fen_max: 100}",
     "campaign.rules[1].benefit.discount.fen_max", "fen_max caps a percent; a fixed_fen needs no cap"),
    ("both discount and subsidy", "      benefit:\n        discount: {fixed_fen: 500}",
     "      benefit: {discount: {fixed_fen: 500}, subsidy: {fixed_fen: 100}}", "subsidy: {fixed_fen: 100}",
     "campaign.rules[1].benefit", "a rule gives one benefit: discount or subsidy, not both"),
    ("neither discount nor subsidy", "      benefit:\n        discount: {fixed_fen: 500}", "      benefit: {}", "benefit: {}",
     "campaign.rules[1].benefit", "give discount or subsidy"),
    ("time of day ending when it starts", 'time_of_day: {from: "11:00", until: "14:00"}', 'time_of_day: {from: "14:00", until: "14:00"}',
     "time_of_day", "campaign.rules[0].when.time_of_day.until", "must be later than from; for a window across midnight write two rules"),
    ("a time of day that does not exist", 'until: "14:00"}', 'until: "25:00"}', "time_of_day", "campaign.rules[0].when.time_of_day.until",
     "'25:00' is not a time of day (HH:MM, '00:00' to '23:59' or '24:00')"),
    ("a validity window reversed", "valid: {from: 2026-01-01, until: 2026-12-31}", "valid: {from: 2026-12-31, until: 2026-01-01}",
     "valid:", "campaign.valid.until", "2026-01-01 is before from (2026-12-31)"),
    ("a date range reversed", "dates: {from: 2026-03-01, until: 2026-11-30}", "dates: {from: 2026-11-30, until: 2026-03-01}",
     "dates:", "campaign.rules[0].when.dates.until", "2026-03-01 is before from (2026-11-30)"),
    ("a date that does not exist", "dates: {from: 2026-03-01,", "dates: {from: 2026-02-30,", "dates:", "campaign.rules[0].when.dates.from",
     "'2026-02-30' is not a date (YYYY-MM-DD)"),
    ("an example naming an unknown rule", "{rule: lunch-10pct, subsidy_fen: 1000}", "{rule: lunch-20pct, subsidy_fen: 1000}",
     "lunch-20pct", "campaign.examples[0].expect[0].rule",
     "unknown rule 'lunch-20pct' (campaign test-campaign has: lunch-10pct, shop-fixed)"),
    ("an example naming an unknown campaign", "{rule: lunch-10pct, subsidy_fen: 1000}", "{rule: other/lunch-10pct, subsidy_fen: 1000}",
     "other/lunch-10pct", "campaign.examples[0].expect[0].rule", "unknown campaign 'other' in 'other/lunch-10pct'"),
    ("an example expecting the wrong kind", "{rule: lunch-10pct, subsidy_fen: 1000}", "{rule: lunch-10pct, discount_fen: 1000}",
     "discount_fen: 1000", "campaign.examples[0].expect[0].rule", "rule 'lunch-10pct' gives a subsidy, not a discount"),
    ("an example swipe without a UTC offset", '"2026-11-25T12:00:00+08:00"', '"2026-11-25T12:00:00"', "occurred_at",
     "campaign.examples[0].swipe.occurred_at", "'2026-11-25T12:00:00' needs a UTC offset, such as +08:00"),
    ("an id with capitals and spaces", "  id: test-campaign", "  id: Test Campaign", "Test Campaign", "campaign.id",
     "'Test Campaign' is not valid here: lower-case letters, digits, '-' and '_', "
     "beginning and ending with a letter or digit, at most 64 characters"),
    ("an empty condition list", "member_groups: [hardship]", "member_groups: []  # empty", "# empty",
     "campaign.rules[1].when.member_groups", "must not be empty; leave the field out to mean 'any'"),
    ("a condition listing a value twice", "districts: [wujin, xinbei]", "districts: [wujin, wujin]", "districts:",
     "campaign.rules[0].when.districts[1]", "'wujin' is listed twice"),
    ("a duplicate key", "  name: Test campaign\n", "  name: Test campaign\n  name: Again\n", "name: Again", "campaign.name",
     "duplicate key (first given on line 3)"),
    ("a null value", "budget_fen: 1000000", "budget_fen:", "budget_fen", "campaign.budget_fen",
     "has no value; give one or leave the field out"),
    ("a number too long to be an amount", "budget_fen: 1000000", "budget_fen: " + "1" * 5000, "budget_fen", "campaign.budget_fen",
     "must be a whole number of fen, got '" + "1" * 37 + "...'"),
    ("a percent beyond any arithmetic", "{percent: 10, fen_max: 2000}", "{percent: 1.0e+999999, fen_max: 2000}", "percent: 1.0e",
     "campaign.rules[0].benefit.subsidy.percent", "must be a number of percent, got '1.0e+999999'"),
    ("a percent with a far decimal", "{percent: 10, fen_max: 2000}", "{percent: 10.0000000000000000000000000001, fen_max: 2000}",
     "percent: 10.0", "campaign.rules[0].benefit.subsidy.percent", "10.0000000000000000000000000001 has more than 2 decimals"),
    ("a share beyond any arithmetic", "share_percent: 40}", "share_percent: 4.0e+999999}", "share_percent: 4.0e",
     "campaign.funders[1].share_percent", "must be a number of percent, got '4.0e+999999'"),
    ("an example swipe in the year 9999", '"2026-11-25T12:00:00+08:00"', '"9999-12-31T23:00:00-08:00"', "occurred_at",
     "campaign.examples[0].swipe.occurred_at", "'9999-12-31T23:00:00-08:00' is not between the years 2000 and 9998"),
]
# fmt: on


@pytest.mark.parametrize(("old", "new", "needle", "path", "reason"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_each_validation_failure_is_refused_with_its_file_line_and_path(
    tmp_path: Path, old: str, new: str, needle: str | None, path: str, reason: str
) -> None:
    text = broken(old, new)
    root = write_rulebook(tmp_path / "rules", {"wujin-dining.yaml": text})

    problems = problems_of(root)

    line = 1 if needle is None else line_of(text, needle)
    assert problems == [f"{root / 'campaigns' / 'wujin-dining.yaml'}:{line}: {path}: {reason}"]


def test_problems_show_the_rulebook_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = broken("weekdays: [mon, tue, wed, thu, fri]", "weekdays: [mon, tue, wed, thu, fri, sunday]")
    write_rulebook(tmp_path / "rules", {"wujin-dining.yaml": text})
    monkeypatch.chdir(tmp_path)

    problems = problems_of(Path("rules"))

    assert problems == [
        f"rules/campaigns/wujin-dining.yaml:{line_of(text, 'sunday')}: campaign.rules[0].when.weekdays[5]: "
        "'sunday' is not one of mon, tue, wed, thu, fri, sat, sun"
    ]


def test_every_problem_of_a_file_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = broken("budget_fen: 1000000", "budget_fen: lots")
    text = text.replace("weekdays: [mon, tue, wed, thu, fri]", "weekdays: [someday]")
    text = text.replace("share_percent: 40}", "share_percent: 30}")
    text = text.replace("{rule: lunch-10pct, subsidy_fen: 1000}", "{rule: nope, subsidy_fen: 1000}")

    problems = problems_of(write_rulebook(tmp_path, {"test.yaml": text}))

    assert [problem.split(": ")[1] for problem in problems] == [
        "campaign.funders",
        "campaign.budget_fen",
        "campaign.rules[0].when.weekdays[0]",
        "campaign.examples[0].expect[0].rule",
    ]


def test_a_yaml_syntax_error_is_refused_with_the_line_of_the_error(tmp_path: Path) -> None:
    text = broken("  name: Test campaign", "  name: Test: campaign")
    root = write_rulebook(tmp_path, {"test.yaml": text})

    assert problems_of(root) == [
        f"{root / 'campaigns' / 'test.yaml'}:{line_of(text, 'Test: campaign')}: YAML syntax: mapping values are not allowed here"
    ]


def test_an_unclosed_bracket_is_refused_as_yaml_syntax(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": broken("categories: [dining]", "categories: [dining")})

    (problem,) = problems_of(root)
    assert problem.startswith(f"{root / 'campaigns' / 'test.yaml'}:")
    assert "YAML syntax:" in problem


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("campaign: &top\n  id: x\n  name: *top\n", 3, "YAML aliases (*name) are not supported; write the value out"),
        ("campaign:\n  id: x\n---\ncampaign:\n  id: y\n", 3, "a rule file holds one YAML document; remove the second '---'"),
        ("campaign:\n  id: !!binary aGVsbG8=\n", 2, "YAML tag tag:yaml.org,2002:binary is not supported"),
        ("campaign: !!seq\n  id: x\n", 1, "YAML tag tag:yaml.org,2002:seq is not supported"),
        ("campaign:\n  ? [a, b]\n  : c\n", 2, "mapping keys must be plain text"),
        ("campaign: " + "[" * 20 + "]" * 20 + "\n", 1, f"nested deeper than {rules_loader.YAML_DEPTH_MAX} levels"),
        ("", 1, "is empty"),
        ("# only a comment\n", 1, "is empty"),
        ("- campaign\n", 1, "must be a mapping (with campaign)"),
    ],
    ids=["alias", "two documents", "tag", "list tag on a mapping", "complex key", "too deep", "empty", "only a comment", "not a mapping"],
)
def test_unsafe_or_odd_yaml_is_refused(tmp_path: Path, text: str, line: int, reason: str) -> None:
    root = write_rulebook(tmp_path, {"odd.yaml": text})

    assert problems_of(root) == [f"{root / 'campaigns' / 'odd.yaml'}:{line}: {reason}"]


def test_a_billion_laughs_file_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    root = write_rulebook(tmp_path, {"laughs.yaml": "\n".join(lines) + "\n"})

    assert problems_of(root) == [f"{root / 'campaigns' / 'laughs.yaml'}:2: YAML aliases (*name) are not supported; write the value out"]


def test_a_file_that_is_not_utf8_is_refused_with_the_line(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {})
    (root / "campaigns" / "latin1.yaml").write_bytes(b"campaign:\n  name: caf\xe9\n")

    assert problems_of(root) == [f"{root / 'campaigns' / 'latin1.yaml'}:2: is not UTF-8 text"]


def test_a_file_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    padding = "#" * 99 + "\n"
    text = CAMPAIGN_YAML + padding * (rules_loader.RULE_FILE_BYTES_MAX // len(padding) + 1)
    root = write_rulebook(tmp_path, {"big.yaml": text})

    assert problems_of(root) == [f"{root / 'campaigns' / 'big.yaml'}: is larger than {rules_loader.RULE_FILE_BYTES_MAX} bytes"]


def test_a_file_over_the_rule_limit_is_refused(tmp_path: Path) -> None:
    rules = "".join(f"    - {{id: r{n}, benefit: {{discount: {{percent: 1}}}}}}\n" for n in range(rules_loader.RULES_PER_FILE_MAX + 1))
    text = f"campaign:\n  id: many\n  name: Many\n  valid: {{from: 2026-01-01, until: 2026-12-31}}\n  rules:\n{rules}"
    root = write_rulebook(tmp_path, {"many.yaml": text})

    assert problems_of(root) == [
        f"{root / 'campaigns' / 'many.yaml'}:5: campaign.rules: has {rules_loader.RULES_PER_FILE_MAX + 1} items; "
        f"at most {rules_loader.RULES_PER_FILE_MAX} are allowed"
    ]


def test_a_list_over_its_length_limit_is_refused(tmp_path: Path) -> None:
    merchants = ", ".join(f"m-{n}" for n in range(rules_loader.MERCHANT_IDS_PER_RULE_MAX + 1))
    text = broken("merchant_ids: [m-wujin-shopping-001]", f"merchant_ids: [{merchants}]")
    root = write_rulebook(tmp_path, {"test.yaml": text})

    assert problems_of(root) == [
        f"{root / 'campaigns' / 'test.yaml'}:{line_of(text, 'merchant_ids')}: campaign.rules[1].when.merchant_ids: "
        f"has {rules_loader.MERCHANT_IDS_PER_RULE_MAX + 1} items; at most {rules_loader.MERCHANT_IDS_PER_RULE_MAX} are allowed"
    ]


def test_a_rulebook_over_the_file_limit_is_refused(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {f"c{n:03d}.yaml": "not even read: [" for n in range(rules_loader.RULE_FILES_MAX + 1)})

    assert problems_of(root) == [
        f"{root / 'campaigns'}: holds {rules_loader.RULE_FILES_MAX + 1} rule files; at most {rules_loader.RULE_FILES_MAX} are allowed"
    ]


def test_duplicate_campaign_ids_across_files_are_refused(tmp_path: Path) -> None:
    other = CAMPAIGN_YAML.replace("Test campaign", "Another test campaign")
    root = write_rulebook(tmp_path, {"a.yaml": CAMPAIGN_YAML, "b.yaml": other})

    assert problems_of(root) == [
        f"{root / 'campaigns' / 'b.yaml'}:2: campaign.id: campaign id 'test-campaign' is already used in {root / 'campaigns' / 'a.yaml'}:2"
    ]


def test_an_example_may_name_a_rule_of_another_campaign(tmp_path: Path) -> None:
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
    text = broken(
        "        - {rule: lunch-10pct, subsidy_fen: 1000}",
        "        - {rule: partner/five, discount_fen: 500}\n        - {rule: lunch-10pct, subsidy_fen: 950}",
    )

    rulebook = load_rulebook(write_rulebook(tmp_path, {"partner.yaml": discount, "test.yaml": text}))

    assert rulebook.examples[0].expect_benefits == (("partner/five", "discount", 500), ("test-campaign/lunch-10pct", "subsidy", 950))
    assert rules_loader.run_examples(rulebook) == []


def test_funders_yaml_problems_are_reported_with_their_lines(tmp_path: Path) -> None:
    funders = FUNDERS_YAML + "  - {id: city_federation, name: Again, kind: city_union}\n"
    root = write_rulebook(tmp_path, {}, funders=funders)

    assert problems_of(root) == [
        f"{root / 'funders.yaml'}:4: funders[2].id: funder 'city_federation' is already listed as funders[0]",
        f"{root / 'funders.yaml'}:4: funders[2].kind: 'city_union' is not one of "
        "city_federation, district_federation, industry_union, partner_bank, employer",
    ]


def test_a_rulebook_without_funders_yaml_is_refused(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML}, funders=None)

    assert problems_of(root) == [f"{root / 'funders.yaml'}: missing: a rulebook needs funders.yaml"]


def test_a_directory_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: is not a directory"]


def test_a_sub_directory_of_campaigns_is_refused_rather_than_skipped(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML})
    (root / "campaigns" / "archive").mkdir()

    assert problems_of(root) == [f"{root / 'campaigns' / 'archive'}: sub-directories of campaigns/ are not read; move the files up"]


def test_a_campaigns_file_instead_of_a_directory_is_refused(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {})
    (root / "campaigns").rmdir()
    (root / "campaigns").write_text(CAMPAIGN_YAML, encoding="utf-8")

    assert problems_of(root) == [f"{root / 'campaigns'}: is not a directory; campaign files go in campaigns/"]


def test_a_rule_file_with_an_upper_case_suffix_is_refused_rather_than_skipped(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.YAML": CAMPAIGN_YAML, "notes.md": "not a rule file\n"})

    assert problems_of(root) == [f"{root / 'campaigns' / 'test.YAML'}: rule files end in .yaml or .yml, in lower case; rename it"]


def test_a_funders_yaml_that_is_a_directory_is_named_as_such(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {}, funders=None)
    (root / "funders.yaml").mkdir()

    assert problems_of(root) == [f"{root / 'funders.yaml'}: is not a file"]


def test_a_character_yaml_does_not_allow_is_named_by_its_line(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {}, funders=FUNDERS_YAML + "  - {id: other, name: A\x00B, kind: employer}\n")

    assert problems_of(root) == [f"{root / 'funders.yaml'}:4: YAML syntax: character #x0000 is not allowed in YAML"]


@pytest.mark.parametrize(
    ("funders", "expected"), [("funders: []\n", "funders: must not be empty"), ("funders:\n", "funders: has no value; give a list")]
)
def test_an_empty_list_that_is_required_is_not_told_to_be_left_out(tmp_path: Path, funders: str, expected: str) -> None:
    root = write_rulebook(tmp_path, {}, funders=funders)

    assert problems_of(root) == [f"{root / 'funders.yaml'}:1: {expected}"]


def test_a_directory_with_several_broken_files_reports_all_of_them(tmp_path: Path) -> None:
    funders = FUNDERS_YAML.replace("kind: partner_bank", "kind: bank")
    first = broken("weekdays: [mon, tue, wed, thu, fri]", "weekdays: [sunday]").replace("budget_fen: 1000000", "budget_fen: -1")
    second = broken("  id: test-campaign", "  id: second").replace("{per: card, period: day, uses_max: 1}", "{per: card, period: day}")
    third = "campaign:\n  id: third\n  name: [unclosed\n"
    root = write_rulebook(tmp_path, {"first.yaml": first, "second.yaml": second, "third.yaml": third}, funders=funders)

    problems = problems_of(root)

    campaigns = root / "campaigns"
    assert problems[:4] == [
        f"{root / 'funders.yaml'}:3: funders[1].kind: 'bank' is not one of city_federation, district_federation, industry_union, "
        "partner_bank, employer",
        f"{campaigns / 'first.yaml'}:{line_of(first, 'budget_fen')}: campaign.budget_fen: must be more than 0, got -1",
        f"{campaigns / 'first.yaml'}:{line_of(first, 'sunday')}: campaign.rules[0].when.weekdays[0]: "
        "'sunday' is not one of mon, tue, wed, thu, fri, sat, sun",
        f"{campaigns / 'second.yaml'}:{line_of(second, 'period: day}')}: campaign.rules[0].limits[0]: "
        "a limit needs uses_max, fen_max or both",
    ]
    assert len(problems) == 5
    assert problems[4].startswith(f"{campaigns / 'third.yaml'}:")
    assert "YAML syntax" in problems[4]


def test_the_error_message_lists_every_problem_one_per_line(tmp_path: Path) -> None:
    text = broken("budget_fen: 1000000", "budget_fen: 0").replace("uses_max: 1}", "uses_max: 0}")

    with pytest.raises(RulebookError) as refused:
        load_rulebook(write_rulebook(tmp_path, {"test.yaml": text}))

    assert str(refused.value).splitlines() == refused.value.problems
    assert len(refused.value.details) == 2
    assert refused.value.details[0].path == "campaign.budget_fen"
    assert refused.value.details[0].line == line_of(text, "budget_fen")


# -- the version ---------------------------------------------------------------------------


def test_the_version_is_twelve_hex_digits_and_stable_across_loads(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML})

    first, second = load_rulebook(root).version, load_rulebook(root).version

    assert first == second
    assert len(first) == 12
    assert int(first, 16) >= 0


def test_the_version_does_not_depend_on_where_the_rulebook_lives(tmp_path: Path) -> None:
    here = write_rulebook(tmp_path / "here", {"test.yaml": CAMPAIGN_YAML})
    there = write_rulebook(tmp_path / "there", {"test.yaml": CAMPAIGN_YAML})

    assert load_rulebook(here).version == load_rulebook(there).version


@pytest.mark.parametrize(
    "change",
    ["a comment in a campaign", "a value in a campaign", "a renamed campaign file", "a new campaign file", "a change to funders.yaml"],
)
def test_the_version_changes_when_a_rule_file_changes(tmp_path: Path, change: str) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML})
    before = load_rulebook(root).version
    campaign = root / "campaigns" / "test.yaml"

    if change == "a comment in a campaign":
        campaign.write_text(CAMPAIGN_YAML + "# reviewed\n", encoding="utf-8")
    elif change == "a value in a campaign":
        campaign.write_text(CAMPAIGN_YAML.replace("budget_fen: 1000000", "budget_fen: 1000001"), encoding="utf-8")
    elif change == "a renamed campaign file":
        campaign.rename(root / "campaigns" / "renamed.yaml")
    elif change == "a new campaign file":
        other = CAMPAIGN_YAML.replace("id: test-campaign", "id: other-campaign")
        (root / "campaigns" / "other.yaml").write_text(other, encoding="utf-8")
    else:
        (root / "funders.yaml").write_text(FUNDERS_YAML + "  - {id: employer_x, name: X, kind: employer}\n", encoding="utf-8")

    assert load_rulebook(root).version != before


def test_the_version_does_not_change_for_files_outside_the_rulebook(tmp_path: Path) -> None:
    root = write_rulebook(tmp_path, {"test.yaml": CAMPAIGN_YAML})
    before = load_rulebook(root).version

    (root / "README.md").write_text("notes\n", encoding="utf-8")
    (root / "campaigns" / "notes.txt").write_text("notes\n", encoding="utf-8")
    (root / "campaigns" / "test.yaml").write_text(CAMPAIGN_YAML, encoding="utf-8")  # rewritten, same bytes

    assert load_rulebook(root).version == before


def test_the_version_hash_separates_paths_from_contents() -> None:
    assert rules_loader.rulebook_version([("ab", b"c")]) != rules_loader.rulebook_version([("a", b"bc")])
    assert rules_loader.rulebook_version([("a", b"1"), ("b", b"2")]) == rules_loader.rulebook_version([("b", b"2"), ("a", b"1")])


# -- the index -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_rulebook_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo rulebook, copied so a concurrent edit of rules/ cannot change a test half-way."""
    copy = tmp_path_factory.mktemp("demo") / "rules"
    shutil.copytree(DEMO_RULES, copy)
    return copy


def refs(rules: tuple[Rule, ...]) -> list[str]:
    return [rule.ref for rule in rules]


def test_the_index_returns_only_the_rules_for_a_merchant_category_and_district(demo_rulebook_copy: Path) -> None:
    rulebook = load_rulebook(demo_rulebook_copy)

    assert refs(rulebook.candidates("m-wujin-dining-001", "dining", "wujin")) == [
        "partner-discounts-2026/dining-5pct",
        "city-dining-2026/dining-10pct",
        "wujin-weekend-2026/weekend-15pct",
        "model-worker-bonus-2026/bonus-10-yuan",
    ]
    assert refs(rulebook.candidates("m-wujin-dining-005", "dining", "wujin")) == [
        "city-dining-2026/dining-10pct",
        "wujin-weekend-2026/weekend-15pct",
        "model-worker-bonus-2026/bonus-10-yuan",
    ]
    assert refs(rulebook.candidates("m-jintan-lodging-001", "lodging", "jintan")) == [
        "partner-discounts-2026/room-night-30-yuan",
        "jintan-maoshan-tourism-2026/tourism-20pct",
        "model-worker-bonus-2026/bonus-10-yuan",
    ]
    assert refs(rulebook.candidates("m-xinbei-transport-001", "transport", "xinbei")) == [
        "bank-travel-2026/transport-8pct",
        "model-worker-bonus-2026/bonus-10-yuan",
    ]


def test_the_index_orders_discounts_first_then_priority_then_campaign_and_rule_ids(demo_rulebook_copy: Path) -> None:
    rulebook = load_rulebook(demo_rulebook_copy)

    assert refs(rulebook.candidates("m-xinbei-dining-001", "dining", "xinbei")) == [
        "partner-discounts-2026/xinbei-lunch-8pct",  # priority 50
        "partner-discounts-2026/dining-5pct",
        "city-dining-2026/dining-10pct",
        "model-worker-bonus-2026/bonus-10-yuan",  # priority 200
    ]


def test_the_index_never_returns_another_districts_or_categorys_rules(demo_rulebook_copy: Path) -> None:
    rulebook = load_rulebook(demo_rulebook_copy)

    by_merchant_id = 0
    for category in ("dining", "lodging", "transport", "travel", "shopping", "entertainment"):
        for district in ("wujin", "jintan", "liyang", "xinbei", "tianning", "zhonglou", "qishuyan"):
            for number in range(1, 9):  # the demo's partner rules name some of merchants 001-008
                merchant_id = f"m-{district}-{category}-{number:03d}"
                for rule in rulebook.candidates(merchant_id, category, district):
                    conditions = rule.conditions
                    assert conditions.categories is None or category in conditions.categories
                    assert conditions.districts is None or district in conditions.districts
                    assert conditions.merchant_ids is None or merchant_id in conditions.merchant_ids
                    by_merchant_id += conditions.merchant_ids is not None
    assert by_merchant_id > 0, "no rule naming merchants was returned: the merchant check above never ran"


# -- libyaml reads, PyYAML's parser answers what it refuses ----------------------


def loader_events(text: str, loader: type) -> list[tuple[object, ...]]:
    """What `_read_yaml` uses of each event: a node's kind, text, tag, implicit flags and line; a document's line."""
    used: list[tuple[object, ...]] = []
    for event in yaml.parse(text, Loader=loader):
        line = event.start_mark.line if event.start_mark is not None else None
        if isinstance(event, yaml.NodeEvent):
            used.append(
                (type(event).__name__, getattr(event, "value", None), getattr(event, "tag", None), getattr(event, "implicit", None), line)
            )
        elif isinstance(event, yaml.DocumentStartEvent):
            used.append(("DocumentStartEvent", line))
        else:
            used.append((type(event).__name__,))
    return used


def test_libyaml_is_what_reads_a_rule_file() -> None:
    """The fast parser is libyaml's: the 15-fold speed-up of docs/performance-rounds.md's twentieth round is there."""
    assert yaml.__with_libyaml__
    assert rules_loader._FAST_LOADER is yaml.CSafeLoader


def test_libyaml_and_pyyaml_give_the_loader_the_same_events_for_every_rule_file_we_ship_and_generate(tmp_path: Path) -> None:
    from loadtests.world import merchant_profile
    from loadtests.world import write_rulebook as write_world_rulebook

    write_world_rulebook(tmp_path / "world", [merchant_profile(j, seed=7) for j in range(200)], rule_count=300, seed=7, year=2026)
    files = sorted(DEMO_RULES.rglob("*.yaml")) + sorted((tmp_path / "world").rglob("*.yaml"))
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        assert loader_events(text, yaml.CSafeLoader) == loader_events(text, yaml.SafeLoader), path


_YAML_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_YAML_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), _YAML_TEXT, st.dates())
_YAML_DATA = st.recursive(
    _YAML_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_YAML_TEXT, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    data=_YAML_DATA,
    flow=st.sampled_from([None, False, True]),
    style=st.sampled_from([None, "'", '"', "|"]),
    indent=st.integers(2, 6),
    width=st.sampled_from([20, 80]),
)
def test_libyaml_and_pyyaml_give_the_loader_the_same_events_for_yaml_as_tools_write_it(
    data: object, flow: bool | None, style: str | None, indent: int, width: int
) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, default_style=style, indent=indent, width=width, allow_unicode=True)
    assert loader_events(text, yaml.CSafeLoader) == loader_events(text, yaml.SafeLoader)


def test_a_refusal_found_before_a_later_syntax_error_is_the_one_reported(tmp_path: Path) -> None:
    """The loader meets the events in the file's order: the alias on line 3 is its own refusal, reported before line 5's error."""
    root = write_rulebook(tmp_path, {"odd.yaml": "campaign: &top\n  id: x\n  name: *top\n  more:\n    a: b: c\n"})

    assert problems_of(root) == [f"{root / 'campaigns' / 'odd.yaml'}:3: YAML aliases (*name) are not supported; write the value out"]


def test_a_syntax_error_met_after_good_events_is_pyyaml_s_message_with_its_line(tmp_path: Path) -> None:
    """libyaml stops at line 4 ("not allowed in this context"); PyYAML's parser reads the file again and words the error."""
    root = write_rulebook(tmp_path, {"odd.yaml": "campaign:\n  id: x\n  name: y\n  more: a: b\n"})

    assert problems_of(root) == [f"{root / 'campaigns' / 'odd.yaml'}:4: YAML syntax: mapping values are not allowed here"]


def test_what_libyaml_takes_and_pyyaml_refused_loads() -> None:
    """A tab after a colon, a '?' inside a flow collection: PyYAML's parser refused them, libyaml reads them (docs/rules.md)."""
    text = "name:\tTest campaign\ntags: [x?y]\n"
    with pytest.raises(yaml.YAMLError):
        list(yaml.parse(text, Loader=yaml.SafeLoader))

    document = rules_loader._read_yaml(text)

    assert document.data == {"name": "Test campaign", "tags": ["x?y"]}
    assert document.lines == {(): 1, ("name",): 1, ("tags",): 2, ("tags", 0): 2}
