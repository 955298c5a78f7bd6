"""Generate a large, realistic rulebook: mostly per-merchant agreements, some city and district campaigns."""

from __future__ import annotations

import random
from datetime import date, time

from pos_engine.domain.rulebook import (
    CATEGORIES,
    DISTRICTS,
    Benefit,
    Campaign,
    Conditions,
    FunderShare,
    Limit,
    Rule,
    Rulebook,
)

MERCHANT_SHARE = 0.9  # partner agreements name their merchant; campaigns name a place


def generated_campaigns(rule_count: int, merchant_ids: list[str], seed: int = 48) -> list[Campaign]:
    """`rule_count` rules in campaigns of 50: per-merchant discounts and place-wide subsidies."""
    rng = random.Random(seed)
    campaigns: list[Campaign] = []
    per_campaign = 50
    for campaign_index in range(0, rule_count, per_campaign):
        campaign_id = f"gen-{campaign_index // per_campaign:04d}"
        rules: list[Rule] = []
        for rule_index in range(min(per_campaign, rule_count - campaign_index)):
            if rng.random() < MERCHANT_SHARE:
                conditions = Conditions(merchant_ids=frozenset({rng.choice(merchant_ids)}), amount_fen_min=rng.choice([None, 2000]))
                benefit = Benefit("discount", percent_bp=rng.choice([300, 500, 800]), amount_fen_max=3000)
                limits: tuple[Limit, ...] = ()
            else:
                conditions = Conditions(
                    categories=frozenset({rng.choice(CATEGORIES)}),
                    districts=frozenset(rng.sample(DISTRICTS, 2)),
                    weekdays=frozenset(rng.sample(range(7), 5)),
                )
                benefit = Benefit("subsidy", percent_bp=rng.choice([500, 1000]), amount_fen_max=2000)
                limits = (Limit("card", "month", uses_max=4, fen_max=5000),)
            rules.append(Rule(campaign_id, f"r{rule_index:03d}", benefit, conditions, priority=rng.randint(1, 200), limits=limits))
        campaigns.append(
            Campaign(
                campaign_id,
                campaign_id,
                date(2026, 1, 1),
                date(2027, 12, 31),
                tuple(rules),
                funders=(FunderShare("city_federation", 10_000),),
                budget_fen=10**10,
            )
        )
    return campaigns


def with_generated_rules(rulebook: Rulebook, rule_count: int, merchant_ids: list[str]) -> Rulebook:
    """The rulebook plus `rule_count` generated rules."""
    campaigns = [*rulebook.campaigns.values(), *generated_campaigns(rule_count, merchant_ids)]
    return Rulebook(f"{rulebook.version}+gen{rule_count}", campaigns, list(rulebook.funders.values()), rulebook.examples)


# --- A city-shaped rulebook for the rules micro-benchmark (loadtests/rules_bench.py) -------------------
#
# In a city most rules are partner agreements: one merchant's own discount for union members, so they
# grow with the number of partners. Place-wide campaigns (a category, a district, some weekdays, a
# member group) are a handful that the federations fund; they do not grow with the rulebook. So a
# 10-rule and a 10,000-rule rulebook share the same place-wide campaigns and differ only in how many
# partner agreements the same merchants have.

CITY_MEMBER_GROUPS = ("model_worker", "hardship", "machinery_union")
CITY_VALID_FROM = date(2026, 1, 1)
CITY_VALID_UNTIL = date(2027, 12, 31)
WORKDAYS = frozenset(range(5))
WEEKEND = frozenset({5, 6})


def city_merchants(count: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """`count` partner merchants as (merchant_id, category, district), spread at random over the city."""
    rng = random.Random(seed)
    return [(f"m-{index:05d}", rng.choice(CATEGORIES), rng.choice(DISTRICTS)) for index in range(count)]


def _place_campaign(
    campaign_id: str,
    funder_id: str,
    benefit: Benefit,
    conditions: Conditions,
    *,
    rule_limits: tuple[Limit, ...] = (),
    campaign_limits: tuple[Limit, ...] = (),
    priority: int = 100,
    exclusive: bool = False,
) -> Campaign:
    rule = Rule(campaign_id, "main", benefit, conditions, priority=priority, exclusive=exclusive, limits=rule_limits)
    return Campaign(
        campaign_id,
        campaign_id,
        CITY_VALID_FROM,
        CITY_VALID_UNTIL,
        (rule,),
        funders=(FunderShare(funder_id, 10_000),),
        budget_fen=50_000_000,
        limits=campaign_limits,
    )


def city_place_campaigns() -> list[Campaign]:
    """The place-wide campaigns, one rule each: the same eight in every city rulebook.

    Caps are set so that none binds on a fresh counter: a benchmark or an
    equivalence test that runs each swipe on empty counters sees every
    matching rule give its full benefit.
    """
    return [
        _place_campaign(
            "city-weekday-lunch",
            "city_federation",
            Benefit("subsidy", percent_bp=1000, amount_fen_max=2000),
            Conditions(categories=frozenset({"dining"}), weekdays=WORKDAYS, time_from=time(11), time_until=time(14), amount_fen_min=2000),
            rule_limits=(Limit("card", "day", uses_max=1),),
            campaign_limits=(Limit("card", "month", fen_max=5000),),
        ),
        _place_campaign(
            "city-model-workers",
            "city_federation",
            Benefit("subsidy", fixed_fen=1000),
            Conditions(member_groups=frozenset({"model_worker"}), amount_fen_min=3000),
            rule_limits=(Limit("card", "month", uses_max=4),),
            priority=50,
        ),
        _place_campaign(
            "wujin-weekend",
            "wujin_federation",
            Benefit("subsidy", percent_bp=1500, amount_fen_max=2000),
            Conditions(districts=frozenset({"wujin"}), weekdays=WEEKEND),
            campaign_limits=(Limit("card", "week", fen_max=6000),),
        ),
        _place_campaign(
            "liyang-jintan-tourism",
            "liyang_federation",
            Benefit("subsidy", percent_bp=2000, amount_fen_max=5000),
            Conditions(categories=frozenset({"lodging", "travel"}), districts=frozenset({"liyang", "jintan"})),
            rule_limits=(Limit("card", "year", uses_max=2),),
            priority=20,
            exclusive=True,
        ),
        _place_campaign(
            "hardship-groceries",
            "city_federation",
            Benefit("subsidy", percent_bp=2000, amount_fen_max=3000),
            Conditions(categories=frozenset({"shopping"}), member_groups=frozenset({"hardship"})),
            campaign_limits=(Limit("card", "month", fen_max=10_000),),
            priority=10,
        ),
        _place_campaign(
            "weekend-evenings",
            "city_federation",
            Benefit("subsidy", percent_bp=1000, amount_fen_max=1000),
            Conditions(categories=frozenset({"entertainment"}), weekdays=frozenset({4, 5}), time_from=time(18), time_until=time(22)),
        ),
        _place_campaign(
            "morning-commute",
            "city_federation",
            Benefit("subsidy", fixed_fen=200),
            Conditions(categories=frozenset({"transport"}), weekdays=WORKDAYS, time_from=time(7), time_until=time(9, 30)),
            rule_limits=(Limit("card", "day", uses_max=2),),
        ),
        _place_campaign(
            "machinery-union-canteens",
            "industry_union_machinery",
            Benefit("subsidy", percent_bp=500, amount_fen_max=800),
            Conditions(categories=frozenset({"dining"}), member_groups=frozenset({"machinery_union"})),
            priority=200,
        ),
    ]


def _partner_rule(campaign_id: str, rule_id: str, merchant_id: str, rng: random.Random) -> Rule:
    """One merchant's agreement: mostly a percentage discount, some fixed 'spend X, save Y' offers and co-funded subsidies."""
    amount_fen_min: int | None = None
    shape = rng.random()
    if shape < 0.7:
        benefit = Benefit("discount", percent_bp=rng.choice([300, 500, 800]), amount_fen_max=3000)
        amount_fen_min = rng.choice([None, None, 2000])
    elif shape < 0.9:
        benefit = Benefit("discount", fixed_fen=rng.choice([500, 1000]))
        amount_fen_min = rng.choice([5000, 10_000])
    else:
        benefit = Benefit("subsidy", percent_bp=500, amount_fen_max=1500)
    weekdays: frozenset[int] | None = None
    time_from: time | None = None
    time_until: time | None = None
    when = rng.random()
    if when < 0.15:
        weekdays = WORKDAYS
    elif when < 0.25:
        weekdays = WEEKEND
    elif when < 0.35:
        time_from, time_until = time(14), time(17)  # off-peak afternoons
    member_groups = frozenset({rng.choice(CITY_MEMBER_GROUPS)}) if rng.random() < 0.05 else None
    conditions = Conditions(
        merchant_ids=frozenset({merchant_id}),
        member_groups=member_groups,
        weekdays=weekdays,
        time_from=time_from,
        time_until=time_until,
        amount_fen_min=amount_fen_min,
    )
    limits = (Limit("card", "day", uses_max=1),) if rng.random() < 0.3 else ()
    return Rule(campaign_id, rule_id, benefit, conditions, priority=rng.randint(1, 200), exclusive=rng.random() < 0.1, limits=limits)


def city_campaigns(rule_count: int, merchants: list[tuple[str, str, str]], seed: int = 48) -> list[Campaign]:
    """`rule_count` rules: the eight place-wide campaigns, then partner agreements naming one merchant each.

    Partner agreements come in campaigns of 50 and name a merchant drawn
    uniformly from `merchants`, so with 10,000 merchants and 10,000 rules a
    merchant has one agreement on average (Poisson: some none, a few three).
    Below eight rules only the first `rule_count` place-wide campaigns are kept.
    """
    rng = random.Random(seed)
    campaigns = city_place_campaigns()[:rule_count]
    partner_count = rule_count - len(campaigns)
    per_campaign = 50
    for first in range(0, partner_count, per_campaign):
        campaign_id = f"partner-{first // per_campaign:04d}"
        rules = tuple(
            _partner_rule(campaign_id, f"r{index:03d}", rng.choice(merchants)[0], rng)
            for index in range(min(per_campaign, partner_count - first))
        )
        campaigns.append(
            Campaign(
                campaign_id,
                campaign_id,
                CITY_VALID_FROM,
                CITY_VALID_UNTIL,
                rules,
                funders=(FunderShare("city_federation", 10_000),),
                budget_fen=10**10,
            )
        )
    return campaigns


def city_rulebook(rule_count: int, merchants: list[tuple[str, str, str]], seed: int = 48) -> Rulebook:
    """A city-shaped rulebook of exactly `rule_count` rules over `merchants`."""
    rulebook = Rulebook(f"city-{rule_count}", city_campaigns(rule_count, merchants, seed))
    assert rulebook.rule_count == rule_count
    return rulebook
