"""Format integer fen as yuan, for display only: the API speaks fen."""

from __future__ import annotations

from decimal import Decimal

FEN_PER_YUAN = 100


def fen_to_yuan(amount_fen: int) -> str:
    """Return `amount_fen` as a plain yuan string with two decimals: `12345` → `'123.45'`.

    Args:
        amount_fen: An amount in integer fen; may be negative.

    Returns:
        The amount in yuan, for display. Never convert it back to send it.

    Raises:
        TypeError: If `amount_fen` is not an `int` (floats never carry money).
    """
    _require_int(amount_fen)
    return f"{Decimal(amount_fen).scaleb(-2):.2f}"


def format_yuan(amount_fen: int, *, symbol: str = "¥", grouping: bool = True) -> str:
    """Return `amount_fen` formatted for a receipt: `123456` → `'¥1,234.56'`, `-5` → `'-¥0.05'`.

    Args:
        amount_fen: An amount in integer fen; may be negative.
        symbol: The currency symbol put before the number.
        grouping: Whether to group thousands with commas.

    Returns:
        The amount in yuan, for display.

    Raises:
        TypeError: If `amount_fen` is not an `int`.
    """
    _require_int(amount_fen)
    sign = "-" if amount_fen < 0 else ""
    yuan = Decimal(abs(amount_fen)).scaleb(-2)
    number = f"{yuan:,.2f}" if grouping else f"{yuan:.2f}"
    return f"{sign}{symbol}{number}"


def _require_int(amount_fen: object) -> None:
    # bool is an int subclass; True is never an amount.
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool):
        raise TypeError(f"amounts are integer fen, got {type(amount_fen).__name__}")
