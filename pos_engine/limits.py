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

LOOKUP_CACHE_TTL_S = 5.0  # a merchant or terminal change reaches every worker within this (0: no caching at all)
CARD_CHANGES_POLL_S = 1.0  # a card or member change reaches every worker's card directory within about this
CARD_CHANGES_RELOAD_MIN = 10_000  # this many changed cards at once (an import) rebuild the directory instead
CARD_OVERLAY_MAX = 100_000  # changed cards held beside the directory's table before it is rebuilt
CARD_CHANGES_KEEP_S = 24 * 3600  # the change feed keeps a day; readers are seconds behind
IDEMPOTENCY_WAIT_S_MAX = 2.0  # how long a duplicate waits for the original to finish
# PostgreSQL cancels any statement of a terminal's request that runs longer than this: one waiting on a
# lock another transaction holds, or on a stalled disk. The request is a 503 that changed nothing, and the
# worker is free again. Set on the server's own connections only (the CLI's long statements have none);
# an `options=-c statement_timeout=…` in the database URL overrides it.
TERMINAL_STATEMENT_TIMEOUT_MS = 1000
# The swipe's record waits this long for PostgreSQL's answer, then gives up (a 503; the record may
# still commit, which the next item settles). Longer than the statement timeout, which settles more:
# this limit is for a server that cannot answer at all.
RECORD_ANSWER_S_MAX = 1.5
# When the connection breaks under a swipe's record, a new connection waits this long for the old session
# to end before reading whether the record committed (pos_engine.store.db.DirectRepository.record).
LOST_ANSWER_WAIT_S_MAX = 0.5
# The server's connections to PostgreSQL for terminals' requests give up connecting after this (libpq
# takes whole seconds); a connect_timeout in the database URL overrides it.
POSTGRESQL_CONNECT_TIMEOUT_S = 2
# Every connection to PostgreSQL is closed about this long after the database's host stops acknowledging
# (gone, unplugged, failed over), instead of TCP's 15 minutes: TCP keepalives on a connection that waits,
# TCP_USER_TIMEOUT on one that sent. A background poll stuck on such a connection would otherwise keep a
# worker's card directory stale (a lost card still usable) that long. The URL's own keepalives* and
# tcp_user_timeout override.
POSTGRESQL_DEAD_HOST_S = 10
# A Redis call that takes longer fails (the swipe answers 503) instead of holding its worker: a
# terminal gives up after 2-3 s in all. A `socket_timeout` or `socket_connect_timeout` in the Redis URL overrides.
REDIS_SOCKET_TIMEOUT_S = 1.0
REDIS_CONNECT_TIMEOUT_S = 1.0
# How long a swipe's claim on its request id lives in Redis: a repeat meanwhile reserves nothing and waits
# for the first attempt's record. It must outlast a live attempt (the record, RECORD_ANSWER_S_MAX; the look-up
# after a lost answer: a connection, LOST_ANSWER_WAIT_S_MAX, two statements on a host that may be dying,
# POSTGRESQL_DEAD_HOST_S; dropping the claim, one Redis call); past it the ledger's key still refuses a
# duplicate. It is also how long the request of a worker killed mid-swipe answers 409 request_in_progress.
REQUEST_CLAIM_S = 30
# `counters rebuild` on Redis, which is not in the ledger's transaction, starts only once terminals are quiet: no
# request claim left (none made in the last REQUEST_CLAIM_S, so no reservation is still in flight), then this long
# more with no counter changed, for a record whose claim was dropped while its outcome was unknown (the server's
# statement timeout bounds it) and for an adjustment's give-back that follows its commit. It waits at most
# COUNTERS_QUIET_WAIT_S_MAX for that, then gives up.
REBUILD_SETTLE_S = 5.0
# A Redis counter of a period (a day, a week, a month, a year) expires this long after its period closed: its end
# plus OCCURRED_AT_BEHIND_S_MAX, after which no swipe can add to it. Its time to live is counted from the clock of
# the worker (or the rebuild's host) that set it; the margin allows for clocks that disagree, and `counters rebuild`
# keeps a closed counter as long. Counters of a campaign's whole run, and budgets, do not expire.
COUNTER_KEPT_AFTER_CLOSE_S = 3600
COUNTERS_QUIET_WAIT_S_MAX = 120.0

SQLITE_BUSY_TIMEOUT_MS = 30_000
IMPORT_ROWS_MAX = 2_000_000
# Bytes an import file may hold: 2,000,000 rows of ~250 bytes fit twice over;
# a larger file (or a device such as /dev/zero) is refused before it fills memory.
IMPORT_BYTES_MAX = 1_000_000_000

# The rulebook.
# Limits on what a rulebook may hold: the loader refuses anything larger, so a
# mistake (or a hostile file) cannot make loading slow or the index huge.
RULE_FILES_MAX = 256  # campaign files per rulebook
RULE_FILE_BYTES_MAX = 256 * 1024  # bytes per file
RULES_PER_FILE_MAX = 200  # rules per campaign file
RULES_PER_RULEBOOK_MAX = 20_000  # rules in all files together
EXAMPLES_PER_FILE_MAX = 100  # worked examples per campaign file
# A reload's build in a child process (pos_engine.rules_build) that takes longer is killed, and tried again at a
# later poll: a file read that never returns, or a child at nice 19 that a saturated host gives no CPU.
RULES_BUILD_TIMEOUT_S = 300.0
BENEFITS_PER_EXAMPLE_MAX = 32  # expected benefits per example
FUNDERS_MAX = 200  # funders in funders.yaml
FUNDERS_PER_CAMPAIGN_MAX = 10  # funder shares per campaign
LIMITS_PER_OWNER_MAX = 8  # limits per rule, and per campaign
MERCHANT_IDS_PER_RULE_MAX = 2_000  # merchant ids per rule
MEMBER_GROUPS_PER_LIST_MAX = 32  # member groups per rule or example swipe
YAML_DEPTH_MAX = 12  # nesting of mappings and lists; the deepest valid path needs 6
TEXT_CHARS_MAX = 200  # names and other free text
PROBLEMS_REPORTED_MAX = 500  # problems listed in one RulebookError

# Redis Lua scripts mirror the evaluation and Lua numbers are doubles, so every
# amount in a rule (budget, cap, fixed amount) stays far below 2**53; 10**12 fen
# is ten billion yuan. An example's swipe is held to the API's own limit.
RULE_AMOUNT_FEN_MAX = 10**12
USES_MAX = 1_000_000  # uses in one limit
PRIORITY_MAX = 1_000_000  # priorities run from 0 to this
PRIORITY_DEFAULT = 100
PERCENT_DECIMALS_MAX = 2  # 33.34 % is 3334 basis points
