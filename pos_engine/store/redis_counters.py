"""The Redis counter store: caps and budgets reserved by Lua scripts, one round trip per swipe.

Every key is stored as ``{namespace}:key``. The braces are a Redis Cluster hash
tag: all counters of a namespace hash to one slot, so a script may touch any of
them and stays valid on a cluster. The trade-off is deliberate: one slot, so
one primary, carries every counter. A Redis primary does well over 100 000
simple operations a second and a reservation is one short script, far above
the swipe peak of a city's union card; the cluster then buys failover, not
write scaling. Split the namespace (one per campaign, say) if that ever changes.

`reserve` runs `reserve.lua`, a line-by-line mirror of
`pos_engine.domain.evaluation.execute_plan`. Lua numbers are doubles, exact for
integers below 2^53 (about 9 * 10^15), so every amount, benefit and limit sent
to it is asserted to be at most `AMOUNT_FEN_MAX` = 10^12 fen (10 billion yuan);
the script splits its one multiplication (amount * basis points, up to 10^16)
so that it never leaves the exact range.

Redis is not transactional with the ledger: `session` arguments are ignored,
and the caller gives back a reservation (`apply` with negative deltas) when its
own transaction fails. `snapshot` is SCAN + MGET, not a point-in-time copy;
`replace_all` is atomic up to REPLACE_ATOMIC_KEYS_MAX counters and blocks Redis
for the time it takes (O(counters)); it writes after a SCAN inside its script,
which needs script effects replication: Redis 5 or later (tested on 7.0).

`counters rebuild` reads the ledger in PostgreSQL and writes here, so a swipe
could land between the two and its reservation be written over. Every script
that changes a counter therefore also adds 1 to the namespace's change count
(``{namespace}changes``), and so does a refund's or reversal's note, before its
commit, that it will give caps back (`hold_give_back`): `wait_until_quiet`
waits until no claim or note is left and notes the count, and `replace_all`
writes only while the count still reads the same, batch by batch
(docs/design.md, "Counters").

A counter of a period (a card's or a merchant's day, week, month or year) expires
COUNTER_KEPT_AFTER_CLOSE_S after its period closed (`counter_closes_at`: the
end, plus how late a swipe may come; pos_engine.service.counters), so the
namespace holds a few periods' counters rather than every period's since the
programme began. `reserve` creates counters without a time to live (an EXPIRE
in the swipe's script cost its tail) and notes each one it creates in the
namespace's untimed set (``{namespace}untimed``); `expire_closed` (`counters
expire`, run hourly) gives them one, taking them from that set, as a give-back
that finds a counter without one and a rebuild do, counted from the engine's
clock (`use_clock`). Counters of a campaign's whole run, and budgets, do not
expire. Counters no swipe noted (written before swipes noted them, or by
workers of an earlier release) are found by reading every counter's time to
live: the first `expire_closed` on a namespace does it, then one a week
(EXPIRE_READ_EVERY_COUNTER_S), and one asked to (`everything`), at a cost to
the swipes' tail while it runs.

Errors: a bad URL raises ValueError; everything else is redis-py's own
(`redis.exceptions.ConnectionError` and friends: the dependency is unavailable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.connection import ConnectionPool, parse_url
from redis.exceptions import ClusterDownError, NoScriptError, SlotNotCoveredError

from pos_engine.domain.clock import Clock, SystemClock
from pos_engine.domain.evaluation import UNIT_FEN, UNIT_USES, Plan, StepOutcome, counter_period_end
from pos_engine.domain.money import BP_PER_WHOLE, MoneyInvariantError, require
from pos_engine.limits import (
    COUNTER_KEPT_AFTER_CLOSE_S,
    COUNTERS_QUIET_WAIT_S_MAX,
    OCCURRED_AT_BEHIND_S_MAX,
    REBUILD_SETTLE_S,
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_SOCKET_TIMEOUT_S,
    REQUEST_CLAIM_S,
)
from pos_engine.service.errors import AlreadyClaimed, CountersBusy, CountersMisconfigured, HoldExpired
from pos_engine.service.ports import Claim
from pos_engine.store.connections import ThreadConnections

# Lua numbers are doubles: with amounts and limits at most 10^12 fen, every sum
# and difference the script makes stays far below 2^53.
AMOUNT_FEN_MAX = 10**12
PLAN_STEPS_MAX = 1_000  # more rules than any swipe can match; keeps ARGV bounded
SCAN_COUNT = 1_000  # keys asked of SCAN per call
MGET_BATCH_KEYS = 1_000  # keys per MGET in `snapshot`
# Counters `expire_closed` times (or deletes) in one script call: a call held Redis for 0.24 ms on average
# (docs/performance.md, twenty-fourth round).
EXPIRE_BATCH_KEYS = 100
# How often `expire_closed` reads every counter's time to live even so: a counter no swipe noted (written by a
# worker of an earlier release during an upgrade) then waits at most this long for its own, rather than for ever.
EXPIRE_READ_EVERY_COUNTER_S = 7 * 24 * 3600

REPLACE_ATOMIC_KEYS_MAX = 50_000  # counters a rebuild writes in one atomic script
REPLACE_BATCH_KEYS = 10_000  # counters per script beyond that, each written only if no counter changed meanwhile
QUIET_POLL_S = 1.0  # how often a rebuild looks again for request claims while it waits for quiet
CLUSTER_SCHEME = "redis-cluster"
SCHEMES = ("redis", "rediss", "unix", CLUSTER_SCHEME)


def check_url(url: str) -> None:
    """Raise ValueError if `url` cannot name a Redis server or cluster; the message never repeats it (it may hold a password).

    The message reads after the URL's name: "must start with …" or "cannot be used: …". Only
    messages of our own, and redis-py's about a query option by its name, are passed on: urllib's
    and int()'s quote the part they could not read, which is a password when it holds a '/', '?',
    '#' or '@' that was not percent-encoded.
    """
    unreadable = "cannot be used: its host or port cannot be read (a password's '/', '?', '#', '@' and '[' must be percent-encoded)"
    try:
        parts = urlsplit(url)
        parts.hostname, parts.port  # noqa: B018  (read here, where their errors are caught)
    except ValueError:
        raise ValueError(unreadable) from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"must start with {', '.join(scheme + '://' for scheme in SCHEMES)}")
    if "@" in url.partition("://")[2][len(parts.netloc) :]:  # what urllib took for a path, a query or a fragment
        raise ValueError(unreadable)
    if parts.scheme == CLUSTER_SCHEME:
        if not parts.hostname or parts.port is None:
            raise ValueError(f"cannot be used: a cluster URL needs a host and a port: {CLUSTER_SCHEME}://HOST:PORT")
        return
    try:
        options = parse_url(url)  # type: ignore[no-untyped-call]  # redis-py's own reading: port, database, the query's options
    except ValueError as error:
        said = str(error)
        if said.startswith("Invalid value for '") and said.endswith("' in connection URL."):
            raise ValueError(f"cannot be used: {said}") from None
        raise ValueError("cannot be used: redis-py cannot read it (its database number after the host, or a query option)") from None
    resending = sorted(name for name in options if name.startswith("retry"))
    if resending:
        raise ValueError(
            f"cannot be used: its option {resending[0]!r} would send a script again after a timeout, and a script that had run"
            " (caps given back) would then run twice"
        )


_GLOB_SPECIALS = "\\*?[]"

if TYPE_CHECKING:
    RedisClient: TypeAlias = redis.Redis | RedisCluster


def _lua(name: str) -> str:
    return files("pos_engine.store").joinpath("lua", name).read_text(encoding="utf-8")


def _glob_escape(text: str) -> str:
    """Escape `text` for a SCAN MATCH pattern, so that it matches only itself."""
    return "".join("\\" + char if char in _GLOB_SPECIALS else char for char in text)


def _register(client: RedisClient, source: str) -> Script:
    """Register a script once; redis-py then sends EVALSHA and loads the source only on NOSCRIPT."""
    # redis-py's own annotations type `register_script` for Redis only; RedisCluster has it too.
    return client.register_script(source)  # type: ignore[misc]


def _ttl(key: str, now: int) -> str:
    """How many seconds from `now` (Unix time) Redis keeps counter `key`, at least 1, as a script argument; "0": for ever.

    Till the period's end, then OCCURRED_AT_BEHIND_S_MAX for late swipes, then COUNTER_KEPT_AFTER_CLOSE_S.
    """
    end = counter_period_end(key)
    if end is None:
        return "0"
    return str(max(1, int(end.timestamp()) + OCCURRED_AT_BEHIND_S_MAX + COUNTER_KEPT_AFTER_CLOSE_S - now))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _bounded(amount_fen: int) -> str:
    require(0 <= amount_fen <= AMOUNT_FEN_MAX, "an amount within what the script's doubles hold exactly")
    return str(amount_fen)


@dataclass(frozen=True)
class _Unchanged:
    """The change count as `wait_until_quiet` read it ("" if no script has changed a counter yet)."""

    count: str


class _CountersCluster(RedisCluster):
    """redis-py's cluster client, sending a command again only when it cannot have run.

    By default it sends a command again after a timeout or a lost connection too (three times), when a
    script that did run (caps given back) would then run twice. Those now fail, as on a single server,
    and the caller's own handling keeps counters on the safe side; a cluster that is down or a slot no
    node serves yet (a failover under way) is still tried again. MOVED and ASK redirections are followed
    either way.
    """

    ERRORS_ALLOW_RETRY = (ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]  # fewer than the base names


class _Line:
    """One thread's own connection to a single Redis server (redis-py reconnects it on next use after an error)."""

    def __init__(self, pool: ConnectionPool) -> None:
        # Any: redis-py leaves the connection's methods unannotated.
        self.connection: Any = pool.connection_class(**pool.connection_kwargs)

    def close(self) -> None:
        self.connection.disconnect()


class _DirectScript:
    """A script run on the calling thread's own connection: EVALSHA, and EVAL when the server lacks it.

    redis-py's `Script` goes through the client's command machinery and its
    connection pool (a lock and a readiness poll per checkout): for the one
    round trip of every swipe that costs more CPU than packing, sending and
    reading the reply (measured: docs/performance.md). Errors are redis-py's
    own: its connection disconnects itself when a send or a read fails or is
    interrupted, so no half-read reply is left behind, and the next call
    reconnects. Nothing is retried: a reservation whose reply was lost may have
    taken caps (the safe direction; `counters reconcile` shows it).
    """

    def __init__(self, script: Script, lines: ThreadConnections[_Line]) -> None:
        self._sha = script.sha
        self._source = script.script
        self._lines = lines

    def __call__(self, keys: list[str], args: list[str]) -> Any:
        connection = self._lines.get().connection
        connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return connection.read_response()
        except NoScriptError:  # a restarted or flushed server: EVAL loads it again
            connection.send_command("EVAL", self._source, len(keys), *keys, *args)
            return connection.read_response()


class RedisCounterStore:
    """Counters in Redis (or Redis Cluster) under one hash-tagged namespace; not transactional."""

    transactional = False

    def __init__(self, client: RedisClient, namespace: str = "pos") -> None:
        # Braces would end the hash tag early and scatter the keys over slots.
        assert namespace, "the namespace must not be empty"
        assert "{" not in namespace, namespace
        assert "}" not in namespace, namespace
        self.client = client
        self.namespace = namespace
        self.clock: Clock = SystemClock()  # the engine's, once it calls use_clock: counters expire by it
        self.prefix = "{" + namespace + "}:"
        self._pattern = _glob_escape(self.prefix) + "*"
        self._reserve = _register(client, _lua("reserve.lua"))
        # On a single server the swipe's script runs on a per-thread connection; a cluster routes through redis-py.
        self._run_reserve: Callable[[list[str], list[str]], Any] = (
            _DirectScript(self._reserve, ThreadConnections(lambda: _Line(client.connection_pool), lambda _line: False))
            if isinstance(client, redis.Redis)
            else lambda keys, args: self._run(self._reserve, keys, args)
        )
        self._apply = _register(client, _lua("apply.lua"))
        self._unclaim = _register(client, _lua("unclaim.lua"))
        self._hold = _register(client, _lua("hold.lua"))
        self._replace_all = _register(client, _lua("replace_all.lua"))
        self._replace_batch = _register(client, _lua("replace_batch.lua"))
        self._time_untimed = _register(client, _lua("time_untimed.lua"))
        # Outside the counters' "{ns}:" prefix (snapshot, reconcile and rebuild never see them), in their slot.
        self._changes_key = "{" + namespace + "}changes"
        self._untimed_key = "{" + namespace + "}untimed"  # the counters swipes created, till they have a time to live
        # When `expire_closed` last read every counter's time to live (Unix time, the engine's clock); missing: never.
        self._scanned_key = "{" + namespace + "}scanned"

    @classmethod
    def from_url(cls, url: str, namespace: str = "pos", socket_timeout_s: float | None = REDIS_SOCKET_TIMEOUT_S) -> RedisCounterStore:
        """Connect by URL: redis://, rediss:// or unix:// for one server, redis-cluster://host:port for a cluster.

        A call that takes longer than `socket_timeout_s` raises redis' TimeoutError (a 503 on the API)
        instead of holding its thread; None waits as long as Redis takes (a whole-namespace rebuild).
        """
        try:
            check_url(url)
        except ValueError as error:
            raise ValueError(f"the Redis URL {error}") from None
        parts = urlsplit(url)
        if parts.scheme == CLUSTER_SCHEME:
            assert parts.hostname and parts.port is not None  # check_url
            client: RedisClient = _CountersCluster(
                host=parts.hostname,
                port=parts.port,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            )
        else:
            # The URL's own socket_timeout / socket_connect_timeout, if it has them, win over these.
            client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)
        return cls(client, namespace=namespace)

    def _key(self, key: str) -> str:
        assert key, "a counter key must not be empty"
        return self.prefix + key

    def _claim_key(self, claim: str) -> str:
        # Same hash tag (same slot as the counters), but outside the counters' "{ns}:" prefix,
        # so snapshot, reconcile and rebuild never see claims.
        return "{" + self.namespace + "}claim:" + claim

    def _run(self, script: Script, keys: list[str], args: list[str]) -> Any:
        return script(keys=keys, args=args, client=self.client)  # type: ignore[arg-type]  # a RedisCluster works as well

    def reserve(self, plan: Plan, session: Any = None, claim: Claim | None = None) -> list[StepOutcome]:
        """Run `execute_plan` atomically against the stored counters, in one EVALSHA.

        With `claim` (a request's identity and the attempt's token), the same script first claims the
        request for REQUEST_CLAIM_S; a request claimed already reserves nothing and raises AlreadyClaimed,
        so a retry never holds caps twice, even for a moment.
        """
        assert len(plan.steps) <= PLAN_STEPS_MAX, len(plan.steps)
        key_indexes: dict[str, int] = {}
        kind_ids: dict[str, int] = {}
        args = [_bounded(plan.amount_fen), str(len(plan.steps)), str(REQUEST_CLAIM_S if claim else 0), claim.token if claim else ""]
        for step in plan.steps:
            benefit = step.benefit
            args.append(str(kind_ids.setdefault(benefit.kind, len(kind_ids))))
            args.append("1" if step.rule.exclusive else "0")
            if benefit.percent_bp is not None:
                assert 0 <= benefit.percent_bp <= BP_PER_WHOLE, benefit.percent_bp
                args.append(str(benefit.percent_bp))
                args.append("-1" if benefit.amount_fen_max is None else _bounded(benefit.amount_fen_max))
            else:
                assert benefit.fixed_fen is not None
                args.append("-1")
                args.append(_bounded(benefit.fixed_fen))
            args.append(str(len(step.counters)))
            for counter in step.counters:
                assert counter.unit in (UNIT_FEN, UNIT_USES), counter.unit
                # Lua indexes from 1.
                args.append(str(key_indexes.setdefault(counter.key, len(key_indexes) + 1)))
                args.append("f" if counter.unit == UNIT_FEN else "u")
                args.append(_bounded(counter.limit))
        keys = [self._key(key) for key in key_indexes]
        if claim:
            keys.append(self._claim_key(claim.request))
        keys.append(self._untimed_key)
        keys.append(self._changes_key)
        reply = cast(list[int], self._run_reserve(keys, args))
        if reply == [-1]:
            raise AlreadyClaimed(claim.request if claim else "")
        assert len(reply) == 3 * len(plan.steps), reply
        outcomes: list[StepOutcome] = []
        for position, step in enumerate(plan.steps):
            given_fen, wanted_fen, stop = (int(number) for number in reply[3 * position : 3 * position + 3])
            stopped_by: str | None = None
            if stop > 0:
                stopped_by = step.counters[stop - 1].label
            elif stop < 0:
                stopped_by = f"exclusive:{plan.steps[-stop - 1].rule.ref}"
            outcomes.append(StepOutcome(given_fen, wanted_fen, stopped_by))
        # The Decision invariants rely on these; a script that broke them would cost money.
        if not (
            all(0 <= outcome.given_fen <= outcome.wanted_fen for outcome in outcomes)
            and sum(outcome.given_fen for outcome in outcomes) <= plan.amount_fen
        ):  # the message is made only when it fails
            raise MoneyInvariantError(f"the reservation script gave outside 0 to what each rule wants, or over the amount: {reply}")
        return outcomes

    def use_clock(self, clock: Clock) -> None:
        """Count times to live from the engine's `clock`: a counter is set to expire COUNTER_KEPT_AFTER_CLOSE_S after
        its period closed by that clock. Redis counts the time down by its own, so a step of its clock (or a
        failover to a replica whose clock differs) moves the expiry by as much."""
        self.clock = clock

    def expire_closed(self, closed: Callable[[str], bool], session: Any = None, everything: bool = False) -> tuple[int, int]:
        """Give a period's counter that has no time to live (`reserve` creates them without) its own, and delete it
        instead if it is closed; `session` is ignored.

        The counters swipes created since the last call are in the untimed set, so this reads only those. Every
        counter's time to live is read (SCAN, then TTL in a script on each: on a million counters, seconds of work for Redis
        that lengthen the swipes' tail meanwhile) on the namespace's first call, once EXPIRE_READ_EVERY_COUNTER_S
        have passed since the last such read, and when `everything` is asked: counters written before swipes
        noted the ones they create, or by workers of an earlier release still running after that first call, are
        found only so.

        A key deleted or given a time to live meanwhile is harmless: a swipe never adds to a closed counter, and
        any time to live given to an open one is the same as this.
        """
        now = int(self.clock.now().timestamp())
        dropped = timed = 0
        raw = cast(bytes | str | None, self.client.get(self._scanned_key))
        last_read = int(raw) if raw is not None and _text(raw).isdigit() else None  # anything else: never
        if everything or last_read is None or now - last_read >= EXPIRE_READ_EVERY_COUNTER_S:
            dropped, timed = self._time(list(dict.fromkeys(self._scan())), closed, now)  # every counter of the namespace
            self.client.set(self._scanned_key, str(now))
        noted_dropped, noted_timed = self._expire_noted(closed, now)
        return dropped + noted_dropped, timed + noted_timed

    def _expire_noted(self, closed: Callable[[str], bool], now: int) -> tuple[int, int]:
        """Time (or drop) the counters of the untimed set, in one pass over it (SSCAN): those noted meanwhile may wait
        for the next call, so that a steady stream of new counters cannot keep this one going. Each batch is taken
        out of the set by the script that times it: a crash leaves the rest noted."""
        dropped = timed = 0
        cursor = 0
        while True:
            cursor, page = cast(tuple[int, list[bytes | str]], self.client.sscan(self._untimed_key, cursor, count=EXPIRE_BATCH_KEYS))
            batch_dropped, batch_timed = self._time([_text(raw) for raw in page], closed, now)
            dropped += batch_dropped
            timed += batch_timed
            if int(cursor) == 0:
                return dropped, timed

    def _time(self, stored_keys: list[str], closed: Callable[[str], bool], now: int) -> tuple[int, int]:
        """Delete the closed counters among `stored_keys` (namespaced) and give the others that have no time to live
        theirs, EXPIRE_BATCH_KEYS to a script (`time_untimed.lua`) that also takes them out of the untimed set;
        return how many were deleted, and how many timed."""
        dropped = timed = 0
        for start in range(0, len(stored_keys), EXPIRE_BATCH_KEYS):
            batch = stored_keys[start : start + EXPIRE_BATCH_KEYS]
            ttls = []
            for stored in batch:
                key = stored.removeprefix(self.prefix)
                ttls.append("closed" if closed(key) else _ttl(key, now))
            batch_dropped, batch_timed = cast(list[int], self._run(self._time_untimed, [self._untimed_key, *batch], ttls))
            dropped += int(batch_dropped)
            timed += int(batch_timed)
        return dropped, timed

    def check_settings(self) -> None:
        """Raise CountersMisconfigured if Redis may evict keys to make room: a counter evicted starts again from 0.

        With a `maxmemory`, only `maxmemory-policy noeviction` keeps every counter (a full Redis then refuses
        reservations, and capped swipes answer 503). Every other policy may drop counters: the allkeys-* ones
        any, the volatile-* ones those with a time to live, that is a period's, still open. On a cluster every
        node is asked. A server that refuses INFO (a managed service that renamed it) cannot be checked.
        """
        try:
            if isinstance(self.client, RedisCluster):  # its INFO goes to one node unless told
                per_node = list(cast(dict[str, dict[str, Any]], self.client.info("memory", target_nodes=RedisCluster.ALL_NODES)).values())
            else:
                per_node = [cast(dict[str, Any], self.client.info("memory"))]
        except redis.exceptions.ResponseError:
            return
        for info in per_node:
            policy = str(info.get("maxmemory_policy", "noeviction"))
            maxmemory = int(info.get("maxmemory", 0))
            if maxmemory and policy != "noeviction":
                raise CountersMisconfigured(
                    f"Redis may evict counters to make room (maxmemory {maxmemory} bytes, maxmemory-policy {policy}),"
                    " and a cap or budget would then be passed: set maxmemory-policy noeviction"
                )

    def _claims(self) -> Iterator[bytes | str]:
        pattern = _glob_escape("{" + self.namespace + "}claim:") + "*"
        return cast(Iterator[bytes | str], self.client.scan_iter(match=pattern, count=SCAN_COUNT))

    def _claims_left(self) -> bool:
        """Whether any claim is still there: a reservation made in the last REQUEST_CLAIM_S, perhaps in flight, a
        record whose outcome was unknown (kept pending), or an adjustment's give-back still to come (a hold)."""
        return next(self._claims(), None) is not None

    def reset(self) -> None:
        """Forget every counter, claim and hold (a world loaded afresh), and the untimed set; the change count moves on,
        for a rebuild under way."""
        self.replace_all({})
        self.client.delete(self._untimed_key, self._scanned_key)
        batch: list[bytes | str] = []
        for key in self._claims():
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)
        self.client.incr(self._changes_key)

    def unclaim(self, claim: Claim, outcome_unknown: bool = False) -> None:
        """Drop a request's claim if this attempt still holds it, so that a retry after a failed swipe can reserve again.

        `outcome_unknown`: the attempt's record may still commit, so the claim is kept, under another
        name and with its expiry, for `wait_until_quiet` to wait for; a retry is not held up by it.
        """
        keys = [self._claim_key(claim.request), self._claim_key("pending:" + claim.token), self._changes_key]
        self._run(self._unclaim, keys, [claim.token, "1" if outcome_unknown else "0"])

    def hold_give_back(self, token: str) -> None:
        """Before an adjustment commits: note that it gives caps back just after, as `apply(..., hold=token)`.

        Until then (or REQUEST_CLAIM_S, if the worker dies first) `wait_until_quiet` waits for it, and
        the note moves the change count, so a rebuild that noted the count before it writes nothing.
        """
        self._run(self._hold, [self._claim_key("hold:" + token), self._changes_key], [str(REQUEST_CLAIM_S)])

    def apply(self, deltas: Mapping[str, int], session: Any = None, hold: str | None = None) -> None:
        """Add `deltas` (negative to give back) atomically, without checking limits; counters at 0 are deleted.

        `hold`: the token of a `hold_give_back` note, dropped in the same step. If the note has expired
        (REQUEST_CLAIM_S passed since it was made), nothing changes and HoldExpired is raised: a rebuild
        may have counted the adjustment from the ledger since, and giving back too would count it twice.
        """
        changed = {key: delta for key, delta in deltas.items() if delta}
        if not changed and hold is None:
            return
        # INCRBY works on 64-bit integers in Redis itself, so deltas need no 2^53 bound here.
        held = [self._claim_key("hold:" + hold)] if hold is not None else []
        keys = [self._key(key) for key in changed] + held + [self._changes_key]
        now = int(self.clock.now().timestamp())
        args = [str(int(delta)) for delta in changed.values()] + [_ttl(key, now) for key in changed]
        if self._run(self._apply, keys, args) == -1:
            raise HoldExpired(hold or "")

    def read(self, keys: Iterable[str], session: Any = None) -> dict[str, int]:
        """Current values of `keys` (0 for a key never written), in one MGET."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        # One MGET is valid on a cluster: every key carries the same hash tag.
        values = cast(list[bytes | str | None], self.client.mget([self._key(key) for key in wanted]))
        return {key: int(value) if value is not None else 0 for key, value in zip(wanted, values, strict=True)}

    def _scan(self) -> Iterator[str]:
        # On a cluster redis-py scans every primary; the namespace lives on one of them.
        for raw in self.client.scan_iter(match=self._pattern, count=SCAN_COUNT):
            yield _text(cast(bytes | str, raw))

    def snapshot(self, session: Any = None) -> dict[str, int]:
        """Every counter of the namespace whose value is not 0, keys without the namespace prefix.

        Not at one moment with the ledger (`session` is ignored): under traffic, swipes in flight
        show as counters ahead of the ledger.
        """
        found = list(dict.fromkeys(self._scan()))
        counters: dict[str, int] = {}
        for start in range(0, len(found), MGET_BATCH_KEYS):
            batch = found[start : start + MGET_BATCH_KEYS]
            values = cast(list[bytes | str | None], self.client.mget(batch))
            for stored_key, value in zip(batch, values, strict=True):
                # A key deleted between SCAN and MGET reads as None: it is 0 now.
                if value is not None and int(value) != 0:
                    counters[stored_key.removeprefix(self.prefix)] = int(value)
        return counters

    def _change_count(self) -> _Unchanged:
        value = cast(bytes | str | None, self.client.get(self._changes_key))
        return _Unchanged("" if value is None else _text(value))

    def wait_until_quiet(self) -> _Unchanged:
        """Wait until terminals are quiet, and return the change count as it then reads.

        Quiet: no claim left, so no reservation made in the last REQUEST_CLAIM_S (which outlasts a
        live attempt) is in flight, no record whose outcome was unknown may still commit (its claim is
        kept pending as long), and no adjustment that committed has still to give its caps back (it
        holds a claim from before its commit until its give-back); then REBUILD_SETTLE_S more with no
        counter changed. Raises CountersBusy if terminals are not quiet within COUNTERS_QUIET_WAIT_S_MAX.
        """
        deadline = time.monotonic() + COUNTERS_QUIET_WAIT_S_MAX
        while True:
            mark = self._change_count()
            if not self._claims_left():
                time.sleep(REBUILD_SETTLE_S)
                if self._change_count() == mark:
                    return mark
            if time.monotonic() >= deadline:
                raise CountersBusy(
                    f"terminals did not go quiet within {COUNTERS_QUIET_WAIT_S_MAX:g} s: swipes kept reserving or giving back caps"
                    f" (a swipe's claim lasts {REQUEST_CLAIM_S} s). Nothing was written; run it again when terminals are quiet,"
                    " or with --under-traffic"
                )
            time.sleep(QUIET_POLL_S)

    def lock_all(self, session: Any) -> None:
        """Nothing to lock with the ledger: Redis is another store (`wait_until_quiet` and `replace_all`'s check instead)."""

    def replace_all(self, values: Mapping[str, int], session: Any = None, unchanged_since: Any = None) -> None:
        """Make the namespace's counters exactly `values`: write them, delete the rest (`session` is ignored).

        Up to REPLACE_ATOMIC_KEYS_MAX counters this is one atomic script. A larger set (a city's
        worth) would block Redis for seconds in one script, so it is written in scripts of
        REPLACE_BATCH_KEYS counters: first the values, then a 0 for each counter the ledger no
        longer has, found by a SCAN beforehand (a counter a swipe creates after that SCAN stays).

        With `unchanged_since` (the mark `wait_until_quiet` returned before the ledger was read),
        each script first checks that no counter has changed since; if one has, it writes nothing
        and CountersBusy says how many counters were written before. Each counter is then either
        rebuilt (right when it was written, later swipes counted on top) or as it was.
        Without it (`--under-traffic`), a swipe between the ledger read and the write is lost from
        the counters it touched.
        """
        assert unchanged_since is None or isinstance(unchanged_since, _Unchanged), unchanged_since
        guard = ["1", unchanged_since.count] if unchanged_since is not None else ["0", ""]
        nonzero = {key: int(value) for key, value in values.items() if value}
        now = int(self.clock.now().timestamp())
        if len(nonzero) <= REPLACE_ATOMIC_KEYS_MAX:
            keys = [self._changes_key] + [self._key(key) for key in nonzero]
            args = [*guard, self._pattern]
            for key, value in nonzero.items():
                args += (str(value), _ttl(key, now))
            if self._run(self._replace_all, keys, args) == -1:
                raise CountersBusy(_changed_message(0, len(nonzero)))
            return
        wanted = {self._key(key): (str(value), _ttl(key, now)) for key, value in nonzero.items()}
        stale = [stored for stored in dict.fromkeys(self._scan()) if stored not in wanted]
        items = list(wanted.items()) + [(stored, ("0", "0")) for stored in stale]
        for start in range(0, len(items), REPLACE_BATCH_KEYS):
            batch = items[start : start + REPLACE_BATCH_KEYS]
            keys = [self._changes_key] + [key for key, _value in batch]
            args = list(guard)
            for _key, value_and_ttl in batch:
                args += value_and_ttl
            if self._run(self._replace_batch, keys, args) == -1:
                raise CountersBusy(_changed_message(start, len(items)))


def _changed_message(written: int, total: int) -> str:
    already = (
        "nothing was written"
        if not written
        else f"{written} of the {total} counters to write or delete were done first; each counter is either rebuilt or as it was"
    )
    return (
        f"a swipe changed counters while the rebuild ran, so it stopped: {already}. Run it again when terminals are quiet,"
        " then `pos-engine counters reconcile`"
    )
