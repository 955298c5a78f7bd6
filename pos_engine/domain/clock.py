"""Time: an injectable clock and the business periods of Asia/Shanghai."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
PERIODS = ("day", "week", "month", "year", "campaign")


class Clock(Protocol):
    """Tells the time; tests inject a fixed one."""

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock, timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that says what it is told; `advance` moves it."""

    def __init__(self, at: datetime) -> None:
        assert at.tzinfo is not None
        self.at = at

    def now(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        assert at.tzinfo is not None
        self.at = at


def local(at: datetime) -> datetime:
    """Return `at` in Asia/Shanghai."""
    assert at.tzinfo is not None
    return at.astimezone(SHANGHAI)


def period_key(at_local: datetime, period: str) -> str:
    """Name the business period that contains `at_local` (already in Asia/Shanghai)."""
    # f-strings, not strftime: this runs for every cap of every matching rule.
    if period == "day":
        return f"{at_local.year:04d}-{at_local.month:02d}-{at_local.day:02d}"
    if period == "week":
        iso = at_local.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if period == "month":
        return f"{at_local.year:04d}-{at_local.month:02d}"
    if period == "year":
        return f"{at_local.year:04d}"
    if period == "campaign":
        return "all"
    raise ValueError(f"unknown period {period!r}")


def period_end(period: str, key: str) -> datetime | None:
    """When the business period `key` (as `period_key` names it) ends, in Asia/Shanghai; None for
    "campaign", which ends with its campaign, or for a name `period_key` would not have made."""
    try:
        if period == "day" and len(key) == 10:
            end = date.fromisoformat(key) + timedelta(days=1)
        elif period == "week" and len(key) == 8 and key[4:6] == "-W":
            end = date.fromisocalendar(int(key[:4]), int(key[6:]), 1) + timedelta(weeks=1)
        elif period == "month" and len(key) == 7 and key[4] == "-":
            year, month = int(key[:4]), int(key[5:])
            end = date(year + month // 12, month % 12 + 1, 1)
        elif period == "year" and len(key) == 4:
            end = date(int(key) + 1, 1, 1)
        else:
            return None
    except ValueError:
        return None
    end_at = datetime(end.year, end.month, end.day, tzinfo=SHANGHAI)
    if period_key(end_at - timedelta(microseconds=1), period) != key:
        return None  # not a name period_key makes ("2026-1-05", "+202"): a key of another shape
    return end_at
