"""What a ledger entry records of the money: benefit lines, and the claw-back of a reversal or refund.

Shared by the swipe use cases and by anything else that writes ledger entries
(the load-test world), so every entry is computed one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pos_engine.domain.evaluation import UNIT_FEN, Decision, Plan
from pos_engine.domain.money import require, split_cumulative
from pos_engine.domain.rulebook import Rulebook


def benefit_lines(plan: Plan, decision: Decision, rulebook: Rulebook) -> list[dict[str, Any]]:
    """The entry's benefit lines: each with the counters it moved and, for a subsidy, its funders' shares."""
    given = {(line.campaign_id, line.rule_id): line.amount_fen for line in decision.benefits}
    lines: list[dict[str, Any]] = []
    for step in plan.steps:
        amount_fen = given.get((step.rule.campaign_id, step.rule.rule_id), 0)
        if amount_fen <= 0:
            continue
        line: dict[str, Any] = {
            "campaign_id": step.rule.campaign_id,
            "rule_id": step.rule.rule_id,
            "kind": step.benefit.kind,
            "amount_fen": amount_fen,
            "counters": [[counter.key, counter.unit] for counter in step.counters],
        }
        campaign = rulebook.campaigns.get(step.rule.campaign_id)
        if step.benefit.kind == "subsidy" and campaign is not None:
            line["funders"] = [[share.funder_id, share.share_bp] for share in campaign.funders]
        lines.append(line)
    return lines


@dataclass(frozen=True)
class ClawBack:
    """What one reversal or refund gives back, as positive fen, with its negative lines and counter deltas."""

    discount_fen: int
    subsidy_fen: int
    payable_fen: int
    lines: list[dict[str, Any]]
    counter_deltas: dict[str, int]


def claw_back(
    amount_fen: int, payable_fen: int, benefits: Sequence[dict[str, Any]], given_back_before_fen: int, amount_back_fen: int
) -> ClawBack:
    """Give back `amount_back_fen` of an authorisation of which `given_back_before_fen` was given back already.

    Pro rata on the *cumulative* amount given back, so a series of partial
    refunds ends exactly at the authorisation's totals and never goes negative.
    Fen go back to every cap and budget as they are clawed back; a use goes
    back when the whole amount has been given back.
    """
    weights = [payable_fen] + [line["amount_fen"] for line in benefits]
    before = split_cumulative(given_back_before_fen, amount_fen, weights)
    after = split_cumulative(given_back_before_fen + amount_back_fen, amount_fen, weights)
    shares = [new - old for new, old in zip(after, before, strict=True)]
    fully_given_back = given_back_before_fen + amount_back_fen == amount_fen
    lines: list[dict[str, Any]] = []
    deltas: dict[str, int] = {}
    for line, share in zip(benefits, shares[1:], strict=True):
        for key, unit in line["counters"]:
            delta = -share if unit == UNIT_FEN else (-1 if fully_given_back else 0)
            if delta:
                deltas[key] = deltas.get(key, 0) + delta
        if share:
            lines.append({**{key: value for key, value in line.items() if key != "amount_fen"}, "amount_fen": -share})
    discount_fen = sum(-line["amount_fen"] for line in lines if line["kind"] == "discount")
    subsidy_fen = sum(-line["amount_fen"] for line in lines if line["kind"] == "subsidy")
    require(discount_fen + subsidy_fen + shares[0] == amount_back_fen, "a claw-back adds up to the amount given back")
    return ClawBack(discount_fen, subsidy_fen, shares[0], lines, deltas)
