"""The rulebook: campaigns, rules, conditions, benefits and limits, compiled into an index.

The YAML loader (pos_engine.rules_loader) builds these frozen dataclasses; the
engine never sees a rule it could not compile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any, Literal

from pos_engine.domain.money import percent_of

CATEGORIES = ("dining", "lodging", "transport", "travel", "shopping", "entertainment")
DISTRICTS = ("wujin", "jintan", "liyang", "xinbei", "tianning", "zhonglou", "qishuyan")
# Ids a rulebook names: campaigns, rules, funders and member groups; and merchants. The CSV imports
# take group names and merchant ids in the same shapes, so that every one of them can be named in a rule.
ID_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
ID_HINT = "lower-case letters, digits, '-' and '_', beginning and ending with a letter or digit, at most 64 characters"
MERCHANT_ID_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
MERCHANT_ID_HINT = "letters, digits, '.', '-' and '_', beginning and ending with a letter or digit, at most 64 characters"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BENEFIT_KINDS = ("discount", "subsidy")
LIMIT_SUBJECTS = ("card", "merchant")

BenefitKind = Literal["discount", "subsidy"]
Period = Literal["day", "week", "month", "year", "campaign"]
LimitSubject = Literal["card", "merchant"]


@dataclass(frozen=True, slots=True)
class Limit:
    """A cap per card or per merchant per period, in uses and/or fen."""

    per: LimitSubject
    period: Period
    uses_max: int | None = None
    fen_max: int | None = None

    def label(self, owner: str, unit: str) -> str:
        """Name the cap for explanations, with whose it is (a rule's own or its campaign's): 'campaign/card/month/fen'."""
        return f"{owner}/{self.per}/{self.period}/{unit}"


@dataclass(frozen=True, slots=True)
class Benefit:
    """A discount (given by the merchant) or a subsidy (paid by the funders)."""

    kind: BenefitKind
    percent_bp: int | None = None
    amount_fen_max: int | None = None
    fixed_fen: int | None = None

    def __post_init__(self) -> None:
        assert (self.percent_bp is None) != (self.fixed_fen is None)

    def wanted_fen(self, payable_fen: int) -> int:
        """What this benefit gives on `payable_fen`, before any cap."""
        if self.percent_bp is not None:
            wanted = percent_of(payable_fen, self.percent_bp)
            if self.amount_fen_max is not None:
                wanted = min(wanted, self.amount_fen_max)
            return wanted
        assert self.fixed_fen is not None
        return min(self.fixed_fen, payable_fen)


@dataclass(frozen=True, slots=True)
class Conditions:
    """When a rule applies; None means 'any'. All given conditions must hold."""

    categories: frozenset[str] | None = None
    merchant_ids: frozenset[str] | None = None
    districts: frozenset[str] | None = None
    member_groups: frozenset[str] | None = None  # the member must be in at least one
    weekdays: frozenset[int] | None = None  # 0 = Monday, in Asia/Shanghai
    time_from: time | None = None  # [time_from, time_until) in Asia/Shanghai
    time_until: time | None = None
    date_from: date | None = None  # inclusive, in Asia/Shanghai
    date_until: date | None = None  # inclusive
    amount_fen_min: int | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One benefit under conditions, with its own limits."""

    campaign_id: str
    rule_id: str
    benefit: Benefit
    conditions: Conditions = field(default_factory=Conditions)
    priority: int = 100
    exclusive: bool = False
    limits: tuple[Limit, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.campaign_id}/{self.rule_id}"


@dataclass(frozen=True, slots=True)
class FunderShare:
    """A funder's share of a campaign's subsidies, in basis points."""

    funder_id: str
    share_bp: int


@dataclass(frozen=True, slots=True)
class Funder:
    """Who pays subsidies: the city federation, a district federation, an industry union, the bank."""

    funder_id: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class Example:
    """A worked example a rule file carries: a swipe and the benefits it must get."""

    source: str
    name: str
    amount_fen: int
    occurred_at: str
    merchant_id: str
    category: str
    district: str
    member_groups: frozenset[str]
    expect_benefits: tuple[tuple[str, str, int], ...]  # (campaign_id/rule_id, kind, amount_fen)


@dataclass(frozen=True, slots=True)
class Campaign:
    """A funded programme: validity window, optional budget, shared limits, rules."""

    campaign_id: str
    name: str
    valid_from: date
    valid_until: date
    rules: tuple[Rule, ...]
    funders: tuple[FunderShare, ...] = ()
    budget_fen: int | None = None
    limits: tuple[Limit, ...] = ()
    source: str = ""


def order_key(rule: Rule) -> tuple[int, int, str, str]:
    """Discounts first, then subsidies; ascending priority; ties by campaign id, then rule id."""
    return (BENEFIT_KINDS.index(rule.benefit.kind), rule.priority, rule.campaign_id, rule.rule_id)


class Rulebook:
    """The compiled rulebook: rules indexed by merchant and by (category, district).

    A rule that names merchants is indexed under those merchants only; every
    other rule is indexed under each (category, district) pair it can match, so
    a swipe looks at two pre-sorted lists and never scans the whole book.
    """

    def __init__(
        self,
        version: str,
        campaigns: Sequence[Campaign],
        funders: Sequence[Funder] = (),
        examples: Sequence[Example] = (),
    ) -> None:
        self.version = version
        self.campaigns = {campaign.campaign_id: campaign for campaign in campaigns}
        self.funders = {funder.funder_id: funder for funder in funders}
        self.examples = tuple(examples)
        by_merchant: dict[str, list[Rule]] = {}
        by_place: dict[tuple[str, str], list[Rule]] = {}
        for campaign in campaigns:
            for rule in campaign.rules:
                conditions = rule.conditions
                if conditions.merchant_ids is not None:
                    for merchant_id in conditions.merchant_ids:
                        by_merchant.setdefault(merchant_id, []).append(rule)
                    continue
                # None means any; an empty set matches nothing, so it is indexed nowhere.
                categories = CATEGORIES if conditions.categories is None else conditions.categories
                districts = DISTRICTS if conditions.districts is None else conditions.districts
                for category in categories:
                    for district in districts:
                        by_place.setdefault((category, district), []).append(rule)
        self._by_merchant = {key: tuple(sorted(rules, key=order_key)) for key, rules in by_merchant.items()}
        self._by_place = {key: tuple(sorted(rules, key=order_key)) for key, rules in by_place.items()}
        self._merged: dict[tuple[str, str, str], tuple[Rule, ...]] = {}
        # What evaluation works out once per rule rather than once per swipe (its campaign's
        # validity, its counters' key templates), keyed by id(rule): every rule lives as long as
        # this rulebook, so an id cannot be reused while it is here.
        self.derived: dict[int, Any] = {}

    @property
    def rule_count(self) -> int:
        return sum(len(campaign.rules) for campaign in self.campaigns.values())

    def candidates(self, merchant_id: str, category: str, district: str) -> tuple[Rule, ...]:
        """The rules indexed for this merchant and place, in evaluation order."""
        key = (merchant_id, category, district)
        merged = self._merged.get(key)
        if merged is None:
            own = self._by_merchant.get(merchant_id, ())
            place = self._by_place.get((category, district), ())
            merged = tuple(sorted(own + place, key=order_key)) if own else place
            if len(self._merged) < 100_000:  # bounded: at most one entry per merchant
                self._merged[key] = merged
        return merged
