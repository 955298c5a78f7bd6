"""Generate a large, realistic rulebook: mostly per-merchant agreements, some city and district campaigns."""

from __future__ import annotations

import random
from datetime import date

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
