"""Rounding and pro-rata claw-back: Hypothesis properties over integer fen."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pos_engine.domain.money import BP_PER_WHOLE, div_ceil, div_floor, format_yuan, percent_of, split_by_shares, split_cumulative

amounts = st.integers(min_value=0, max_value=10**10)


@given(amounts, st.integers(min_value=0, max_value=BP_PER_WHOLE))
def test_a_percentage_rounds_down_to_the_fen(amount_fen: int, rate_bp: int) -> None:
    result = percent_of(amount_fen, rate_bp)
    assert result * BP_PER_WHOLE <= amount_fen * rate_bp < (result + 1) * BP_PER_WHOLE
    assert 0 <= result <= amount_fen


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=1, max_value=10**6))
def test_floor_and_ceil_bracket_the_exact_quotient(numerator: int, denominator: int) -> None:
    low, high = div_floor(numerator, denominator), div_ceil(numerator, denominator)
    assert low * denominator <= numerator <= high * denominator
    assert high - low in (0, 1)
    assert (high == low) == (numerator % denominator == 0)


@st.composite
def weights_and_refunds(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    weights = draw(st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=6))
    whole = sum(weights)
    refunds: list[int] = []
    left = whole
    while left > 0 and len(refunds) < 8:
        step = draw(st.integers(min_value=1, max_value=left))
        refunds.append(step)
        left -= step
    if left > 0 and draw(st.booleans()):
        refunds.append(left)
    return weights, refunds


@given(weights_and_refunds())
def test_cumulative_claw_back_is_monotone_bounded_and_exact_at_the_end(case: tuple[list[int], list[int]]) -> None:
    weights, refunds = case
    whole = sum(weights)
    previous = [0] * len(weights)
    refunded = 0
    for refund in refunds:
        refunded += refund
        shares = split_cumulative(refunded, whole, weights)
        assert sum(shares) == refunded
        for share, before, weight in zip(shares, previous, weights, strict=True):
            assert before <= share <= weight  # never goes back, never past what was given
            # Pro rata: each part is at least its exact share rounded down, so each keeps at most the
            # ceiling of its exact remainder ...
            assert share * whole >= weight * refunded - (whole - 1)
        # ... and the last part takes the odd fen: at least its exact share.
        assert shares[-1] * whole >= weights[-1] * refunded
        # Each refund's own parts add up to the refund and none is negative.
        increments = [share - before for share, before in zip(shares, previous, strict=True)]
        assert sum(increments) == refund
        assert all(increment >= 0 for increment in increments)
        previous = shares
    if refunded == whole:
        assert previous == weights


@given(amounts, st.lists(st.integers(min_value=0, max_value=BP_PER_WHOLE), min_size=1, max_size=5))
def test_funder_shares_add_up_to_the_amount_exactly(amount_fen: int, raw_shares: list[int]) -> None:
    total = sum(raw_shares)
    if total == 0:
        raw_shares = [BP_PER_WHOLE] + [0] * (len(raw_shares) - 1)
    else:
        raw_shares = [div_floor(share * BP_PER_WHOLE, total) for share in raw_shares]
        raw_shares[-1] += BP_PER_WHOLE - sum(raw_shares)
    parts = split_by_shares(amount_fen, raw_shares)
    assert sum(parts) == amount_fen
    assert all(part >= 0 for part in parts)
    for part, share in zip(parts, raw_shares, strict=True):
        assert abs(part * BP_PER_WHOLE - amount_fen * share) <= BP_PER_WHOLE * len(parts)


def test_yuan_are_for_display_only() -> None:
    assert format_yuan(123456) == "1234.56"
    assert format_yuan(-5) == "-0.05"
    assert format_yuan(0) == "0.00"


def test_the_money_invariants_are_checked_under_python_minus_o_too() -> None:
    """`assert` disappears under -O (or PYTHONOPTIMIZE): the money checks must not be asserts."""
    import subprocess
    import sys

    script = """
from pos_engine.domain.evaluation import Decision
from pos_engine.domain.ledger import claw_back
from pos_engine.domain.money import MoneyInvariantError
broken = 0
for attempt in (
    lambda: Decision("approved", 10_000, discount_fen=500, subsidy_fen=950, payable_fen=9_000),
    lambda: Decision("approved", 10_000, discount_fen=-1, subsidy_fen=1, payable_fen=10_000),
    lambda: claw_back(10_000, 9_000, [{"kind": "subsidy", "amount_fen": 1_000, "counters": []}], 0, 10_001),
):
    try:
        attempt()
    except MoneyInvariantError:
        broken += 1
print(broken)
"""
    done = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "3"), done.stderr
