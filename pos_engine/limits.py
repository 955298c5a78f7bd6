"""Every limit the engine enforces, in one place, named with units."""

REQUEST_BODY_BYTES_MAX = 16 * 1024
AMOUNT_FEN_MAX = 100_000_000  # one million yuan: far above any till purchase
REQUEST_ID_CHARS_MAX = 64
CARD_NUMBER_DIGITS_MIN = 12
CARD_NUMBER_DIGITS_MAX = 19
ID_CHARS_MAX = 64

SIGNATURE_CLOCK_SKEW_S_MAX = 300  # X-Timestamp vs the engine's clock, either way
OCCURRED_AT_AHEAD_S_MAX = 300  # a swipe may claim to be at most this far in the future
OCCURRED_AT_BEHIND_S_MAX = 24 * 3600  # and at most this far in the past

LOOKUP_CACHE_TTL_S = 2.0  # a card or merchant status change reaches every worker within this
LOOKUP_CACHE_ENTRIES_MAX = 200_000
IDEMPOTENCY_WAIT_S_MAX = 2.0  # how long a duplicate waits for the original to finish

SQLITE_BUSY_TIMEOUT_MS = 30_000
IMPORT_ROWS_MAX = 2_000_000
