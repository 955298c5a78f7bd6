"""Name every limit and default of the SDK, with its unit, in one place."""

from __future__ import annotations

from typing import Final

DEFAULT_TIMEOUT_S: Final = 5.0
"""Seconds each read, write or wait for a pooled connection may take; an attempt ends within the sum of its parts."""

DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0
"""Seconds one attempt may take to open a connection."""

DEFAULT_DEADLINE_S: Final = 8.0
"""Seconds one call may take in all: the queued reversals it sends first (half of it at most), its
attempts and the waits between them. The void after an authorisation with no usable answer comes on top,
one attempt at most."""

MIN_ATTEMPT_S: Final = 0.1
"""No retry is started with less than this left of the call's deadline."""

DEFAULT_MAX_RETRIES: Final = 2
"""Retries after the first attempt, so three attempts in all."""

MAX_RETRIES_LIMIT: Final = 10
"""The most retries a client may be configured with."""

INITIAL_RETRY_DELAY_S: Final = 0.25
"""The backoff before the first retry; it doubles for each retry after it."""

MAX_RETRY_DELAY_S: Final = 4.0
"""The longest backoff between two attempts, before jitter."""

RETRY_JITTER_FRACTION: Final = 0.25
"""Up to this fraction of each backoff is taken off at random, so tills spread out."""

MAX_RETRY_AFTER_S: Final = 30.0
"""A `Retry-After` longer than this is not waited for: the error is raised at once."""

MAX_REVERSALS_PER_FLUSH: Final = 8
"""Queued timeout reversals sent at the start of one call, at most."""

TIMESTAMP_WINDOW_S: Final = 300
"""The server refuses a request whose timestamp is further than this from its clock."""

VOIDED_REQUEST_IDS_REMEMBERED: Final = 1024
"""Voided authorisation request ids a client remembers, to refuse reusing them."""
