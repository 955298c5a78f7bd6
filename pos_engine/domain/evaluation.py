"""Evaluate a swipe against the compiled rulebook: conditions, then a plan of capped steps.

Evaluation is split in two so that caps can be reserved atomically:
1. `plan_swipe` (pure, no I/O) checks every indexed rule's conditions and turns
   each matching rule into a `PlanStep`: its benefit and the counters (caps and
   budgets) it is subject to, with their limits.
2. `execute_plan` runs the steps in order against current counter values: each
   step gives min(its benefit on what is still payable, room under each cap).
   The counter stores run exactly this inside one atomic operation (the SQL
   store under a lock, Redis in a Lua script that mirrors this function).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import NamedTuple

from pos_engine.domain.clock import local, period_end, period_key
from pos_engine.domain.money import MoneyInvariantError, require
from pos_engine.domain.rulebook import Benefit, Campaign, Limit, Rule, Rulebook

UNIT_FEN = "fen"
UNIT_USES = "uses"

# Decline codes are part of the contract: terminals and reports match on them.
DECLINE_CARD_UNKNOWN = "card_unknown"
DECLINE_CARD_INACTIVE = "card_inactive"
DECLINE_MEMBER_NOT_IN_SERVICE = "member_not_in_service"
DECLINE_ANNUAL_REVIEW_DUE = "annual_review_due"
DECLINE_MERCHANT_INACTIVE = "merchant_inactive"
DECLINE_NO_BENEFIT = "no_benefit"
DECLINE_VOIDED_BY_TERMINAL = "voided_by_terminal"
DECLINE_CODES = (
    DECLINE_CARD_UNKNOWN,
    DECLINE_CARD_INACTIVE,
    DECLINE_MEMBER_NOT_IN_SERVICE,
    DECLINE_ANNUAL_REVIEW_DUE,
    DECLINE_MERCHANT_INACTIVE,
    DECLINE_NO_BENEFIT,
    DECLINE_VOIDED_BY_TERMINAL,
)


@dataclass(frozen=True, slots=True)
class Swipe:
    """What the rules see of one swipe."""

    amount_fen: int
    occurred_at: datetime
    merchant_id: str
    category: str
    district: str
    card_ref: str  # a stable, non-secret card identifier for per-card counters
    member_groups: frozenset[str] = frozenset()


# CounterRef, PlanStep, Skipped, Plan and StepOutcome are made for every swipe, several times over:
# NamedTuples, immutable like the rulebook's frozen dataclasses and cheaper to build (a frozen
# dataclass's __init__ costs twice a NamedTuple's). On the hot paths below they are made by
# tuple.__new__ itself, which skips the NamedTuple's own __new__, a Python function: half the cost. It
# checks neither the number of fields nor their types: a field added to one of them must be added at
# every such call (tests/unit/test_plan_edges.py checks that each one built there is whole).
_tuple_new = tuple.__new__


class CounterRef(NamedTuple):
    """One counter a step is subject to: key, unit, the limit, and its label for explanations."""

    key: str
    unit: str  # UNIT_FEN or UNIT_USES
    limit: int
    label: str


class PlanStep(NamedTuple):
    """A matching rule with the counters it must stay under."""

    rule: Rule
    counters: tuple[CounterRef, ...]

    @property
    def benefit(self) -> Benefit:
        return self.rule.benefit


class Skipped(NamedTuple):
    """A rule that was looked at and did not match: which condition failed."""

    rule: Rule
    condition: str


class Plan(NamedTuple):
    """The steps to run, in order, and the rules that did not match."""

    amount_fen: int
    steps: tuple[PlanStep, ...]
    skipped: tuple[Skipped, ...]


class StepOutcome(NamedTuple):
    """What one step gave and, if less than it wanted, why."""

    given_fen: int
    wanted_fen: int
    stopped_by: str | None  # a cap label, 'exclusive:<rule ref>', or None


class _Moment:
    """The swipe's time in Asia/Shanghai, worked out once per swipe rather than once per rule."""

    __slots__ = ("at_local", "date", "period_keys", "time_of_day", "weekday")

    def __init__(self, at: datetime) -> None:
        self.at_local = local(at)
        self.date = self.at_local.date()
        self.weekday = self.at_local.weekday()
        self.time_of_day = self.at_local.time()  # naive: time() drops the zone
        self.period_keys: dict[str, str] = {}

    def period_key(self, period: str) -> str:
        key = self.period_keys.get(period)
        if key is None:
            key = self.period_keys[period] = period_key(self.at_local, period)
        return key


def _condition_failure(rule: Rule, swipe: Swipe, moment: _Moment) -> str | None:
    """Return the name of the first condition that fails, or None if all hold."""
    c = rule.conditions
    if c.merchant_ids is not None and swipe.merchant_id not in c.merchant_ids:
        return "merchant_ids"
    if c.categories is not None and swipe.category not in c.categories:
        return "categories"
    if c.districts is not None and swipe.district not in c.districts:
        return "districts"
    if c.member_groups is not None and not (c.member_groups & swipe.member_groups):
        return "member_groups"
    if c.weekdays is not None and moment.weekday not in c.weekdays:
        return "weekdays"
    if c.time_from is not None and moment.time_of_day < c.time_from:
        return "time_of_day"
    if c.time_until is not None and moment.time_of_day >= c.time_until:
        return "time_of_day"
    if c.date_from is not None and moment.date < c.date_from:
        return "dates"
    if c.date_until is not None and moment.date > c.date_until:
        return "dates"
    if c.amount_fen_min is not None and swipe.amount_fen < c.amount_fen_min:
        return "amount_fen_min"
    return None


@dataclass(frozen=True, slots=True)
class _CapTemplate:
    """One cap of a rule, as far as it is known before the swipe: its key is head + subject + mid + period key + suffix."""

    per_card: bool  # whose id goes into the key: the card's, else the merchant's
    head: str
    mid: str
    period: str
    suffix: str
    unit: str
    limit: int
    label: str


def _cap_templates(owner: str, prefix: str, limits: tuple[Limit, ...]) -> list[_CapTemplate]:
    """The limits' counters in order, uses before fen; two caps on one key (same per, period and unit) keep the tighter.

    Otherwise a step would add to that counter twice and overrun the tighter cap.
    Keys of different limits differ in per, period or unit, so merging here is
    merging by key: the merged cap keeps the first one's place.
    """
    merged: dict[tuple[str, str, str], _CapTemplate] = {}
    for limit in limits:
        for unit, bound in ((UNIT_USES, limit.uses_max), (UNIT_FEN, limit.fen_max)):
            if bound is None:
                continue
            template = _CapTemplate(
                per_card=limit.per == "card",
                head=f"{prefix}:{limit.per}:",
                mid=f":{limit.period}:",
                period=limit.period,
                suffix=f":{unit}",
                unit=unit,
                limit=bound,
                label=limit.label(owner, unit),
            )
            known = merged.get((limit.per, limit.period, unit))
            if known is None or template.limit < known.limit:
                merged[(limit.per, limit.period, unit)] = template
    return list(merged.values())


def counter_period_end(key: str) -> datetime | None:
    """When the period of counter `key` ends, in Asia/Shanghai; None for a counter that lasts as long as its
    campaign: a cap of the "campaign" period, a budget.

    A cap's key ends in period, period key and unit (`_cap_templates`); a budget's in ":budget:fen".
    """
    parts = key.rsplit(":", 3)
    return _period_end(parts[1], parts[2]) if len(parts) == 4 else None


_period_end = lru_cache(maxsize=4096)(period_end)


@dataclass(frozen=True, slots=True)
class _RuleFacts:
    """What evaluation needs of a rule beyond its conditions, worked out once per rule (`Rulebook.derived`).

    `caps` are the rule's caps, then its campaign's, as key templates; `budget` the campaign's budget
    counter, if it has one. Without caps, `budget` is every counter a step is subject to, the same for every swipe.
    """

    valid_from: date  # the campaign's
    valid_until: date
    caps: tuple[_CapTemplate, ...]
    budget: tuple[CounterRef, ...]


def _rule_facts(rule: Rule, campaign: Campaign) -> _RuleFacts:
    """The campaign's validity; the rule's caps, its campaign's caps, the campaign's budget."""
    caps = _cap_templates("rule", f"rule:{rule.ref}", rule.limits)
    caps += _cap_templates("campaign", f"campaign:{campaign.campaign_id}", campaign.limits)
    budget: tuple[CounterRef, ...] = ()
    if campaign.budget_fen is not None:
        budget = (CounterRef(f"campaign:{campaign.campaign_id}:budget:{UNIT_FEN}", UNIT_FEN, campaign.budget_fen, "campaign/budget/fen"),)
    return _RuleFacts(campaign.valid_from, campaign.valid_until, tuple(caps), budget)


def _counters(facts: _RuleFacts, swipe: Swipe, moment: _Moment) -> tuple[CounterRef, ...]:
    counters = []
    for cap in facts.caps:
        key = cap.head + (swipe.card_ref if cap.per_card else swipe.merchant_id) + cap.mid + moment.period_key(cap.period) + cap.suffix
        counters.append(_tuple_new(CounterRef, (key, cap.unit, cap.limit, cap.label)))
    return (*counters, *facts.budget)


def plan_swipe(rulebook: Rulebook, swipe: Swipe) -> Plan:
    """Check the indexed rules' conditions and build the capped steps; no I/O."""
    moment = _Moment(swipe.occurred_at)
    today = moment.date
    steps: list[PlanStep] = []
    skipped: list[Skipped] = []
    derived = rulebook.derived
    for rule in rulebook.candidates(swipe.merchant_id, swipe.category, swipe.district):
        facts: _RuleFacts | None = derived.get(id(rule))
        if facts is None:
            facts = derived[id(rule)] = _rule_facts(rule, rulebook.campaigns[rule.campaign_id])
        if not facts.valid_from <= today <= facts.valid_until:
            skipped.append(_tuple_new(Skipped, (rule, "campaign_validity")))
            continue
        failure = _condition_failure(rule, swipe, moment)
        if failure is not None:
            skipped.append(_tuple_new(Skipped, (rule, failure)))
            continue
        counters = _counters(facts, swipe, moment) if facts.caps else facts.budget
        steps.append(_tuple_new(PlanStep, (rule, counters)))
    return _tuple_new(Plan, (swipe.amount_fen, tuple(steps), tuple(skipped)))


def execute_plan(plan: Plan, counters: MutableMapping[str, int]) -> list[StepOutcome]:
    """Run the steps in order against `counters`, updating them in place.

    This is the reference implementation; the Redis Lua script mirrors it
    line by line and a property test holds the two together.
    """
    payable_fen = plan.amount_fen
    stopped_kinds: dict[str, str] = {}
    outcomes: list[StepOutcome] = []
    for rule, step_counters in plan.steps:
        benefit = rule.benefit
        kind = benefit.kind
        wanted = benefit.wanted_fen(payable_fen)
        if kind in stopped_kinds:
            outcomes.append(_tuple_new(StepOutcome, (0, wanted, f"exclusive:{stopped_kinds[kind]}")))
            continue
        given = wanted
        stopped_by: str | None = None
        for key, unit, limit, label in step_counters:
            room = max(limit - counters.get(key, 0), 0)
            if unit == UNIT_USES:
                if room < 1:
                    given, stopped_by = 0, label
                    break
            elif room < given:
                given, stopped_by = room, label
        if given > 0:
            for key, unit, _limit, _label in step_counters:
                counters[key] = counters.get(key, 0) + (given if unit == UNIT_FEN else 1)
            payable_fen -= given
            if rule.exclusive:
                stopped_kinds[kind] = rule.ref
        outcomes.append(_tuple_new(StepOutcome, (given, wanted, stopped_by)))
    require(payable_fen >= 0, "benefits never exceed the amount")
    return outcomes


def counter_deltas(plan: Plan, outcomes: list[StepOutcome]) -> dict[str, int]:
    """The counter increments that `outcomes` made, summed per key."""
    deltas: dict[str, int] = {}
    for step, outcome in zip(plan.steps, outcomes, strict=True):
        if outcome.given_fen <= 0:
            continue
        for counter in step.counters:
            deltas[counter.key] = deltas.get(counter.key, 0) + (outcome.given_fen if counter.unit == UNIT_FEN else 1)
    return deltas


@dataclass(frozen=True)
class BenefitLine:
    """One rule's contribution to a decision."""

    campaign_id: str
    rule_id: str
    kind: str
    amount_fen: int


@dataclass(frozen=True)
class Explanation:
    """Why a rule applied, applied partly, or did not apply."""

    campaign_id: str
    rule_id: str
    outcome: str  # applied | partly_applied | not_applied
    reason: str | None
    wanted_fen: int
    given_fen: int


@dataclass(frozen=True)
class Decision:
    """The engine's answer to a swipe. A decline is a value, not an exception."""

    status: str  # approved | declined
    amount_fen: int
    decline_code: str | None = None
    discount_fen: int = 0
    subsidy_fen: int = 0
    payable_fen: int = 0
    benefits: tuple[BenefitLine, ...] = ()
    rules_version: str = ""
    explanations: tuple[Explanation, ...] = ()
    counter_deltas: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if not (
            self.discount_fen >= 0
            and self.subsidy_fen >= 0
            and self.payable_fen >= 0
            and self.discount_fen + self.subsidy_fen + self.payable_fen == self.amount_fen
        ):  # the message is made only when it fails: every swipe makes a Decision
            raise MoneyInvariantError(
                f"discount {self.discount_fen} + subsidy {self.subsidy_fen} + payable {self.payable_fen} "
                f"== amount {self.amount_fen}, none below 0"
            )

    @classmethod
    def decline(cls, code: str, amount_fen: int, rules_version: str, explanations: tuple[Explanation, ...] = ()) -> Decision:
        assert code in DECLINE_CODES
        return cls(
            status="declined",
            decline_code=code,
            amount_fen=amount_fen,
            payable_fen=amount_fen,
            rules_version=rules_version,
            explanations=explanations,
        )


def explain(plan: Plan, outcomes: list[StepOutcome]) -> tuple[Explanation, ...]:
    """Explain every rule looked at: applied, partly (which cap), or not (which condition)."""
    lines: list[Explanation] = []
    for step, outcome in zip(plan.steps, outcomes, strict=True):
        rule = step.rule
        if outcome.given_fen <= 0:
            reason = outcome.stopped_by or "zero_benefit"
            lines.append(Explanation(rule.campaign_id, rule.rule_id, "not_applied", reason, outcome.wanted_fen, 0))
        elif outcome.stopped_by is not None:
            lines.append(
                Explanation(rule.campaign_id, rule.rule_id, "partly_applied", outcome.stopped_by, outcome.wanted_fen, outcome.given_fen)
            )
        else:
            lines.append(Explanation(rule.campaign_id, rule.rule_id, "applied", None, outcome.wanted_fen, outcome.given_fen))
    for skip in plan.skipped:
        lines.append(Explanation(skip.rule.campaign_id, skip.rule.rule_id, "not_applied", f"condition:{skip.condition}", 0, 0))
    return tuple(lines)


def decide(plan: Plan, outcomes: list[StepOutcome], rules_version: str, with_explanations: bool = False) -> Decision:
    """Turn a plan's outcomes into a decision: approved if any benefit was given."""
    benefits = tuple(
        BenefitLine(step.rule.campaign_id, step.rule.rule_id, step.benefit.kind, outcome.given_fen)
        for step, outcome in zip(plan.steps, outcomes, strict=True)
        if outcome.given_fen > 0
    )
    explanations = explain(plan, outcomes) if with_explanations else ()
    if not benefits:
        return Decision.decline(DECLINE_NO_BENEFIT, plan.amount_fen, rules_version, explanations)
    discount_fen = sum(line.amount_fen for line in benefits if line.kind == "discount")
    subsidy_fen = sum(line.amount_fen for line in benefits if line.kind == "subsidy")
    return Decision(
        status="approved",
        amount_fen=plan.amount_fen,
        discount_fen=discount_fen,
        subsidy_fen=subsidy_fen,
        payable_fen=plan.amount_fen - discount_fen - subsidy_fen,
        benefits=benefits,
        rules_version=rules_version,
        explanations=explanations,
        counter_deltas=counter_deltas(plan, outcomes),
    )
