"""Typed, immutable results of the terminal API, and their parsers.

Amounts are integer fen. Parsers raise `ValueError` (or `KeyError`/`TypeError`)
when an answer does not match the contract; the client turns that into
`UnexpectedResponseError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

AuthorisationStatus = Literal["approved", "declined"]
BenefitKind = Literal["discount", "subsidy"]
AdjustmentKind = Literal["reversal", "refund"]
ExplanationOutcome = Literal["applied", "partly_applied", "not_applied"]
RequestReversalOutcome = Literal["reversed", "already_reversed", "nothing_to_reverse"]

DECLINE_CODES = frozenset(
    {
        "card_unknown",
        "card_inactive",
        "member_not_in_service",
        "annual_review_due",
        "merchant_inactive",
        "no_benefit",
        "voided_by_terminal",
    }
)
"""The decline codes the contract names; `decline_code` may carry newer ones."""


@dataclass(frozen=True)
class Benefit:
    """One discount or subsidy that a rule gave (or, on an adjustment, takes back)."""

    campaign_id: str
    rule_id: str
    kind: BenefitKind
    amount_fen: int


@dataclass(frozen=True)
class Explanation:
    """Why one rule applied, applied in part, or did not apply (`explain=True`)."""

    campaign_id: str
    rule_id: str
    outcome: ExplanationOutcome
    reason: str | None
    wanted_fen: int
    given_fen: int


@dataclass(frozen=True)
class Authorisation:
    """The engine's answer to one swipe; `status` says approved or declined.

    `discount_fen + subsidy_fen + payable_fen == amount_fen` always holds.
    Charge the customer `charge_fen`.
    """

    id: str
    request_id: str
    status: AuthorisationStatus
    decline_code: str | None
    terminal_id: str
    merchant_id: str
    card_last4: str
    amount_fen: int
    discount_fen: int
    subsidy_fen: int
    payable_fen: int
    benefits: tuple[Benefit, ...]
    rules_version: str
    occurred_at: datetime
    recorded_at: datetime
    explanations: tuple[Explanation, ...] | None
    """Present only when the authorisation was made with `explain=True`."""

    @property
    def approved(self) -> bool:
        """Whether the swipe was approved."""
        return self.status == "approved"

    @property
    def declined(self) -> bool:
        """Whether the swipe was declined (no discount, no subsidy)."""
        return self.status == "declined"

    @property
    def charge_fen(self) -> int:
        """What the till charges: `payable_fen` when approved, else the full amount."""
        return self.payable_fen if self.approved else self.amount_fen


@dataclass(frozen=True)
class Adjustment:
    """A reversal (full void) or refund of an authorisation; amounts are what is given back."""

    id: str
    kind: AdjustmentKind
    authorisation_id: str
    request_id: str
    amount_fen: int
    discount_fen: int
    subsidy_fen: int
    payable_fen: int
    benefits: tuple[Benefit, ...]
    recorded_at: datetime


@dataclass(frozen=True)
class AuthorisationDetails(Authorisation):
    """An authorisation as `get()` shows it now, with its reversal and refunds."""

    reversed: bool
    refunded_fen: int
    adjustments: tuple[Adjustment, ...]


@dataclass(frozen=True)
class RequestReversal:
    """The answer to `POST /v1/reversals`: what voiding a request by its id did."""

    original_request_id: str
    outcome: RequestReversalOutcome
    authorisation_id: str | None
    reversal: Adjustment | None


def parse_authorisation(data: Mapping[str, Any]) -> Authorisation:
    """Read an authorisation answer."""
    return Authorisation(**_authorisation_fields(data))


def parse_authorisation_details(data: Mapping[str, Any]) -> AuthorisationDetails:
    """Read the answer of `GET /v1/authorisations/{id}`."""
    return AuthorisationDetails(
        **_authorisation_fields(data),
        reversed=_bool(data, "reversed"),
        refunded_fen=_int(data, "refunded_fen"),
        adjustments=tuple(parse_adjustment(item) for item in _list(data, "adjustments")),
    )


def parse_adjustment(data: Mapping[str, Any]) -> Adjustment:
    """Read a reversal or refund answer."""
    return Adjustment(
        id=_str(data, "id"),
        kind=cast(AdjustmentKind, _choice(data, "kind", ("reversal", "refund"))),
        authorisation_id=_str(data, "authorisation_id"),
        request_id=_str(data, "request_id"),
        amount_fen=_int(data, "amount_fen"),
        discount_fen=_int(data, "discount_fen"),
        subsidy_fen=_int(data, "subsidy_fen"),
        payable_fen=_int(data, "payable_fen"),
        benefits=_benefits(data),
        recorded_at=_datetime(data, "recorded_at"),
    )


def parse_request_reversal(data: Mapping[str, Any]) -> RequestReversal:
    """Read the answer of `POST /v1/reversals`."""
    reversal = data.get("reversal")
    return RequestReversal(
        original_request_id=_str(data, "original_request_id"),
        outcome=cast(RequestReversalOutcome, _choice(data, "outcome", ("reversed", "already_reversed", "nothing_to_reverse"))),
        authorisation_id=_optional_str(data, "authorisation_id"),
        reversal=None if reversal is None else parse_adjustment(_mapping(reversal, "reversal")),
    )


def _authorisation_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    amount_fen = _int(data, "amount_fen")
    discount_fen = _int(data, "discount_fen")
    subsidy_fen = _int(data, "subsidy_fen")
    payable_fen = _int(data, "payable_fen")
    # The till charges from these numbers: refuse an answer that breaks the
    # contract's money invariant rather than charge a wrong price.
    if min(amount_fen, discount_fen, subsidy_fen, payable_fen) < 0:
        raise ValueError("an amount is negative")
    if discount_fen + subsidy_fen + payable_fen != amount_fen:
        raise ValueError("discount_fen + subsidy_fen + payable_fen != amount_fen")
    explanations = data.get("explanations")
    return {
        "id": _str(data, "id"),
        "request_id": _str(data, "request_id"),
        "status": _choice(data, "status", ("approved", "declined")),
        "decline_code": _optional_str(data, "decline_code"),
        "terminal_id": _str(data, "terminal_id"),
        "merchant_id": _str(data, "merchant_id"),
        "card_last4": _str(data, "card_last4"),
        "amount_fen": amount_fen,
        "discount_fen": discount_fen,
        "subsidy_fen": subsidy_fen,
        "payable_fen": payable_fen,
        "benefits": _benefits(data),
        "rules_version": _scalar_str(data, "rules_version"),
        "occurred_at": _datetime(data, "occurred_at"),
        "recorded_at": _datetime(data, "recorded_at"),
        "explanations": None if explanations is None else tuple(_explanation(item) for item in _list(data, "explanations")),
    }


def _benefits(data: Mapping[str, Any]) -> tuple[Benefit, ...]:
    return tuple(
        Benefit(
            campaign_id=_str(item, "campaign_id"),
            rule_id=_str(item, "rule_id"),
            kind=cast(BenefitKind, _choice(item, "kind", ("discount", "subsidy"))),
            amount_fen=_int(item, "amount_fen"),
        )
        for item in (_mapping(raw, "benefits[]") for raw in _list(data, "benefits"))
    )


def _explanation(raw: object) -> Explanation:
    item = _mapping(raw, "explanations[]")
    return Explanation(
        campaign_id=_str(item, "campaign_id"),
        rule_id=_str(item, "rule_id"),
        outcome=cast(ExplanationOutcome, _choice(item, "outcome", ("applied", "partly_applied", "not_applied"))),
        reason=_optional_str(item, "reason"),
        wanted_fen=_int(item, "wanted_fen"),
        given_fen=_int(item, "given_fen"),
    )


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} is not an object")
    return value


def _list(data: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise TypeError(f"{key} is not a list")
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else _str(data, key)


def _scalar_str(data: Mapping[str, Any], key: str) -> str:
    # The contract does not say whether a rulebook version is a number or a
    # label; keep either as text.
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{key} is not a string or integer")
    return str(value)


def _choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = _str(data, key)
    if value not in allowed:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(allowed)}")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    # bool is an int subclass, and a float is never an amount of fen.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} is not an integer")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key} is not a boolean")
    return value


def _datetime(data: Mapping[str, Any], key: str) -> datetime:
    text = _str(data, key)
    # Python before 3.11 does not read a trailing "Z" in fromisoformat().
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if moment.tzinfo is None:
        raise ValueError(f"{key} has no timezone")
    return moment
