"""The Redis counter store against real Redis: the Lua script mirrors `execute_plan` exactly.

Needs Redis on 127.0.0.1:6379; the tests fail, not skip, when it is not there.
The cluster test starts its own three-node Redis Cluster on 127.0.0.1:7101-7103.
Every test uses its own namespace and deletes it afterwards.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from redis.cluster import RedisCluster

from pos_engine.domain.clock import FixedClock
from pos_engine.domain.evaluation import UNIT_FEN, UNIT_USES, CounterRef, Plan, PlanStep, StepOutcome, execute_plan
from pos_engine.domain.money import MoneyInvariantError, percent_of
from pos_engine.domain.rulebook import Benefit, BenefitKind, Rule
from pos_engine.service.errors import AlreadyClaimed, CountersBusy, CountersMisconfigured, HoldExpired
from pos_engine.service.ports import Claim
from pos_engine.store import redis_counters
from pos_engine.store.redis_counters import AMOUNT_FEN_MAX, RedisCounterStore

pytestmark = pytest.mark.redis

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
CLUSTER_PORTS = (7101, 7102, 7103)
CLUSTER_READY_TIMEOUT_S = 30.0
SOCKET_TIMEOUT_S = 5.0


def connect() -> redis.Redis[bytes]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=SOCKET_TIMEOUT_S)
    # No skip: a missing Redis is a failure of the test environment, and must show as one.
    client.ping()
    return client


def connect_cluster() -> RedisCluster[bytes]:
    return RedisCluster(host=REDIS_HOST, port=CLUSTER_PORTS[0], socket_timeout=SOCKET_TIMEOUT_S)


def unique_namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


def wipe(store: RedisCounterStore) -> None:
    store.reset()
    store.client.delete(store._changes_key)
    assert not list(store.client.scan_iter(match=redis_counters._glob_escape("{" + store.namespace + "}") + "*"))


@pytest.fixture
def redis_client() -> Iterator[redis.Redis[bytes]]:
    client = connect()
    yield client
    client.close()


@pytest.fixture
def make_store(redis_client: redis.Redis[bytes]) -> Iterator[Callable[..., RedisCounterStore]]:
    stores: list[RedisCounterStore] = []

    def make(namespace: str | None = None) -> RedisCounterStore:
        store = RedisCounterStore(redis_client, namespace=namespace or unique_namespace())
        stores.append(store)
        return store

    yield make
    for store in stores:
        wipe(store)


@pytest.fixture
def store(make_store: Callable[..., RedisCounterStore]) -> RedisCounterStore:
    return make_store()


def make_rule(
    rule_id: str = "r1",
    *,
    campaign_id: str = "c1",
    kind: BenefitKind = "subsidy",
    percent_bp: int | None = None,
    amount_fen_max: int | None = None,
    fixed_fen: int | None = None,
    exclusive: bool = False,
) -> Rule:
    benefit = Benefit(kind, percent_bp=percent_bp, amount_fen_max=amount_fen_max, fixed_fen=fixed_fen)
    return Rule(campaign_id, rule_id, benefit, exclusive=exclusive)


def uses_cap(key: str, limit: int) -> CounterRef:
    return CounterRef(key, UNIT_USES, limit, "card/day/uses")


def fen_cap(key: str, limit: int) -> CounterRef:
    return CounterRef(key, UNIT_FEN, limit, "campaign/budget/fen")


# --- the state machine: the real store against a dict driven by execute_plan -------------

# A small pool, so that steps of one plan and successive plans share counters,
# as campaign-level caps are shared by all the campaign's rules.
KEY_POOL = (
    ("card:c1:day:uses", UNIT_USES),
    ("card:c1:month:fen", UNIT_FEN),
    ("campaign:c1:budget:fen", UNIT_FEN),
    ("merchant:m1:week:fen", UNIT_FEN),
    ("rule:c2/r1:card:week:uses", UNIT_USES),
)
KEY_NAMES = tuple(key for key, _ in KEY_POOL)
KINDS: tuple[BenefitKind, ...] = ("discount", "subsidy")

small_or_huge_fen = st.one_of(st.integers(0, 3_000), st.integers(0, AMOUNT_FEN_MAX), st.just(AMOUNT_FEN_MAX))


@st.composite
def counter_refs(draw: st.DrawFn) -> CounterRef:
    key, unit = draw(st.sampled_from(KEY_POOL))
    limit = draw(st.integers(0, 6)) if unit == UNIT_USES else draw(small_or_huge_fen)
    if draw(st.booleans()) and unit == UNIT_USES:
        limit = draw(st.integers(0, AMOUNT_FEN_MAX))
    return CounterRef(key, unit, limit, f"{key}/label")


@st.composite
def benefits(draw: st.DrawFn) -> Benefit:
    kind: BenefitKind = draw(st.sampled_from(KINDS))
    if draw(st.booleans()):
        amount_fen_max = draw(st.none() | small_or_huge_fen)
        return Benefit(kind, percent_bp=draw(st.integers(0, 10_000)), amount_fen_max=amount_fen_max)
    return Benefit(kind, fixed_fen=draw(small_or_huge_fen))


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    steps = []
    for index in range(draw(st.integers(0, 6))):
        rule_ = Rule(
            draw(st.sampled_from(["c1", "c2"])),
            f"r{index}",
            draw(benefits()),
            exclusive=draw(st.booleans()),
        )
        steps.append(PlanStep(rule_, tuple(draw(st.lists(counter_refs(), max_size=4)))))
    amount_fen = draw(st.one_of(st.integers(0, 5_000), st.integers(0, AMOUNT_FEN_MAX), st.just(AMOUNT_FEN_MAX)))
    return Plan(amount_fen, tuple(steps), ())


class CounterStoreMachine(RuleBasedStateMachine):
    """Drive the real RedisCounterStore and a dict model side by side; they never differ."""

    connect: Callable[[], Any] = staticmethod(connect)

    def __init__(self) -> None:
        super().__init__()
        self.client = type(self).connect()
        self.store = RedisCounterStore(self.client, namespace=unique_namespace())
        self.model: dict[str, int] = {}

    @initialize(values=st.dictionaries(st.sampled_from(KEY_NAMES), st.integers(-5, 3_000), max_size=3))
    def start_from(self, values: dict[str, int]) -> None:
        self.store.replace_all(values)
        self.model = dict(values)

    @rule(plan=plans())
    def reserve(self, plan: Plan) -> None:
        stored = self.store.reserve(plan)
        expected = execute_plan(plan, self.model)
        assert stored == expected

    @rule(deltas=st.dictionaries(st.sampled_from(KEY_NAMES), st.integers(-3_000, 3_000), max_size=3))
    def apply(self, deltas: dict[str, int]) -> None:
        self.store.apply(deltas)
        for key, delta in deltas.items():
            self.model[key] = self.model.get(key, 0) + delta

    @rule(data=st.data())
    def give_back_a_reservation(self, data: st.DataObject) -> None:
        held = sorted(key for key, value in self.model.items() if value > 0)
        if not held:
            return
        key = data.draw(st.sampled_from(held))
        delta = -data.draw(st.integers(1, self.model[key]))
        self.store.apply({key: delta})
        self.model[key] += delta

    @invariant()
    def counters_agree(self) -> None:
        assert self.store.snapshot() == {key: value for key, value in self.model.items() if value}
        assert self.store.read(KEY_NAMES) == {key: self.model.get(key, 0) for key in KEY_NAMES}

    def teardown(self) -> None:
        wipe(self.store)
        self.client.close()


CounterStoreMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCounterStoreMatchesExecutePlan = CounterStoreMachine.TestCase


# --- examples -----------------------------------------------------------------------------


def test_a_campaign_cap_shared_by_two_rules_sees_the_first_rules_increment(store: RedisCounterStore) -> None:
    budget = fen_cap("campaign:c1:budget:fen", 500)
    plan = Plan(
        10_000,
        (
            PlanStep(make_rule("r1", kind="discount", fixed_fen=300), (budget,)),
            PlanStep(make_rule("r2", kind="subsidy", fixed_fen=300), (budget,)),
        ),
        (),
    )
    assert store.reserve(plan) == [StepOutcome(300, 300, None), StepOutcome(200, 300, "campaign/budget/fen")]
    assert store.read(["campaign:c1:budget:fen"]) == {"campaign:c1:budget:fen": 500}


def test_an_exclusive_rule_stops_later_rules_of_its_kind_only(store: RedisCounterStore) -> None:
    plan = Plan(
        10_000,
        (
            PlanStep(make_rule("r1", kind="discount", percent_bp=1_000, exclusive=True), ()),
            PlanStep(make_rule("r2", kind="discount", fixed_fen=100), (uses_cap("u", 5),)),
            PlanStep(make_rule("r3", kind="subsidy", fixed_fen=100), (uses_cap("u", 5),)),
        ),
        (),
    )
    assert store.reserve(plan) == [
        StepOutcome(1_000, 1_000, None),
        StepOutcome(0, 100, "exclusive:c1/r1"),
        StepOutcome(100, 100, None),
    ]
    assert store.snapshot() == {"u": 1}


# amount * bp passes 2^53 for these; the last two are where a plain double
# multiplication rounds the product up across a whole fen.
HUGE_PERCENTS = [
    *(
        (amount_fen, percent_bp)
        for amount_fen in (AMOUNT_FEN_MAX, AMOUNT_FEN_MAX - 1, 9_007_199_254)
        for percent_bp in (1, 3_333, 9_999, 10_000)
    ),
    (999_999_800_001, 9_999),
    (999_997_000_001, 9_999),
]


@pytest.mark.parametrize(("amount_fen", "percent_bp"), HUGE_PERCENTS)
def test_a_percent_of_a_huge_amount_rounds_down_exactly(store: RedisCounterStore, amount_fen: int, percent_bp: int) -> None:
    plan = Plan(amount_fen, (PlanStep(make_rule(percent_bp=percent_bp), (fen_cap("f", AMOUNT_FEN_MAX),)),), ())
    wanted = percent_of(amount_fen, percent_bp)
    assert store.reserve(plan) == [StepOutcome(wanted, wanted, None)]
    assert store.read(["f"]) == {"f": wanted}


def test_amounts_above_the_exact_bound_are_refused_before_calling_redis(store: RedisCounterStore) -> None:
    plan = Plan(AMOUNT_FEN_MAX + 1, (PlanStep(make_rule(fixed_fen=1), ()),), ())
    with pytest.raises(MoneyInvariantError):
        store.reserve(plan)
    assert store.snapshot() == {}


def _counting_client(commands: list[str]) -> redis.Redis[bytes]:
    """A client whose connections (the pool's, and the store's own per-thread ones) record every command they send."""

    class CountingConnection(redis.Connection):
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            name = args[0]
            commands.append(name.decode() if isinstance(name, bytes) else str(name))
            super().send_command(*args, **kwargs)

    pool = redis.ConnectionPool(connection_class=CountingConnection, host=REDIS_HOST, port=REDIS_PORT, socket_timeout=SOCKET_TIMEOUT_S)
    return redis.Redis(connection_pool=pool)


def _four_step_plan() -> Plan:
    shared = uses_cap("shared", 10)
    return Plan(
        5_000,
        tuple(PlanStep(make_rule(f"r{index}", fixed_fen=100), (shared, fen_cap(f"f{index}", 1_000))) for index in range(4)),
        (),
    )


def test_reserve_is_one_round_trip() -> None:
    commands: list[str] = []
    client = _counting_client(commands)
    try:
        store = RedisCounterStore(client, namespace=unique_namespace())
        plan = _four_step_plan()
        store.reserve(plan)  # connects (handshake commands), may load the script, once
        store.read(["shared"])  # connects the pool's connection, which `apply` uses
        commands.clear()
        store.reserve(plan)
        assert commands == ["EVALSHA"]
        commands.clear()
        store.apply({"shared": -1, "f0": -100, "f1": 5})
        assert commands == ["EVALSHA"]
    finally:
        wipe(store)
        client.close()


def test_a_server_that_lost_its_scripts_gets_the_source_once(redis_client: redis.Redis[bytes]) -> None:
    commands: list[str] = []
    client = _counting_client(commands)
    try:
        store = RedisCounterStore(client, namespace=unique_namespace())
        plan = _four_step_plan()
        store.reserve(plan)
        redis_client.script_flush()  # as after a restart without persistence
        commands.clear()
        assert [outcome.given_fen for outcome in store.reserve(plan)] == [100, 100, 100, 100]
        assert commands == ["EVALSHA", "EVAL"]
        commands.clear()
        store.reserve(plan)
        assert commands == ["EVALSHA"]
        assert store.read(["shared", "f0"]) == {"shared": 10, "f0": 300}  # three reservations, the uses cap of 10 reached
    finally:
        wipe(store)
        client.close()


def test_a_connection_killed_under_the_reservation_fails_that_call_and_the_next_one_reconnects(
    redis_client: redis.Redis[bytes],
) -> None:
    client = connect()
    try:
        store = RedisCounterStore(client, namespace=unique_namespace())
        plan = _four_step_plan()
        store.reserve(plan)
        client_names = {entry["id"] for entry in redis_client.client_list()}
        own_id = redis_client.client_id()
        for client_id in client_names - {own_id}:
            redis_client.client_kill_filter(_id=client_id)
        with pytest.raises(redis.ConnectionError):
            store.reserve(plan)
        # Nothing half-read is left behind: the next call reconnects and reserves, and every reply is its own.
        assert [outcome.given_fen for outcome in store.reserve(plan)] == [100, 100, 100, 100]
        assert store.read(["shared"]) == {"shared": 8}
    finally:
        wipe(store)
        client.close()


def test_keys_carry_the_namespace_hash_tag(store: RedisCounterStore, redis_client: redis.Redis[bytes]) -> None:
    store.apply({"a": 1, "b:c": 2})
    raw = sorted(key.decode() for key in redis_client.scan_iter(match=f"{{{store.namespace}}}:*"))
    assert raw == [f"{{{store.namespace}}}:a", f"{{{store.namespace}}}:b:c"]


# --- concurrency --------------------------------------------------------------------------

SWIPES = 50


def reserve_concurrently(store: RedisCounterStore, plan: Plan) -> list[StepOutcome]:
    start = threading.Barrier(SWIPES)
    results: list[StepOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def swipe() -> None:
        try:
            start.wait()
            outcomes = store.reserve(plan)
            with lock:
                results.extend(outcomes)
        except BaseException as error:  # surfaced below: a thread's exception must fail the test
            errors.append(error)

    threads = [threading.Thread(target=swipe) for _ in range(SWIPES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == SWIPES
    return results


def test_fifty_concurrent_swipes_never_pass_a_uses_cap_of_seven(store: RedisCounterStore) -> None:
    plan = Plan(1_000, (PlanStep(make_rule(fixed_fen=100), (uses_cap("card:day:uses", 7),)),), ())
    outcomes = reserve_concurrently(store, plan)
    assert sum(1 for outcome in outcomes if outcome.given_fen > 0) == 7
    assert all(outcome.stopped_by == "card/day/uses" for outcome in outcomes if outcome.given_fen == 0)
    assert store.read(["card:day:uses"]) == {"card:day:uses": 7}


def test_fifty_concurrent_swipes_share_a_budget_to_the_fen(store: RedisCounterStore) -> None:
    plan = Plan(1_000, (PlanStep(make_rule(fixed_fen=150), (fen_cap("campaign:c1:budget:fen", 1_000),)),), ())
    outcomes = reserve_concurrently(store, plan)
    given = sorted((outcome.given_fen for outcome in outcomes), reverse=True)
    assert sum(given) == 1_000
    assert given[:7] == [150] * 6 + [100]
    assert set(given[7:]) == {0}
    assert sum(1 for outcome in outcomes if outcome.stopped_by == "campaign/budget/fen") == SWIPES - 6
    assert store.read(["campaign:c1:budget:fen"]) == {"campaign:c1:budget:fen": 1_000}


# --- apply, read, snapshot, replace_all ---------------------------------------------------


def test_apply_adds_negative_deltas_and_deletes_counters_back_at_zero(store: RedisCounterStore, redis_client: redis.Redis[bytes]) -> None:
    store.apply({"a": 5, "b": 7, "c": 0})
    store.apply({"a": -2, "b": -7})
    assert store.read(["a", "b", "c"]) == {"a": 3, "b": 0, "c": 0}
    assert store.snapshot() == {"a": 3}
    assert redis_client.exists(f"{{{store.namespace}}}:b") == 0
    store.apply({"a": -5})
    assert store.snapshot() == {"a": -2}


def test_read_of_no_keys_is_empty(store: RedisCounterStore) -> None:
    assert store.read([]) == {}


def test_snapshot_and_replace_all_round_trip(make_store: Callable[..., RedisCounterStore]) -> None:
    store = make_store()
    values = {f"card:{index}:day:uses": index + 1 for index in range(2_500)} | {"campaign:c1:budget:fen": 10**12, "odd:key:*?[x]": 3}
    store.apply({"stale": 9})
    store.replace_all(values | {"zero": 0})
    assert store.snapshot() == values
    copy = make_store()
    copy.replace_all(store.snapshot())
    assert copy.snapshot() == values
    store.replace_all({})
    assert store.snapshot() == {}
    assert copy.snapshot() == values


def test_replace_all_leaves_other_namespaces_alone(make_store: Callable[..., RedisCounterStore]) -> None:
    base = unique_namespace()
    # Glob characters in a namespace must match only themselves.
    store = make_store(base + "*?[a]")
    neighbours = [make_store(base), make_store(base + "x?[a]"), make_store(base + "xa")]
    for neighbour in neighbours:
        neighbour.apply({"k": 1})
    store.apply({"k": 2})
    store.replace_all({"j": 3})
    assert store.snapshot() == {"j": 3}
    for neighbour in neighbours:
        assert neighbour.snapshot() == {"k": 1}


def test_from_url_connects_to_a_single_server() -> None:
    store = RedisCounterStore.from_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", namespace=unique_namespace())
    try:
        store.apply({"k": 4})
        assert store.read(["k"]) == {"k": 4}
    finally:
        wipe(store)
        store.client.close()


# --- Redis Cluster ------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((REDIS_HOST, port)) != 0


def _cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-h", REDIS_HOST, "-p", str(port), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=CLUSTER_READY_TIMEOUT_S,
    ).stdout


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _answers(port: int) -> bool:
    try:
        return _cli(port, "ping").strip() == "PONG"
    except subprocess.CalledProcessError:
        return False


def _cluster_is_ok(port: int) -> bool:
    return "cluster_state:ok" in _cli(port, "cluster", "info")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Start a three-node Redis Cluster on loopback, without replicas; shut it down afterwards."""
    assert shutil.which("redis-server"), "redis-server is needed for the cluster test"
    busy = [port for port in CLUSTER_PORTS if not _port_is_free(port)]
    assert not busy, f"ports {busy} are taken; the cluster test needs them"
    started: list[int] = []
    try:
        for port in CLUSTER_PORTS:
            directory: Path = tmp_path_factory.mktemp(f"redis-cluster-{port}")
            subprocess.run(
                [
                    "redis-server",
                    "--port", str(port),
                    "--bind", REDIS_HOST,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(directory / "nodes.conf"),
                    "--dir", str(directory),
                    "--daemonize", "yes",
                    "--save", "",
                    "--appendonly", "no",
                    "--logfile", str(directory / "redis.log"),
                ],
                check=True,
                timeout=CLUSTER_READY_TIMEOUT_S,
            )  # fmt: skip
            started.append(port)
        for port in CLUSTER_PORTS:
            _wait_for(partial(_answers, port), f"redis-server on port {port}")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{REDIS_HOST}:{port}" for port in CLUSTER_PORTS),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=CLUSTER_READY_TIMEOUT_S,
        )
        for port in CLUSTER_PORTS:
            _wait_for(partial(_cluster_is_ok, port), f"cluster_state:ok on port {port}")
        yield
    finally:
        for port in started:
            subprocess.run(
                ["redis-cli", "-h", REDIS_HOST, "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10, check=False
            )


@pytest.fixture
def cluster_store(redis_cluster: None) -> Iterator[RedisCounterStore]:
    store = RedisCounterStore.from_url(f"redis-cluster://{REDIS_HOST}:{CLUSTER_PORTS[0]}", namespace=unique_namespace())
    assert isinstance(store.client, RedisCluster)
    yield store
    wipe(store)
    store.client.close()


@pytest.mark.slow
def test_reserve_apply_and_snapshot_work_on_a_redis_cluster(cluster_store: RedisCounterStore) -> None:
    store = cluster_store
    # No command is sent again after a timeout: a give-back whose reply was late must not be given twice.
    assert isinstance(store.client, RedisCluster)
    assert set(type(store.client).ERRORS_ALLOW_RETRY) == {redis.exceptions.ClusterDownError, redis.exceptions.SlotNotCoveredError}
    shared = fen_cap("campaign:c1:budget:fen", 700)
    plan = Plan(
        10_000,
        (
            PlanStep(make_rule("r1", kind="discount", fixed_fen=400), (uses_cap("card:1:day:uses", 1), shared)),
            PlanStep(make_rule("r2", kind="subsidy", percent_bp=1_000), (uses_cap("card:1:week:uses", 3), shared)),
        ),
        (),
    )
    assert store.reserve(plan) == [StepOutcome(400, 400, None), StepOutcome(300, 960, "campaign/budget/fen")]
    assert store.reserve(plan) == [StepOutcome(0, 400, "card/day/uses"), StepOutcome(0, 1_000, "campaign/budget/fen")]
    store.apply({"campaign:c1:budget:fen": -300, "card:1:week:uses": -1})
    assert store.snapshot() == {"card:1:day:uses": 1, "campaign:c1:budget:fen": 400}
    assert store.read(["card:1:day:uses", "card:1:week:uses", "nothing"]) == {"card:1:day:uses": 1, "card:1:week:uses": 0, "nothing": 0}
    store.replace_all({"a": 1, "b": 2})
    assert store.snapshot() == {"a": 1, "b": 2}
    # A request's claim, and dropping it only with the token that took it.
    claimed = Plan(10_000, (PlanStep(make_rule("r3", fixed_fen=100), (fen_cap("a", 1_000),)),), ())
    assert store.reserve(claimed, claim=Claim("t-1:req-1", "first"))[0].given_fen == 100
    with pytest.raises(AlreadyClaimed):
        store.reserve(claimed, claim=Claim("t-1:req-1", "second"))
    store.unclaim(Claim("t-1:req-1", "second"))
    with pytest.raises(AlreadyClaimed):
        store.reserve(claimed, claim=Claim("t-1:req-1", "third"))
    store.unclaim(Claim("t-1:req-1", "first"))
    assert store.reserve(claimed, claim=Claim("t-1:req-1", "fourth"))[0].given_fen == 100
    # Every key of the namespace, claims included, sits in one slot, so on one node.
    client = store.client
    assert isinstance(client, RedisCluster)
    keys = [f"{store.prefix}{key}" for key in ("a", "b", "campaign:c1:budget:fen")] + [store._claim_key("t-1:req-1"), store._changes_key]
    assert len({client.keyslot(key) for key in keys}) == 1


@pytest.mark.slow
def test_the_state_machine_holds_on_a_redis_cluster(redis_cluster: None) -> None:
    class ClusterMachine(CounterStoreMachine):
        connect = staticmethod(connect_cluster)

    run_state_machine_as_test(
        ClusterMachine,
        settings=settings(max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
    )


def test_a_claimed_request_reserves_nothing_until_it_is_unclaimed(store: RedisCounterStore) -> None:
    budget = fen_cap("campaign:c1:budget:fen", 1_000)
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (budget,)),), ())
    assert store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1")) == [StepOutcome(300, 300, None)]
    with pytest.raises(AlreadyClaimed):
        store.reserve(plan, claim=Claim("t-1:req-1", "attempt-2"))  # the retry holds no caps, not even for a moment
    assert store.read(["campaign:c1:budget:fen"]) == {"campaign:c1:budget:fen": 300}
    assert store.reserve(plan, claim=Claim("t-1:req-2", "attempt-2"))[0].given_fen == 300  # another request is not blocked
    assert store.snapshot() == {"campaign:c1:budget:fen": 600}  # claims are not counters
    store.unclaim(Claim("t-1:req-1", "attempt-1"))
    assert store.reserve(plan, claim=Claim("t-1:req-1", "attempt-3"))[0].given_fen == 300


def test_an_attempt_drops_only_the_claim_it_holds(store: RedisCounterStore) -> None:
    """An attempt that found the request claimed, or whose claim expired and was taken by another attempt since,
    leaves that other attempt's claim in place when it fails."""
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (fen_cap("campaign:c1:budget:fen", 10_000),)),), ())
    store.reserve(plan, claim=Claim("t-1:req-1", "first"))
    store.client.delete(store._claim_key("t-1:req-1"))  # the first attempt's claim expires ...
    store.reserve(plan, claim=Claim("t-1:req-1", "second"))  # ... and a retry claims the request
    with pytest.raises(AlreadyClaimed):
        store.reserve(plan, claim=Claim("t-1:req-1", "third"))
    store.unclaim(Claim("t-1:req-1", "first"))  # the first attempt fails late
    store.unclaim(Claim("t-1:req-1", "third"))  # the third found it taken, and fails too
    with pytest.raises(AlreadyClaimed):
        store.reserve(plan, claim=Claim("t-1:req-1", "fourth"))  # the second attempt still holds it
    store.unclaim(Claim("t-1:req-1", "second"))
    assert store.reserve(plan, claim=Claim("t-1:req-1", "fifth"))[0].given_fen == 300


def test_a_claim_outlasts_a_live_attempt_but_frees_a_killed_worker_s_request_within_a_minute(store: RedisCounterStore) -> None:
    from pos_engine.limits import (
        LOST_ANSWER_WAIT_S_MAX,
        POSTGRESQL_CONNECT_TIMEOUT_S,
        POSTGRESQL_DEAD_HOST_S,
        RECORD_ANSWER_S_MAX,
        REDIS_CONNECT_TIMEOUT_S,
        REDIS_SOCKET_TIMEOUT_S,
    )

    budget = fen_cap("campaign:c1:budget:fen", 1_000)
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (budget,)),), ())
    store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1"))
    # The longest a live attempt holds its claim: the record's wait, the look-up after a lost answer on a
    # new connection to a host that may be dying, and dropping the claim.
    live_attempt_s = (RECORD_ANSWER_S_MAX + POSTGRESQL_CONNECT_TIMEOUT_S + LOST_ANSWER_WAIT_S_MAX + POSTGRESQL_DEAD_HOST_S) + (
        REDIS_CONNECT_TIMEOUT_S + REDIS_SOCKET_TIMEOUT_S
    )
    ttl_ms = store.client.pttl(store._claim_key("t-1:req-1"))
    assert live_attempt_s * 1000 < ttl_ms <= 60_000  # a worker killed mid-swipe leaves its request 409 for under a minute


def test_a_rebuild_larger_than_one_script_is_written_in_batches(store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from pos_engine.store import redis_counters

    monkeypatch.setattr(redis_counters, "REPLACE_ATOMIC_KEYS_MAX", 10)
    monkeypatch.setattr(redis_counters, "REPLACE_BATCH_KEYS", 7)
    store.replace_all({"old:fen": 5})
    values = {f"k{index}:fen": index + 1 for index in range(25)}
    store.replace_all(values)
    assert store.snapshot() == values


def test_a_rebuild_leaves_request_claims_alone(store: RedisCounterStore) -> None:
    """A claim still guards its request after a rebuild: a retry in flight does not hold caps twice."""
    budget = fen_cap("campaign:c1:budget:fen", 1_000)
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (budget,)),), ())
    store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1"))
    store.replace_all({})
    with pytest.raises(AlreadyClaimed):
        store.reserve(plan, claim=Claim("t-1:req-1", "attempt-2"))


def change_count(store: RedisCounterStore) -> int:
    return int(store.client.get(store._changes_key) or 0)


def test_every_change_to_a_counter_moves_the_change_count_and_nothing_else_does(store: RedisCounterStore) -> None:
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (uses_cap("card:1:day:uses", 1),)),), ())
    assert change_count(store) == 0
    store.reserve(plan)
    assert change_count(store) == 1
    assert store.reserve(plan)[0].given_fen == 0  # the cap is full: nothing taken, nothing changed
    store.read(["card:1:day:uses"])
    store.snapshot()
    assert change_count(store) == 1
    store.apply({"card:1:day:uses": -1})
    assert change_count(store) == 2
    store.replace_all({"a": 1})  # the rebuild's own writes are not swipes
    assert change_count(store) == 2


@pytest.fixture
def quick_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_counters, "REBUILD_SETTLE_S", 0.05)
    monkeypatch.setattr(redis_counters, "QUIET_POLL_S", 0.05)


def test_waiting_for_quiet_lasts_until_the_last_claim_has_expired(store: RedisCounterStore, quick_quiet: None) -> None:
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (fen_cap("a", 1_000),)),), ())
    store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1"))
    store.client.pexpire(store._claim_key("t-1:req-1"), 300)
    mark = store.wait_until_quiet()
    assert not store.client.exists(store._claim_key("t-1:req-1"))
    store.replace_all({"a": 7}, unchanged_since=mark)
    assert store.snapshot() == {"a": 7}


def test_waiting_for_quiet_gives_up_while_terminals_keep_swiping(
    store: RedisCounterStore, quick_quiet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_counters, "COUNTERS_QUIET_WAIT_S_MAX", 0.3)
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (fen_cap("a", 1_000),)),), ())
    store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1"))
    with pytest.raises(CountersBusy, match=r"did not go quiet within 0\.3 s.*Nothing was written.*--under-traffic"):
        store.wait_until_quiet()
    assert store.snapshot() == {"a": 300}


def test_a_counter_changed_while_settling_starts_the_wait_again(
    store: RedisCounterStore, quick_quiet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A give-back after the claims are gone (an adjustment's, just after its commit) is waited for, not missed."""
    store.replace_all({"a": 300})
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        if not sleeps:
            store.apply({"a": -100})
        sleeps.append(seconds)

    monkeypatch.setattr(redis_counters, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    mark = store.wait_until_quiet()
    assert len(sleeps) == 3  # settle, poll, settle
    store.replace_all({"a": 200}, unchanged_since=mark)  # the mark is after the give-back: it writes
    assert store.snapshot() == {"a": 200}


def test_a_rebuild_writes_nothing_over_a_swipe_since_its_mark(store: RedisCounterStore, quick_quiet: None) -> None:
    store.replace_all({"a": 500, "old": 1})
    mark = store.wait_until_quiet()
    store.reserve(Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (fen_cap("a", 1_000),)),), ()))
    with pytest.raises(CountersBusy, match="nothing was written"):
        store.replace_all({"a": 500, "b": 1}, unchanged_since=mark)
    assert store.snapshot() == {"a": 800, "old": 1}


def test_a_large_rebuild_stops_at_the_first_batch_after_a_swipe_and_keeps_it(
    store: RedisCounterStore, quick_quiet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches written before the swipe hold the ledger's values (the swipe counts on top); the rest are left as they were."""
    monkeypatch.setattr(redis_counters, "REPLACE_ATOMIC_KEYS_MAX", 10)
    monkeypatch.setattr(redis_counters, "REPLACE_BATCH_KEYS", 7)
    old = {f"k{index:02}:fen": 100 + index for index in range(25)} | {"stale:fen": 3}
    store.replace_all(old)
    mark = store.wait_until_quiet()
    run = store._run
    batches: list[int] = []

    def run_then_swipe(script: Any, keys: list[str], args: list[str]) -> Any:
        result = run(script, keys, args)
        if script is store._replace_batch:
            batches.append(len(keys) - 1)
            if len(batches) == 1:  # a swipe on a counter of the first batch and one of a later batch
                caps = (fen_cap("k00:fen", 10**6), fen_cap("k20:fen", 10**6))
                store.reserve(Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=50), caps),), ()))
        return result

    monkeypatch.setattr(store, "_run", run_then_swipe)
    new = {f"k{index:02}:fen": index + 1 for index in range(25)}
    with pytest.raises(CountersBusy, match="7 of the 26 counters to write or delete were done first; each counter is either rebuilt"):
        store.replace_all(new, unchanged_since=mark)
    assert batches == [7, 7]  # the second batch found the swipe and wrote nothing
    expected = {key: new[key] if int(key[1:3]) < 7 else value for key, value in old.items() if key.startswith("k")}
    expected["k00:fen"] += 50
    expected["k20:fen"] += 50
    assert store.snapshot() == expected | {"stale:fen": 3}


def test_a_large_rebuild_under_traffic_keeps_a_counter_created_after_its_scan(
    store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the check nothing stops it, but a counter it never saw is not deleted (no window of empty counters either)."""
    monkeypatch.setattr(redis_counters, "REPLACE_ATOMIC_KEYS_MAX", 2)
    monkeypatch.setattr(redis_counters, "REPLACE_BATCH_KEYS", 2)
    store.replace_all({"gone:fen": 9})
    scan = store._scan

    def scan_then_swipe() -> Iterator[str]:
        yield from scan()
        store.apply({"new:fen": 40})

    monkeypatch.setattr(store, "_scan", scan_then_swipe)
    store.replace_all({"a:fen": 1, "b:fen": 2, "c:fen": 3})
    monkeypatch.undo()
    assert store.snapshot() == {"a:fen": 1, "b:fen": 2, "c:fen": 3, "new:fen": 40}


def test_a_give_back_noted_before_its_commit_holds_off_a_rebuild_until_it_lands(
    store: RedisCounterStore, quick_quiet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refund commits in the ledger, then gives back here: from before its commit until then a rebuild waits for it,
    and a note made after the rebuild's mark makes its write refuse."""
    monkeypatch.setattr(redis_counters, "COUNTERS_QUIET_WAIT_S_MAX", 0.2)
    store.replace_all({"a": 300})
    store.hold_give_back("gb-1")
    assert change_count(store) == 1
    with pytest.raises(CountersBusy, match="did not go quiet"):
        store.wait_until_quiet()
    store.apply({"a": -100}, hold="gb-1")  # the give-back drops its note in the same step
    assert change_count(store) == 2
    mark = store.wait_until_quiet()
    store.hold_give_back("gb-2")  # a refund about to commit after the rebuild noted the count
    with pytest.raises(CountersBusy, match="nothing was written"):
        store.replace_all({"a": 200}, unchanged_since=mark)
    store.apply({}, hold="gb-2")  # nothing to give back after all: the note still goes
    assert not store._claims_left()
    assert store.snapshot() == {"a": 200}


def test_a_give_back_after_its_note_expired_gives_nothing_back(store: RedisCounterStore) -> None:
    """Its adjustment's worker stalled past the note's 30 s: a rebuild may have counted the adjustment since."""
    store.replace_all({"a": 300})
    store.hold_give_back("gb-1")
    count = change_count(store)
    store.client.delete(store._claim_key("hold:gb-1"))  # expired
    with pytest.raises(HoldExpired):
        store.apply({"a": -100}, hold="gb-1")
    assert store.snapshot() == {"a": 300}  # above the ledger: the safe side
    assert change_count(store) == count


def test_a_claim_whose_record_may_still_commit_frees_the_retry_but_holds_off_a_rebuild(store: RedisCounterStore) -> None:
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (fen_cap("a", 1_000),)),), ())
    store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1"))
    store.client.pexpire(store._claim_key("t-1:req-1"), 20_000)  # as if reserved 10 s ago
    count = change_count(store)
    store.unclaim(Claim("t-1:req-1", "attempt-1"), outcome_unknown=True)
    assert change_count(store) == count + 1  # a rebuild whose SCAN missed the renamed key stops instead
    assert store.reserve(plan, claim=Claim("t-1:req-1", "attempt-2"))[0].given_fen == 300  # the retry swipes afresh
    pending = store._claim_key("pending:attempt-1")
    assert 0 < store.client.pttl(pending) <= 20_000  # kept no longer than the claim would have lived
    store.unclaim(Claim("t-1:req-1", "attempt-2"))
    assert store._claims_left()  # the first attempt's record may still commit: a rebuild waits
    store.client.delete(pending)
    assert not store._claims_left()


def test_reset_forgets_counters_claims_notes_and_the_change_count(store: RedisCounterStore) -> None:
    plan = Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), (fen_cap("a", 1_000),)),), ())
    store.expire_closed(lambda key: False)  # notes that every counter's time to live was read
    store.reserve(plan, claim=Claim("t-1:req-1", "attempt-1"))
    store.reserve(plan, claim=Claim("t-1:req-2", "attempt-2"))
    store.unclaim(Claim("t-1:req-2", "attempt-2"), outcome_unknown=True)
    store.hold_give_back("gb-1")
    assert len(list(store.client.scan_iter(match="{" + store.namespace + "}*"))) == 7  # with the untimed set
    count = change_count(store)
    store.reset()
    assert [key.decode() for key in store.client.scan_iter(match="{" + store.namespace + "}*")] == [store._changes_key]
    assert change_count(store) == count + 1  # not back to 0: a rebuild under way holds an older mark
    assert store.reserve(plan, claim=Claim("t-1:req-1", "attempt-3"))[0].given_fen == 300  # a fresh world's request ids


# --- counters of a period live till it is over ----------------------------------------------

NOON_IN_SHANGHAI = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
HOUR_S = 3600
# Each key's period ends at midnight in Shanghai (16:00 UTC); a swipe may come 24 h late, and Redis
# keeps the counter 1 h more: seconds from NOON_IN_SHANGHAI till then.
PERIOD_KEYS_AND_TTLS = {
    "rule:r1:card:C1:day:2026-12-05:uses": (12 + 24 + 1) * HOUR_S,  # ends 12-05 16:00 UTC
    "rule:r1:card:C1:week:2026-W49:fen": (36 + 24 + 1) * HOUR_S,  # Monday 12-07 00:00 in Shanghai
    "campaign:c1:card:C1:month:2026-12:uses": (26 * 24 + 12 + 24 + 1) * HOUR_S,  # 2027-01-01 00:00 in Shanghai
    "campaign:c1:merchant:m-1:year:2026:fen": (26 * 24 + 12 + 24 + 1) * HOUR_S,
    "campaign:c1:card:C1:campaign:all:uses": None,  # the campaign's whole run
    "campaign:c1:budget:fen": None,
}


def ttl_s(store: RedisCounterStore, key: str) -> float | None:
    """Seconds the counter has left to live; None if it never expires."""
    left = store.client.pttl(store._key(key))
    assert left != -2, f"{key} is not there"
    return None if left == -1 else left / 1000


def assert_ttls(store: RedisCounterStore, expected: dict[str, int | None], since_s: float = 0.0) -> None:
    """Each key lives as long as expected, counted from NOON_IN_SHANGHAI, `since_s` ago (the engine's clock)."""
    for key, expected_s in expected.items():
        left = ttl_s(store, key)
        if expected_s is None:
            assert left is None, key
        else:
            assert left is not None and expected_s - since_s - 5 <= left <= expected_s - since_s, (key, left, expected_s)


def capped_everywhere(keys: Iterator[str] | list[str]) -> Plan:
    counters = tuple(CounterRef(key, UNIT_FEN if key.endswith(":fen") else UNIT_USES, 10**9, "label") for key in keys)
    return Plan(10_000, (PlanStep(make_rule("r1", fixed_fen=300), counters),), ())


def test_a_swipe_s_counters_get_their_time_to_live_from_expire_closed_till_their_period_is_over(store: RedisCounterStore) -> None:
    """The swipe's script gives none (an EXPIRE there cost the swipe's tail); `counters expire` does."""
    store.use_clock(FixedClock(NOON_IN_SHANGHAI))
    store.reserve(capped_everywhere(list(PERIOD_KEYS_AND_TTLS)))
    assert_ttls(store, dict.fromkeys(PERIOD_KEYS_AND_TTLS))
    assert store.expire_closed(lambda key: False) == (0, 4)  # the campaign's whole run and the budget: for ever
    assert_ttls(store, PERIOD_KEYS_AND_TTLS)


def test_a_counter_that_has_a_time_to_live_keeps_it(store: RedisCounterStore) -> None:
    clock = FixedClock(NOON_IN_SHANGHAI)
    store.use_clock(clock)
    store.reserve(capped_everywhere(list(PERIOD_KEYS_AND_TTLS)))
    store.expire_closed(lambda key: False)
    clock.set(NOON_IN_SHANGHAI + timedelta(hours=6))
    store.reserve(capped_everywhere(list(PERIOD_KEYS_AND_TTLS)))  # six hours on: the counters' end has not moved
    store.apply({key: -1 if key.endswith(":uses") else -300 for key in PERIOD_KEYS_AND_TTLS})
    store.apply({key: 1 for key in PERIOD_KEYS_AND_TTLS})
    assert store.expire_closed(lambda key: False) == (0, 0)
    assert store.read(PERIOD_KEYS_AND_TTLS) == {key: 2 if key.endswith(":uses") else 301 for key in PERIOD_KEYS_AND_TTLS}
    assert_ttls(store, PERIOD_KEYS_AND_TTLS)


def test_a_give_back_sets_a_time_to_live_on_a_counter_without_one_and_drops_one_whose_period_is_over(
    store: RedisCounterStore,
) -> None:
    store.use_clock(FixedClock(NOON_IN_SHANGHAI))
    for key in PERIOD_KEYS_AND_TTLS:
        store.client.set(store._key(key), 5)  # written by an earlier release: no time to live
    store.apply({key: -2 for key in PERIOD_KEYS_AND_TTLS} | {"rule:r1:card:C2:day:2026-12-05:uses": -1})
    assert_ttls(
        store, PERIOD_KEYS_AND_TTLS | {"rule:r1:card:C2:day:2026-12-05:uses": PERIOD_KEYS_AND_TTLS["rule:r1:card:C1:day:2026-12-05:uses"]}
    )
    closed = "rule:r1:card:C1:day:2026-12-03:uses"  # closed at 12-04 16:00 UTC: the give-back of an old swipe
    store.client.set(store._key(closed), 3)
    store.apply({closed: -1})
    left_ms = store.client.pttl(store._key(closed))
    assert left_ms == -2 or 0 <= left_ms <= 1000  # gone, or going within the second (-1 would be: never)


@pytest.mark.parametrize("batched", [False, True], ids=["one script", "batches"])
def test_a_rebuild_gives_every_counter_it_writes_its_time_to_live(
    store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    if batched:
        monkeypatch.setattr(redis_counters, "REPLACE_ATOMIC_KEYS_MAX", 2)
        monkeypatch.setattr(redis_counters, "REPLACE_BATCH_KEYS", 4)
    store.use_clock(FixedClock(NOON_IN_SHANGHAI - timedelta(hours=2)))
    store.replace_all({key: 7 for key in PERIOD_KEYS_AND_TTLS})
    assert store.snapshot() == {key: 7 for key in PERIOD_KEYS_AND_TTLS}
    assert_ttls(store, PERIOD_KEYS_AND_TTLS, since_s=-2 * HOUR_S)


# --- a Redis that may evict counters ---------------------------------------------------------


def test_a_redis_that_may_evict_counters_fails_the_settings_check(evicting_redis_url: str) -> None:
    store = RedisCounterStore.from_url(evicting_redis_url, namespace=unique_namespace())
    try:
        with pytest.raises(CountersMisconfigured, match=r"maxmemory 67108864 bytes, maxmemory-policy volatile-lru.*noeviction"):
            store.check_settings()
        store.client.config_set("maxmemory-policy", "noeviction")  # full: it refuses writes, and capped swipes answer 503
        store.check_settings()
        store.client.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(CountersMisconfigured, match="allkeys-lru"):
            store.check_settings()
        store.client.config_set("maxmemory", "0")  # no limit: nothing is evicted
        store.check_settings()
    finally:
        store.client.config_set("maxmemory", "64mb")
        store.client.config_set("maxmemory-policy", "volatile-lru")
        store.client.close()


def test_the_settings_check_asks_every_node_of_a_cluster(cluster_store: RedisCounterStore) -> None:
    cluster_store.check_settings()
    node = redis.Redis(host=REDIS_HOST, port=CLUSTER_PORTS[-1])
    try:
        node.config_set("maxmemory", "1gb")
        node.config_set("maxmemory-policy", "volatile-ttl")
        with pytest.raises(CountersMisconfigured, match="volatile-ttl"):
            cluster_store.check_settings()
    finally:
        node.config_set("maxmemory", "0")
        node.config_set("maxmemory-policy", "noeviction")
        node.close()


def test_expire_closed_drops_closed_counters_and_gives_the_others_that_have_none_a_time_to_live(store: RedisCounterStore) -> None:
    """After an upgrade: counters an earlier release wrote have no time to live, and those of periods over stay for ever."""
    check_expire_closed(store)


@pytest.mark.slow
def test_expire_closed_works_on_a_redis_cluster(cluster_store: RedisCounterStore) -> None:
    check_expire_closed(cluster_store)


def test_expire_closed_treats_every_batch_of_keys_alike(store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_counters, "EXPIRE_BATCH_KEYS", 2)
    check_expire_closed(store)


def check_expire_closed(store: RedisCounterStore) -> None:
    store.use_clock(FixedClock(NOON_IN_SHANGHAI))
    day = "rule:r1:card:C1:day:2026-12-05:uses"
    closed = "rule:r1:card:C1:day:2026-12-03:uses"
    for key in PERIOD_KEYS_AND_TTLS:
        store.client.set(store._key(key), 4)
    store.client.set(store._key(closed), 2)
    store.client.expire(store._key(day), 100)  # a time to live of its own: kept
    assert store.expire_closed(lambda key: key == closed) == (1, 3)  # the week, the month and the year
    assert store.snapshot() == dict.fromkeys(PERIOD_KEYS_AND_TTLS, 4)
    assert_ttls(store, PERIOD_KEYS_AND_TTLS | {day: 100})
    assert store.expire_closed(lambda key: key == closed) == (0, 0)


# --- counters swipes create are noted, and `counters expire` reads only those -----------------

DAY_KEY = "rule:r1:card:C1:day:2026-12-05:uses"


def noted(store: RedisCounterStore) -> set[str]:
    """The untimed set: counters swipes created, not yet given a time to live."""
    return {member.decode() for member in store.client.smembers(store._untimed_key)}


def after_the_first_run(store: RedisCounterStore) -> None:
    """Set the engine's clock, and make the namespace's first `expire_closed`: it reads every counter, later ones
    only the untimed set."""
    store.use_clock(FixedClock(NOON_IN_SHANGHAI))
    store.expire_closed(lambda key: False)


def check_noted_counters_are_timed_without_reading_the_others(store: RedisCounterStore) -> None:
    store.use_clock(FixedClock(NOON_IN_SHANGHAI))
    assert store.expire_closed(lambda key: False) == (0, 0)  # the namespace's first call reads every counter: none yet
    earlier = "rule:r9:card:C1:day:2026-12-05:uses"
    store.client.set(store._key(earlier), 1)  # written by an earlier release's swipe, which noted nothing
    store.reserve(capped_everywhere(list(PERIOD_KEYS_AND_TTLS)))
    assert noted(store) == {store._key(key) for key in PERIOD_KEYS_AND_TTLS}
    store.client.expire(store._key(DAY_KEY), 100)  # a time to live of its own (a give-back gives one): kept
    assert store.expire_closed(lambda key: False) == (0, 3)  # the campaign's whole run and the budget: for ever
    assert_ttls(store, PERIOD_KEYS_AND_TTLS | {DAY_KEY: 100, earlier: None})  # the counter nobody noted was not read
    assert noted(store) == set()
    assert store.expire_closed(lambda key: False, everything=True) == (0, 1)
    assert_ttls(store, {earlier: PERIOD_KEYS_AND_TTLS[DAY_KEY]})


def test_expire_closed_times_the_counters_swipes_noted_and_reads_the_others_only_when_asked(store: RedisCounterStore) -> None:
    """Reading every counter's time to live (SCAN, then TTL each: 10-15 s on a million) raised the swipes' p99
    while it ran, every hour; after its first call `counters expire` reads only what swipes noted."""
    check_noted_counters_are_timed_without_reading_the_others(store)


@pytest.mark.slow
def test_expire_closed_times_the_noted_counters_on_a_redis_cluster(cluster_store: RedisCounterStore) -> None:
    check_noted_counters_are_timed_without_reading_the_others(cluster_store)


def test_a_swipe_notes_only_the_counters_it_creates(store: RedisCounterStore) -> None:
    week = "rule:r1:card:C1:week:2026-W49:fen"
    month = "campaign:c1:card:C1:month:2026-12:uses"
    store.client.set(store._key(week), 100)
    plan = Plan(
        10_000,
        (
            PlanStep(make_rule("r1", fixed_fen=300), (CounterRef(week, UNIT_FEN, 10**9, "card/week/fen"), uses_cap(month, 10))),
            PlanStep(make_rule("r2", fixed_fen=100), (uses_cap(DAY_KEY, 0),)),  # full: read, not written
        ),
        (),
    )
    assert [outcome.given_fen for outcome in store.reserve(plan)] == [300, 0]
    assert noted(store) == {store._key(month)}
    assert store.read([DAY_KEY, week, month]) == {DAY_KEY: 0, week: 400, month: 1}
    store.client.delete(store._untimed_key)
    store.reserve(plan)  # every counter it writes is there now
    assert noted(store) == set()


@pytest.mark.parametrize("batch_keys", [100, 2], ids=["one batch", "batches of two"])
def test_expire_closed_drops_a_noted_counter_that_is_closed_and_forgets_one_that_is_gone(
    store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch, batch_keys: int
) -> None:
    monkeypatch.setattr(redis_counters, "EXPIRE_BATCH_KEYS", batch_keys)
    after_the_first_run(store)
    closed = "rule:r1:card:C1:day:2026-12-03:uses"  # a swipe two days late, in its period's last hour
    store.reserve(capped_everywhere([*PERIOD_KEYS_AND_TTLS, closed]))
    store.apply({DAY_KEY: -1})  # given back to 0: deleted
    assert store.expire_closed(lambda key: key == closed) == (1, 3)  # the week, the month and the year
    assert noted(store) == set()
    assert store.read([closed, DAY_KEY]) == {closed: 0, DAY_KEY: 0}
    assert not store.client.exists(store._key(closed), store._key(DAY_KEY))
    assert_ttls(store, {key: ttl for key, ttl in PERIOD_KEYS_AND_TTLS.items() if key != DAY_KEY})


def test_a_crash_half_way_through_the_noted_counters_leaves_the_rest_noted(
    store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_counters, "EXPIRE_BATCH_KEYS", 2)
    after_the_first_run(store)
    store.reserve(capped_everywhere(list(PERIOD_KEYS_AND_TTLS)))
    asked: list[str] = []

    def crashes_at_the_third(key: str) -> bool:
        asked.append(key)
        if len(asked) == 3:
            raise RuntimeError("the job was killed")
        return False

    with pytest.raises(RuntimeError, match="killed"):
        store.expire_closed(crashes_at_the_third)
    assert noted(store) == {store._key(key) for key in PERIOD_KEYS_AND_TTLS} - {store._key(key) for key in asked[:2]}
    store.expire_closed(lambda key: False)
    assert noted(store) == set()
    assert_ttls(store, PERIOD_KEYS_AND_TTLS)


def test_a_stream_of_counters_noted_while_expire_closed_runs_cannot_keep_it_going(
    store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady stream of new counters cannot keep one call going."""
    monkeypatch.setattr(redis_counters, "EXPIRE_BATCH_KEYS", 2)
    after_the_first_run(store)
    timed = {key: ttl for key, ttl in PERIOD_KEYS_AND_TTLS.items() if ttl is not None}
    store.reserve(capped_everywhere(list(timed)))
    asked: list[str] = []
    created: set[str] = set()

    def while_swipes_come(key: str) -> bool:
        assert len(asked) < 20, "expire_closed went on taking counters noted after it began"
        asked.append(key)
        new = f"rule:r1:card:N{len(asked)}:day:2026-12-05:uses"
        created.add(new)
        store.reserve(capped_everywhere([new]))
        return False

    dropped, given = store.expire_closed(while_swipes_come)  # one pass over the set: some of the new may be in it
    assert dropped == 0
    assert 4 <= given <= 4 + len(created)
    assert_ttls(store, timed)
    assert noted(store) <= {store._key(key) for key in created}
    assert len(noted(store)) == 4 + len(created) - given


def test_expire_closed_reads_every_counter_again_once_a_week(store: RedisCounterStore) -> None:
    """A counter no swipe noted (a worker of an earlier release wrote it) gets its time to live within a week."""
    clock = FixedClock(NOON_IN_SHANGHAI)
    store.use_clock(clock)
    store.expire_closed(lambda key: False)
    year = "campaign:c1:merchant:m-1:year:2026:fen"
    store.client.set(store._key(year), 5)
    clock.set(NOON_IN_SHANGHAI + timedelta(seconds=redis_counters.EXPIRE_READ_EVERY_COUNTER_S - 1))
    assert store.expire_closed(lambda key: False) == (0, 0)
    week_s = redis_counters.EXPIRE_READ_EVERY_COUNTER_S
    clock.set(NOON_IN_SHANGHAI + timedelta(seconds=week_s))
    assert store.expire_closed(lambda key: False) == (0, 1)
    assert_ttls(store, {year: PERIOD_KEYS_AND_TTLS[year]}, since_s=week_s)
    store.client.persist(store._key(year))
    assert store.expire_closed(lambda key: False) == (0, 0)  # read a moment ago
    store.client.set(store._scanned_key, "not a time")  # unreadable: as if never
    assert store.expire_closed(lambda key: False) == (0, 1)


def test_a_noted_counter_given_back_to_0_and_created_again_meanwhile_gets_its_time_to_live(store: RedisCounterStore) -> None:
    after_the_first_run(store)
    store.reserve(capped_everywhere([DAY_KEY]))

    def given_back_and_swiped_again(key: str) -> bool:
        store.apply({DAY_KEY: -1})  # back to 0: deleted
        store.reserve(capped_everywhere([DAY_KEY]))  # created again, and noted again
        return False

    assert store.expire_closed(given_back_and_swiped_again) == (0, 1)
    assert noted(store) == set()
    assert store.read([DAY_KEY]) == {DAY_KEY: 1}
    assert_ttls(store, {DAY_KEY: PERIOD_KEYS_AND_TTLS[DAY_KEY]})


UNTIMED_AND_NOT_NOTED = """
local found = {}
for index = 1, #KEYS - 1 do
  if redis.call('TTL', KEYS[index]) == -1 and redis.call('SISMEMBER', KEYS[#KEYS], KEYS[index]) == 0 then
    found[#found + 1] = KEYS[index]
  end
end
return found
"""


def test_beside_swipes_and_give_backs_every_counter_without_a_time_to_live_stays_noted(
    store: RedisCounterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the interleaving, a period's counter has a time to live or is in the untimed set, and no value moves."""
    monkeypatch.setattr(redis_counters, "EXPIRE_BATCH_KEYS", 3)
    after_the_first_run(store)
    keys = [f"rule:r1:card:C{index}:day:2026-12-05:uses" for index in range(90)]

    def swipes(offset: int) -> None:
        for index in range(offset, len(keys), 3):
            store.reserve(capped_everywhere([keys[index]]))  # creates it
            store.reserve(capped_everywhere([keys[index]]))
            if index % 2:
                store.apply({keys[index]: -2})  # given back to 0: deleted

    stored = [store._key(key) for key in keys]

    def untimed_and_not_noted() -> list[bytes]:
        """Read at one moment (a script): the counters that exist, have no time to live and are not in the set."""
        return cast(list[bytes], store.client.eval(UNTIMED_AND_NOT_NOTED, len(stored) + 1, *stored, store._untimed_key))

    threads = [threading.Thread(target=swipes, args=(offset,)) for offset in range(3)]
    for thread in threads:
        thread.start()
    runs = 0
    while any(thread.is_alive() for thread in threads) or runs < 3:
        store.expire_closed(lambda key: False)
        assert untimed_and_not_noted() == []
        runs += 1
    for thread in threads:
        thread.join()
    assert store.read(keys) == {key: 0 if index % 2 else 2 for index, key in enumerate(keys)}
    assert untimed_and_not_noted() == []
    store.expire_closed(lambda key: False)
    assert_ttls(store, {key: PERIOD_KEYS_AND_TTLS[DAY_KEY] for index, key in enumerate(keys) if not index % 2})
    assert noted(store) == set()


def test_a_swipe_whose_note_cannot_be_written_changes_no_counter(store: RedisCounterStore) -> None:
    """The script notes the counters it creates before it changes any: a failure there leaves every counter as it was."""
    store.client.set(store._untimed_key, "not a set")
    before = change_count(store)
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        store.reserve(capped_everywhere([DAY_KEY, "campaign:c1:budget:fen"]))
    assert store.read([DAY_KEY, "campaign:c1:budget:fen"]) == {DAY_KEY: 0, "campaign:c1:budget:fen": 0}
    assert change_count(store) == before
    store.client.delete(store._untimed_key)
