"""Members, cards, merchants and terminals as the swipe path sees them, and who may swipe."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime

from pos_engine.domain.clock import local
from pos_engine.domain.evaluation import (
    DECLINE_ANNUAL_REVIEW_DUE,
    DECLINE_CARD_INACTIVE,
    DECLINE_MEMBER_NOT_IN_SERVICE,
    DECLINE_MERCHANT_INACTIVE,
)

CARD_STATUSES = ("active", "lost", "frozen", "cancelled")
MERCHANT_STATUSES = ("pending", "active", "probation", "suspended", "removed")
# A merchant on probation still serves members while the card office reviews it.
MERCHANT_STATUSES_SERVING = frozenset({"active", "probation"})
TERMINAL_STATUSES = ("active", "inactive")
# The ids the registry's imports take (members, units, unions, terminals): 1-64 ASCII letters, digits, '-', '_', '.'.
_REGISTRY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
REGISTRY_ID_HINT = "1-64 letters, digits, '-', '_' or '.'"


def is_registry_id(value: str) -> bool:
    """Whether `value` has the shape of a registry id (so it can be looked up at all)."""
    return _REGISTRY_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Terminal:
    """A merchant's till, with the secret it signs requests with."""

    terminal_id: str
    merchant_id: str
    secret: str
    status: str


@dataclass(frozen=True, slots=True)
class Merchant:
    """A partner merchant."""

    merchant_id: str
    name: str
    category: str
    district: str
    status: str


@dataclass(frozen=True, slots=True)
class CardHolder:
    """A card and the member it belongs to."""

    card_id: str
    card_last4: str
    card_status: str
    member_id: str
    member_groups: frozenset[str]
    in_service: bool
    annual_review_year: int | None
    district: str


def split_groups(text: str) -> frozenset[str]:
    """A member's groups from their stored form, a comma-separated list."""
    return frozenset(group for group in (part.strip() for part in text.split(",")) if group)


def card_hash(card_key: bytes, card_number: str) -> str:
    """The keyed hash a card is found by; the card number itself is never stored."""
    return hmac.digest(card_key, card_number.encode("ascii"), "sha256").hex()


def merchant_decline(merchant: Merchant) -> str | None:
    """The decline code for a merchant that may not take swipes, or None."""
    if merchant.status not in MERCHANT_STATUSES_SERVING:
        return DECLINE_MERCHANT_INACTIVE
    return None


def card_decline(holder: CardHolder, occurred_at: datetime) -> str | None:
    """The decline code for a card that may not be used at `occurred_at`, or None.

    A card is usable only when it is active, its member is in service, and the
    member has passed the annual review of the swipe's year in Asia/Shanghai.
    """
    if holder.card_status != "active":
        return DECLINE_CARD_INACTIVE
    if not holder.in_service:
        return DECLINE_MEMBER_NOT_IN_SERVICE
    if holder.annual_review_year is None or holder.annual_review_year < local(occurred_at).year:
        return DECLINE_ANNUAL_REVIEW_DUE
    return None
