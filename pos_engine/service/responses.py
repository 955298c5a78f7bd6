"""The JSON answers of the terminal API, built as plain dicts and encoded once.

Answers are encoded here, inside the use case, because the idempotency record
must hold the exact bytes the terminal got, to return them again on a retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from pos_engine.domain.evaluation import Explanation


def encode(body: dict[str, Any]) -> bytes:
    """Encode an answer: compact UTF-8 JSON in the dict's key order (orjson, chosen by measurement)."""
    return orjson.dumps(body)


def timestamp(at: datetime) -> str:
    return at.isoformat()


def benefit_lines(benefits: list[dict[str, Any]], sign: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "campaign_id": line["campaign_id"],
            "rule_id": line["rule_id"],
            "kind": line["kind"],
            "amount_fen": sign * line["amount_fen"],
        }
        for line in benefits
    ]


def explanation_lines(explanations: tuple[Explanation, ...]) -> list[dict[str, Any]]:
    return [
        {
            "campaign_id": line.campaign_id,
            "rule_id": line.rule_id,
            "outcome": line.outcome,
            "reason": line.reason,
            "wanted_fen": line.wanted_fen,
            "given_fen": line.given_fen,
        }
        for line in explanations
    ]


def authorisation_body(entry: Any, explanations: tuple[Explanation, ...] | None = None) -> dict[str, Any]:
    """An approved authorisation (a ledger entry row)."""
    body: dict[str, Any] = {
        "id": entry.entry_id,
        "request_id": entry.request_id,
        "status": "approved",
        "decline_code": None,
        "terminal_id": entry.terminal_id,
        "merchant_id": entry.merchant_id,
        "card_last4": entry.card_last4,
        "amount_fen": entry.amount_fen,
        "discount_fen": entry.discount_fen,
        "subsidy_fen": entry.subsidy_fen,
        "payable_fen": entry.payable_fen,
        "benefits": benefit_lines(entry.benefits),
        "rules_version": entry.rules_version,
        "occurred_at": timestamp(entry.occurred_at),
        "recorded_at": timestamp(entry.recorded_at),
    }
    if explanations is not None:
        body["explanations"] = explanation_lines(explanations)
    return body


def decline_body(decline: Any, explanations: tuple[Explanation, ...] | None = None) -> dict[str, Any]:
    """A declined authorisation (a decline row)."""
    body: dict[str, Any] = {
        "id": decline.decline_id,
        "request_id": decline.request_id,
        "status": "declined",
        "decline_code": decline.decline_code,
        "terminal_id": decline.terminal_id,
        "merchant_id": decline.merchant_id,
        "card_last4": decline.card_last4,
        "amount_fen": decline.amount_fen,
        "discount_fen": 0,
        "subsidy_fen": 0,
        "payable_fen": decline.amount_fen,
        "benefits": [],
        "rules_version": decline.rules_version,
        "occurred_at": timestamp(decline.occurred_at),
        "recorded_at": timestamp(decline.recorded_at),
    }
    if explanations is not None:
        body["explanations"] = explanation_lines(explanations)
    return body


def adjustment_body(entry: Any) -> dict[str, Any]:
    """A reversal or refund entry; amounts shown positive, as what is given back."""
    return {
        "id": entry.entry_id,
        "kind": entry.kind,
        "authorisation_id": entry.authorisation_id,
        "request_id": entry.request_id,
        "amount_fen": -entry.amount_fen,
        "discount_fen": -entry.discount_fen,
        "subsidy_fen": -entry.subsidy_fen,
        "payable_fen": -entry.payable_fen,
        "benefits": benefit_lines(entry.benefits, sign=-1),
        "recorded_at": timestamp(entry.recorded_at),
    }
