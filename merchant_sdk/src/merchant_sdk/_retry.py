"""Decide whether a failed attempt is retried, and how long to wait before it."""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from ._constants import INITIAL_RETRY_DELAY_S, MAX_RETRY_AFTER_S, MAX_RETRY_DELAY_S, RETRY_JITTER_FRACTION
from ._exceptions import APIConnectionError, APIStatusError, PosError

# 501 and 505 say the server will never do this; every other 5xx may pass.
_PERMANENT_SERVER_STATUSES = frozenset({501, 505})


def should_retry(error: PosError) -> bool:
    """Return whether another attempt of the same request could succeed.

    Retried: no answer at all (connection errors, timeouts), 408, 409
    `request_in_progress` (a duplicate is still running), 429 and 5xx, unless
    the server asks to wait longer than `MAX_RETRY_AFTER_S`. Everything else
    (401, 403, 404, 422, other 409s, an unreadable 2xx) would fail again.
    """
    if isinstance(error, APIConnectionError):
        return True
    if not isinstance(error, APIStatusError):
        return False
    if error.retry_after_s is not None and error.retry_after_s > MAX_RETRY_AFTER_S:
        return False
    if error.status == 409:
        return error.code == "request_in_progress"
    if error.status >= 500:
        return error.status not in _PERMANENT_SERVER_STATUSES
    return error.status in (408, 429)


def may_have_been_processed(error: PosError) -> bool:
    """Return whether the server may have acted on a request that ended in `error`.

    A request that never left, or that the server refused outright (4xx),
    changed nothing. No answer after sending, any 5xx (the server may have
    committed and then failed) and 409 `request_in_progress` (it is being
    processed right now) may have.
    """
    if isinstance(error, APIConnectionError):
        return error.may_have_reached_server
    if not isinstance(error, APIStatusError):
        return True
    if error.status == 409:
        return error.code == "request_in_progress"
    return error.status >= 500


def backoff_delay_s(retries_taken: int, retry_after_s: float | None = None, *, rand: Callable[[], float] = random.random) -> float:
    """Return the seconds to wait before retry number `retries_taken + 1`.

    Exponential backoff from `INITIAL_RETRY_DELAY_S`, capped at
    `MAX_RETRY_DELAY_S`, with up to `RETRY_JITTER_FRACTION` of it taken off at
    random. Never shorter than the server's `Retry-After`.
    """
    base_s = min(INITIAL_RETRY_DELAY_S * (2.0**retries_taken), MAX_RETRY_DELAY_S)
    delay_s = base_s * (1.0 - RETRY_JITTER_FRACTION * rand())
    if retry_after_s is not None:
        delay_s = max(delay_s, retry_after_s)
    return delay_s


def parse_retry_after_s(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Read `Retry-After` (delay seconds or an HTTP date) as seconds from now, or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        delay_s = float(value)
    except ValueError:
        pass
    else:
        return max(delay_s, 0.0) if math.isfinite(delay_s) else None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max((moment - now).total_seconds(), 0.0)
