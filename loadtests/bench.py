"""Measure the engine against its ceiling, in one run, on one machine, with one load generator.

    python -m loadtests.bench [--seconds 20] [--rounds 1] [--workers 3] [--worker-class gthread]
                              [--pg-url postgresql://postgres@127.0.0.1:5432/pos_engine_bench]
                              [--redis-url redis://127.0.0.1:6379/0] [--world var/load/rules/world.json]
                              [--one-round-trip]

Five targets (seven with `--one-round-trip`), each served by gunicorn with the same configuration:
1. the ceiling: `loadtests/ceiling_app.py`, a bare Flask app whose one endpoint
   parses and answers JSON of a swipe's size;
2. the engine on PostgreSQL + Redis (the large world if `--world` names one,
   else the demo world in the database of `--pg-url`);
3. the engine on the embedded default (SQLite, SQL counters, the demo world);
4. the baseline: `loadtests/baseline_app.py`, the straightforward design (one
   Redis script and one SQLAlchemy insert per request) on the same PostgreSQL
   and Redis, saturation only: a second reference, for hardware where the
   ceiling moves and the engine's work does not move with it;
5. the two round trips: the baseline with the issue's one-round-trip insert
   (psycopg, autocommit, prepared) instead of SQLAlchemy's transaction,
   saturation only: a swipe that reserves in Redis and records durably in
   PostgreSQL and does nothing else, so the engine's distance from it is what
   its own work costs, and its distance from the ceiling is what the two
   round trips alone cost on this machine;
6. with `--one-round-trip`, a design the engine does not have: no Redis, one
   prepared statement a swipe that adds to the card's counter row and records
   the swipe (the baseline's "one-trip"), alone and adding to one shared
   budget row too ("one-trip-budget"), saturation only: what one round trip
   instead of two would reach, and what a campaign budget's row costs it.

All of them serve at once. `--rounds N` measures every target at saturation N
times, in an order that turns round by round, so that a drift of a shared
machine's speed falls on all of them alike; the medians are printed (the
ratios are medians of each round's ratios). Then, once each, the moderate rate.

For each it prints throughput at saturation, and p50/p95/p99 at a fixed
moderate rate (half the PostgreSQL + Redis engine's saturation), and errors;
the CPU per request at saturation of the gunicorn workers, PostgreSQL, Redis
and wrk, and the share of the cores left idle (from /proc: run it on an
otherwise quiet machine); then the ratios
engine/ceiling, to the baseline and to the two round trips (with
`--one-round-trip`, the one-round-trip design's to the ceiling and to the two
round trips too), and by CPU per request. The last line is
machine-readable. A run in which a gunicorn worker took none of wrk's
connections measured fewer workers than configured: it is run again (up to
three runs in all), with a note.

The load generator is wrk (C, epoll; `apt-get install wrk`) replaying
pre-signed requests from a file through `loadtests/wrk_requests.lua`: signing
happens before the clock starts, so the generator costs a few µs per request
and is never the bottleneck (a Python generator would be). Every request is a
distinct authorisation (unique request id), so no answer comes from the
idempotency replay path. wrk's fixed rate is a per-connection delay
(closed loop with think time), which is how tills behave; the achieved rate is
printed beside the target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from loadtests import baseline_app
from pos_engine.api.signing import sign

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("wrk_requests.lua")
STARTUP_TIMEOUT_S = 180.0
READY_ANSWERS_IN_A_ROW = 20
WARMUP_S = 3
REQUESTS_PER_SECOND_GUESS_MAX = 6_000  # pre-signed requests per second of a phase
MODERATE_CONNECTIONS = 8
SATURATION_CONNECTIONS = 32
WRK_THREADS = 2
RUN_ATTEMPTS_MAX = 3  # runs of one measurement, while a worker takes none of wrk's connections


@dataclass
class Credentials:
    """Terminals (id, secret, merchant id) and usable card numbers to swipe with."""

    terminals: list[tuple[str, str, str]]
    cards: list[str]


@dataclass
class Result:
    name: str
    label: str  # a short name for logs and round lines
    credentials: Credentials | None = None
    url: str = ""
    server_pid: int = 0
    saturation_rps_runs: list[float] = field(default_factory=list)
    saturation_p99_ms: float = 0.0
    moderate_target_rps: float = 0.0
    moderate_rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    # CPU seconds at saturation by process group, and the requests they served: where the cost goes.
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_requests: int = 0
    # The bench's cores at saturation: seconds idle, of seconds available (wall time × cores).
    idle_s: float = 0.0
    core_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def saturation_rps(self) -> float:
        """The median of the rounds' saturation throughputs."""
        return statistics.median(self.saturation_rps_runs)

    @property
    def cpu_us(self) -> dict[str, float]:
        """CPU per request at saturation (µs) by process group, over every round."""
        return {group: seconds * 1e6 / max(1, self.cpu_requests) for group, seconds in self.cpu_s.items()}

    @property
    def cpu_us_all(self) -> float:
        """CPU per request at saturation (µs), every process group together."""
        return sum(self.cpu_us.values())


def demo_credentials(path: Path) -> Credentials:
    data = json.loads(path.read_text())
    terminals = [(t["terminal_id"], t["secret"], t["merchant_id"]) for t in data["terminals"]]
    return Credentials(terminals, data["cards"]["usable"])


def world_credentials(path: Path, cards_max: int = 200_000) -> Credentials:
    """The large world's credentials: terminals from its world.json, usable cards recomputed (loadtests/world.py)."""
    from loadtests import world

    data = json.loads(path.read_text())
    seed, count = data["seed"], data["cards"]["count"]
    terminals = [(t["terminal_id"], t["secret"], t["merchant_id"]) for t in data["terminals"]]
    # Spread over the whole card range, so most swipes miss every cache, as in a city.
    step = max(1, count // cards_max)
    cards = [world.card_number(i, seed) for i in range(0, count, step) if world.card_kind(i, seed) == "usable"]
    return Credentials(terminals, cards)


def write_requests(path: Path, credentials: Credentials, count: int, seed: int) -> None:
    """Pre-sign `count` distinct authorisations, one per line, for wrk_requests.lua."""
    rng = random.Random(seed)
    cards = credentials.cards
    # A skew: a fifth of the cards make most of the swipes.
    frequent = cards[: max(1, len(cards) // 5)]
    timestamp = str(int(time.time()))
    occurred_at = datetime.now(timezone.utc).isoformat()
    run = uuid.uuid4().hex[:10]
    with path.open("w") as file:
        for index in range(count):
            terminal_id, secret, merchant_id = rng.choice(credentials.terminals)
            card = rng.choice(frequent) if rng.random() < 0.6 else rng.choice(cards)
            body = json.dumps(
                {
                    "request_id": f"{run}-{index}",
                    "card_number": card,
                    "merchant_id": merchant_id,
                    "amount_fen": rng.randint(1_500, 30_000),
                    "occurred_at": occurred_at,
                },
                separators=(",", ":"),
            )
            signature = sign(secret, "POST", "/v1/authorisations", timestamp, body.encode())
            headers = f"Content-Type:application/json|X-Terminal-Id:{terminal_id}|X-Timestamp:{timestamp}|X-Signature:{signature}"
            file.write(f"POST\t/v1/authorisations\t{headers}\t{body}\n")


def world_settings(world_path: Path) -> dict[str, str]:
    """The engine's settings for a large world that loadtests/world.py wrote: its rules directory and card key."""
    world = json.loads(world_path.read_text())
    settings = {"POS_ENGINE_RULES_DIR": world.get("rules_dir") or str(world_path.parent)}
    if world.get("card_key"):
        settings["POS_ENGINE_CARD_KEY"] = world["card_key"]
    return settings


def run_wrk(url: str, requests_file: Path, seconds: int, connections: int, delay_ms: float = 0) -> dict[str, Any]:
    env = {**os.environ, "WRK_REQUESTS": str(requests_file), "WRK_THREADS": str(WRK_THREADS), "WRK_DELAY_MS": f"{delay_ms:.3f}"}
    command = ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s", "-s", str(LUA), url]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            data["errors"] = sum(data[key] for key in ("connect", "read", "write", "status", "timeout"))
            return data
    raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(app: str, env: dict[str, str], workers: int, worker_class: str, threads: int, log_path: Path) -> Iterator[tuple[str, int]]:
    """Serve `app`; yield its URL and the master's pid once every worker answers ready."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class, "--threads", str(threads),
        "-b", f"127.0.0.1:{port}", "--backlog", "2048", "--keep-alive", "30", app,
    ]  # fmt: skip
    with log_path.open("w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            ready_in_a_row = 0
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()}")
                try:
                    # Every worker loads its card directory after it starts; measure once all are ready
                    # (a run of answers from the workers, picked at random by the kernel, all say so).
                    health = httpx.get(url + "/healthz", timeout=1)
                    ready_in_a_row = (
                        ready_in_a_row + 1 if health.status_code == 200 and health.json().get("card_directory") != "loading" else 0
                    )
                    if ready_in_a_row >= READY_ANSWERS_IN_A_ROW:
                        break
                except httpx.HTTPError:
                    ready_in_a_row = 0
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield url, server.pid
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def cli(env: dict[str, str], *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "pos_engine.cli", *args], env=env, capture_output=True, text=True, cwd=ROOT, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"pos-engine {' '.join(args)} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed.stdout


CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SERVER_PROCESSES = {"postgres": "PostgreSQL", "redis-server": "Redis"}


ProcessStat = tuple[int, int, str, float]  # pid, parent's pid, name, CPU seconds so far
Processes = list[ProcessStat]


def _processes() -> Iterator[ProcessStat]:
    """Every process's pid, parent's pid, name and CPU seconds so far (utime + stime), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[1] is the parent's pid
        yield int(entry.name), int(fields[1]), name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def process_cpu_s(server_pid: int, processes: Processes | None = None) -> dict[str, float]:
    """CPU seconds so far of a gunicorn (its master `server_pid` and the workers it forked) and of every PostgreSQL and Redis process.

    From /proc (or a reading of it, `processes`), so other processes on the machine are not counted, but
    every PostgreSQL and Redis process is (run the bench on an otherwise quiet machine).
    """
    totals = dict.fromkeys(["workers", *SERVER_PROCESSES.values()], 0.0)
    for pid, parent, name, cpu_s in _processes() if processes is None else processes:
        group = "workers" if server_pid in (pid, parent) else SERVER_PROCESSES.get(name)
        if group is not None:
            totals[group] += cpu_s
    return totals


def worker_cpu_s(server_pid: int, processes: Processes | None = None) -> dict[int, float]:
    """CPU seconds so far of each worker of the gunicorn whose master is `server_pid`, from /proc or `processes`."""
    return {pid: cpu_s for pid, parent, _name, cpu_s in (_processes() if processes is None else processes) if parent == server_pid}


def idle_workers(before: dict[int, float], after: dict[int, float]) -> int:
    """How many workers spent under a tenth of the busiest one's CPU between two `worker_cpu_s` readings.

    At saturation every worker should be busy. A worker that was not took none of
    the load generator's kept-alive connections (gunicorn's gthread worker
    accepts every connection it is offered, so a few workers can take all of
    them): the run then measured fewer workers than it says.
    """
    spent = [cpu_s - before.get(pid, 0.0) for pid, cpu_s in after.items()]
    busiest = max(spent, default=0.0)
    return sum(1 for cpu_s in spent if cpu_s < busiest / 10)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been waited for
    return usage.ru_utime + usage.ru_stime


def cores_idle_s(proc_stat: str, cores: set[int]) -> float:
    """Seconds `cores` spent idle so far (idle and waiting for I/O), from the text of /proc/stat.

    A target that saturates the cores leaves them near 0 % idle; one that waits
    (on a lock, a disk flush, a round trip every worker is in at once) leaves
    some of them unused, and its throughput then falls short of its CPU per
    request.
    """
    idle_ticks = 0
    for line in proc_stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        fields = rest.split()  # user nice system idle iowait …, in USER_HZ ticks
        idle_ticks += int(fields[3]) + int(fields[4])
    return idle_ticks / CLOCK_TICKS_PER_S


def warm_up(result: Result, scratch: Path) -> None:
    # The warm-up has its own requests: wrk starts each run at the top of its file, and a
    # request sent twice would be answered from the idempotency record, not authorised.
    assert result.credentials is not None
    warmup_file = scratch / f"{result.label}-warmup.tsv"
    write_requests(warmup_file, result.credentials, REQUESTS_PER_SECOND_GUESS_MAX * WARMUP_S, seed=3)
    run_wrk(result.url + "/v1/authorisations", warmup_file, WARMUP_S, SATURATION_CONNECTIONS)


@dataclass
class Reading:
    """What /proc and wrk's rusage say at one moment: every process's CPU, and wrk's so far."""

    processes: Processes
    wrk_cpu_s: float
    idle_s: float  # seconds the bench's cores (the ones gunicorn and wrk may run on) spent idle so far
    core_s: float  # time.monotonic() × those cores: the core seconds that passed, against which idle_s counts

    @classmethod
    def now(cls) -> Reading:
        return cls(list(_processes()), _children_cpu_s(), *_cores_now())


def _cores_now() -> tuple[float, float]:
    """(idle seconds so far, monotonic seconds × cores) of the cores gunicorn and wrk may run on."""
    cores = os.sched_getaffinity(0)
    return cores_idle_s(Path("/proc/stat").read_text(), cores), time.monotonic() * len(cores)


def run_on_every_worker(result: Result, phase: str, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], Reading, Reading]:
    """`run` (one wrk run with requests of its own), and the readings around it, once every worker took part.

    A run in which a worker took none of wrk's connections measured fewer workers
    than configured (see `idle_workers`): it is run again, up to RUN_ATTEMPTS_MAX
    runs in all, and the bench says so. Every run's errors count.
    """
    for attempt in range(1, RUN_ATTEMPTS_MAX + 1):
        before = Reading.now()
        data = run()
        after = Reading.now()
        result.errors += data["errors"]
        workers_after = worker_cpu_s(result.server_pid, after.processes)
        idle = idle_workers(worker_cpu_s(result.server_pid, before.processes), workers_after)
        if not idle:
            break
        outcome = "ran it again" if attempt < RUN_ATTEMPTS_MAX else f"kept it, after {attempt} runs"
        result.notes.append(
            f"{phase}: {idle} of {len(workers_after)} workers took no connections in a run, so that run "
            f"measured fewer workers than configured (docs/performance-rounds.md, seventh round); {outcome}"
        )
    if data["wrapped"]:
        result.notes.append(f"{phase}: ran out of pre-signed requests and replayed some")
    return data, before, after


def measure_saturation(result: Result, seconds: int, scratch: Path, seed: int) -> None:
    """One saturation run on every worker: its throughput, and the CPU every process group spent on it."""
    credentials = result.credentials
    assert credentials is not None
    requests_file = scratch / f"{result.label}-saturation.tsv"

    def run() -> dict[str, Any]:
        write_requests(requests_file, credentials, REQUESTS_PER_SECOND_GUESS_MAX * seconds, seed=seed)
        return run_wrk(result.url + "/v1/authorisations", requests_file, seconds, SATURATION_CONNECTIONS)

    data, before, after = run_on_every_worker(result, "saturation", run)
    cpu_before, cpu_after = process_cpu_s(result.server_pid, before.processes), process_cpu_s(result.server_pid, after.processes)
    for group in cpu_after:
        result.cpu_s[group] = result.cpu_s.get(group, 0.0) + cpu_after[group] - cpu_before[group]
    result.cpu_s["wrk"] = result.cpu_s.get("wrk", 0.0) + after.wrk_cpu_s - before.wrk_cpu_s
    result.cpu_requests += data["requests"]
    result.idle_s += after.idle_s - before.idle_s
    result.core_s += after.core_s - before.core_s
    result.saturation_rps_runs.append(data["rps"])
    result.saturation_p99_ms = max(result.saturation_p99_ms, data["p99_us"] / 1000)


def measure_moderate(result: Result, seconds: int, rate_rps: float, scratch: Path) -> None:
    """The latency at `rate_rps`, on every worker."""
    credentials = result.credentials
    assert credentials is not None
    requests_file = scratch / f"{result.label}-moderate.tsv"
    delay_ms = MODERATE_CONNECTIONS * 1000 / rate_rps

    def run() -> dict[str, Any]:
        write_requests(requests_file, credentials, int(rate_rps * (seconds + 5) * 1.2) + 1000, seed=2)
        return run_wrk(result.url + "/v1/authorisations", requests_file, seconds, MODERATE_CONNECTIONS, delay_ms=delay_ms)

    data, _before, _after = run_on_every_worker(result, "moderate", run)
    result.moderate_target_rps = rate_rps
    result.moderate_rps = data["rps"]
    result.p50_ms, result.p95_ms, result.p99_ms = (data[key] / 1000 for key in ("p50_us", "p95_us", "p99_us"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each measured phase")
    shipped = runpy.run_path(str(ROOT / "gunicorn.conf.py"))  # the defaults are the shipped configuration's
    parser.add_argument("--workers", type=int, default=shipped["workers"])
    parser.add_argument("--worker-class", default=shipped["worker_class"])
    parser.add_argument("--threads", type=int, default=shipped["threads"], help="threads per gthread worker")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/pos_engine_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--world", type=Path, help="world.json of a large world already loaded into --pg-url (loadtests/world.py)")
    parser.add_argument("--rounds", type=int, default=1, help="saturation runs per target, alternating targets; medians are printed")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, request files)")
    parser.add_argument(
        "--one-round-trip",
        action="store_true",
        help="also measure a design without Redis: one prepared statement a swipe that adds to the card's counter row "
        "and records the swipe, alone and with a shared budget row (loadtests/baseline_app.py)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed; `apt-get install -y wrk` (Debian) and run again")

    scratch = Path(tempfile.mkdtemp(prefix="pos-bench-"))
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("POS_ENGINE_")}
    serve = (args.workers, args.worker_class, args.threads)
    print(
        f"bench: gunicorn -w {args.workers} -k {args.worker_class} --threads {args.threads}; wrk -t {WRK_THREADS}, "
        f"{SATURATION_CONNECTIONS} connections at saturation, {MODERATE_CONNECTIONS} at the moderate rate; {args.seconds} s a phase; "
        f"{_cores()}",
        flush=True,
    )

    # 2. The engine on PostgreSQL + Redis.
    pg_env = {
        **base_env,
        "POS_ENGINE_DATABASE_URL": args.pg_url,
        "POS_ENGINE_REDIS_URL": args.redis_url,
        "POS_ENGINE_REDIS_NAMESPACE": "bench",
    }
    if args.world:
        pg_env |= world_settings(args.world)
        pg_credentials = world_credentials(args.world)
        world_name = f"large world ({len(pg_credentials.cards)} usable cards, {len(pg_credentials.terminals)} terminals)"
    else:
        _ensure_database(args.pg_url)
        cli(pg_env, "demo", "--reset", "--out", str(scratch / "pg-demo.json"))
        pg_credentials = demo_credentials(scratch / "pg-demo.json")
        world_name = "demo world"
    cli(pg_env, "counters", "rebuild")
    pg = Result(f"engine PostgreSQL + Redis, {world_name}", "pg-redis", pg_credentials)

    # 3. The engine on the embedded default.
    embedded_env = {**base_env, "POS_ENGINE_DATABASE_URL": f"sqlite:///{scratch}/embedded.sqlite3"}
    cli(embedded_env, "demo", "--reset", "--out", str(scratch / "embedded-demo.json"))
    embedded_credentials = demo_credentials(scratch / "embedded-demo.json")
    embedded = Result("engine SQLite + SQL counters, demo world", "embedded", embedded_credentials)

    # 4. The straightforward design the floors are calibrated on (one Redis script, one
    # SQLAlchemy insert per swipe), in the PostgreSQL database and Redis of the engine's phase.
    baseline = Result("baseline: Flask + one Redis script + one SQLAlchemy insert", "baseline", embedded_credentials)
    baseline_env = {**base_env, "BASELINE_DATABASE_URL": args.pg_url, "BASELINE_REDIS_URL": args.redis_url}

    # 5. The same with one round trip to PostgreSQL per swipe: the two round trips' own cost.
    round_trips = Result("two round trips: Flask + one Redis script + one prepared autocommit insert", "round-trips", embedded_credentials)
    round_trips_env = {**baseline_env, "BASELINE_INSERT": "prepared"}

    # 6. Optional: a design with one round trip a swipe, the counters in PostgreSQL (no Redis), alone and with
    # every swipe adding to one shared budget row. The large world's cards when there is one: a card's counter is
    # a row each swipe on the card locks until its commit, as the budget row is for every swipe.
    one_trip = Result("one round trip: Flask + one prepared statement (card counter row, the swipe)", "one-trip", pg_credentials)
    one_trip_budget = Result("one round trip and a shared budget row", "one-trip-budget", pg_credentials)
    designs = (
        [(result, {**baseline_env, "BASELINE_INSERT": result.label}) for result in (one_trip, one_trip_budget)]
        if args.one_round_trip
        else []
    )

    # 1. The ceiling, with the same requests as the embedded engine.
    ceiling = Result("ceiling: bare Flask JSON endpoint", "ceiling", embedded_credentials)

    targets = [pg, embedded, baseline, round_trips, *(result for result, _ in designs), ceiling]
    baseline_app.prepare(args.pg_url)
    try:
        with ExitStack() as servers:
            # All serve at once (each idle while another is measured), so that rounds can alternate.
            for result, app, env in (
                (pg, "pos_engine.wsgi:app", pg_env),
                (embedded, "pos_engine.wsgi:app", embedded_env),
                (baseline, "loadtests.baseline_app:app", baseline_env),
                (round_trips, "loadtests.baseline_app:app", round_trips_env),
                *((result, "loadtests.baseline_app:app", env) for result, env in designs),
                (ceiling, "loadtests.ceiling_app:app", base_env),
            ):
                result.url, result.server_pid = servers.enter_context(gunicorn(app, env, *serve, scratch / f"{result.label}.log"))
            for result in targets:
                warm_up(result, scratch)
            # Each round measures every target at saturation, in an order that turns round by round,
            # so that a drift of the machine's speed falls on all of them alike.
            for round_ in range(args.rounds):
                for result in targets[round_ % len(targets) :] + targets[: round_ % len(targets)]:
                    measure_saturation(result, args.seconds, scratch, seed=1 + round_)
                if args.rounds > 1:
                    runs = ", ".join(f"{result.label} {result.saturation_rps_runs[-1]:.0f}" for result in targets)
                    ratio = pg.saturation_rps_runs[-1] / ceiling.saturation_rps_runs[-1]
                    print(f"round {round_ + 1}: saturation {runs} req/s; PostgreSQL + Redis / ceiling = {ratio:.2f}", flush=True)
            rate = pg.saturation_rps / 2
            for result in (pg, embedded, ceiling):
                measure_moderate(result, args.seconds, rate, scratch)
    finally:
        baseline_app.drop(args.pg_url, args.redis_url)
    for result in targets:
        print(_line(result), flush=True)

    # With several rounds, the median of the rounds' ratios (each from runs minutes apart at most).
    ratio_pg = median_ratio(pg, ceiling)
    ratio_embedded = median_ratio(embedded, ceiling)
    ratio_baseline = median_ratio(baseline, ceiling)
    ratio_pg_baseline = median_ratio(pg, baseline)
    ratio_round_trips = median_ratio(round_trips, ceiling)
    ratio_pg_round_trips = median_ratio(pg, round_trips)
    errors = sum(result.errors for result in targets)
    print(f"ratios at saturation: PostgreSQL + Redis / ceiling = {ratio_pg:.2f}; embedded / ceiling = {ratio_embedded:.2f}")
    print(f"ratios to the baseline: baseline / ceiling = {ratio_baseline:.2f}; PostgreSQL + Redis / baseline = {ratio_pg_baseline:.2f}")
    print(
        f"ratios to the two round trips: round trips / ceiling = {ratio_round_trips:.2f}; "
        f"PostgreSQL + Redis / round trips = {ratio_pg_round_trips:.2f}"
    )
    if designs:
        ratio_one_trip = median_ratio(one_trip, ceiling)
        ratio_one_trip_budget = median_ratio(one_trip_budget, ceiling)
        ratio_one_trip_round_trips = median_ratio(one_trip, round_trips)
        print(
            f"ratios of the one-round-trip design (no Redis): one trip / ceiling = {ratio_one_trip:.2f}; "
            f"with a shared budget row / ceiling = {ratio_one_trip_budget:.2f}; "
            f"one trip / two round trips = {ratio_one_trip_round_trips:.2f}"
        )
    # The same question by cost: how many engine swipes the CPU of one ceiling request would pay for, whether or
    # not the cores were busy all the time (the engine leaves some idle while its workers all wait at once).
    ceiling_cpu_us = ceiling.cpu_us_all
    print(
        "ratios of CPU per request at saturation, all processes (ceiling / target): "
        + "; ".join(
            f"{result.label} {ceiling_cpu_us / result.cpu_us_all:.2f}"
            for result in (pg, embedded, round_trips, *(result for result, _ in designs))
            if result.cpu_us_all
        )
    )
    for result in targets:
        for note in result.notes:
            print(f"note: {result.name}: {note}")
    if args.keep:
        print(f"scratch kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"bench: ratio_pg_redis={ratio_pg:.2f} ratio_embedded={ratio_embedded:.2f} p99_ms_pg_redis={pg.p99_ms:.1f} errors={errors}")


def median_ratio(top: Result, bottom: Result) -> float:
    """The median over the rounds of `top`'s saturation throughput over `bottom`'s (each round's runs minutes apart at most)."""
    return statistics.median(a / b for a, b in zip(top.saturation_rps_runs, bottom.saturation_rps_runs, strict=True))


def _cores() -> str:
    """The cores gunicorn and wrk may run on (they inherit the bench's affinity), out of the machine's."""
    usable, machine = len(os.sched_getaffinity(0)), os.cpu_count()
    return f"{machine} cores" if usable == machine else f"gunicorn and wrk on {usable} of {machine} cores"


def _line(result: Result) -> str:
    rounds, p99_of = "", ""
    if len(result.saturation_rps_runs) > 1:
        rounds, p99_of = ", rounds " + " / ".join(f"{rps:.0f}" for rps in result.saturation_rps_runs), ", the worst round's"
    line = f"{result.name}: saturation {result.saturation_rps:.0f} req/s{rounds} (p99 {result.saturation_p99_ms:.1f} ms{p99_of}); "
    if result.moderate_target_rps:
        line += (
            f"at {result.moderate_target_rps:.0f} req/s target ({result.moderate_rps:.0f} achieved): "
            f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms, p99 {result.p99_ms:.2f} ms; "
        )
    cpu = ", ".join(f"{group} {value:.0f}" for group, value in result.cpu_us.items() if value >= 0.5)
    idle = f"; cores idle {100 * result.idle_s / result.core_s:.0f} %" if result.core_s else ""
    return f"{line}errors {result.errors}\n  CPU per request at saturation (µs): {cpu}; all {result.cpu_us_all:.0f}{idle}"


def _ensure_database(url: str) -> None:
    """Create the benchmark's PostgreSQL database if it does not exist."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(database="postgres", drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{parsed.database}"')


if __name__ == "__main__":
    main()
