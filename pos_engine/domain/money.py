"""Integer-fen arithmetic: every division says how it rounds."""

from __future__ import annotations

from collections.abc import Sequence

BP_PER_WHOLE = 10_000  # basis points in 100 %


class MoneyInvariantError(Exception):
    """A money invariant does not hold: nothing that breaks it may be recorded or answered.

    Raised by `require`, never by `assert`, so that it holds under `python -O` too.
    """


def require(holds: bool, what: str) -> None:
    """Raise MoneyInvariantError naming `what` unless it holds."""
    if not holds:
        raise MoneyInvariantError(what)


def div_floor(numerator: int, denominator: int) -> int:
    """Divide, rounding towards minus infinity."""
    assert denominator > 0
    return numerator // denominator


def div_ceil(numerator: int, denominator: int) -> int:
    """Divide, rounding towards plus infinity."""
    assert denominator > 0
    return -((-numerator) // denominator)


def percent_of(amount_fen: int, rate_bp: int) -> int:
    """Return rate_bp of amount_fen, rounded down: a funder never pays more than the rule says."""
    assert amount_fen >= 0
    assert 0 <= rate_bp <= BP_PER_WHOLE
    return amount_fen * rate_bp // BP_PER_WHOLE  # div_floor, inline: this runs for every matching rule


def _split_in_order(total: int, weights: Sequence[int], weights_sum: int) -> list[int]:
    """Split total across weights pro rata: each takes floor(weight * rest / rest_weights), in order.

    Round down: the earlier weights give up the odd fen to the later ones, so
    the last weight absorbs the rounding and the parts add up exactly.
    """
    parts: list[int] = []
    rest, rest_weights = total, weights_sum
    for weight in weights:
        part = div_floor(weight * rest, rest_weights) if rest_weights else 0
        parts.append(part)
        rest -= part
        rest_weights -= weight
    require(rest == 0, "a split adds up exactly")
    return parts


def split_cumulative(part_total: int, whole: int, weights: Sequence[int]) -> list[int]:
    """Split part_total of whole across weights (which add up to whole), pro rata.

    Used for claw-backs: called with the *cumulative* refunded amount, it gives
    the cumulative share of each weight. Each share is monotone in part_total,
    never exceeds its weight, and at part_total == whole every share equals its
    weight exactly, so a series of partial refunds ends exactly at the totals.
    """
    require(sum(weights) == whole and 0 <= part_total <= whole and all(weight >= 0 for weight in weights), "a claw-back's parts")
    return _split_in_order(part_total, weights, whole)


def split_by_shares(amount_fen: int, shares_bp: Sequence[int]) -> list[int]:
    """Split amount_fen by shares in basis points (adding up to 100 %), exactly."""
    assert sum(shares_bp) == BP_PER_WHOLE
    return _split_in_order(amount_fen, shares_bp, BP_PER_WHOLE)


def format_yuan(amount_fen: int) -> str:
    """Format fen as a yuan string for display: 1234 -> '12.34'."""
    sign = "-" if amount_fen < 0 else ""
    whole, fen = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{fen:02d}"
