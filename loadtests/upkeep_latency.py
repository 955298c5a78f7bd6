"""Swipe latency at a moderate rate while the engine's upkeep runs: a rulebook reload, or `counters expire`.

    python -m loadtests.upkeep_latency --world var/load/rules/world.json \
        --pg-url postgresql://postgres@127.0.0.1:5432/pos_engine_load --redis-url redis://127.0.0.1:6379/2 \
        [--upkeep reload|expire] [--everything] [--rate 800] [--seconds 30] [--rounds 2]

Serves the engine on PostgreSQL + Redis with the large world (gunicorn.conf.py's
workers and threads, as `loadtests/bench.py` does), and sends pre-signed swipes
with wrk at `--rate` for `--seconds`, in rounds that alternate a quiet run and a
run with upkeep:
- `reload`: a rule file's modification time is moved on 5 s into the run and
  again 12 s later; each worker's watcher then loads the whole rulebook again
  (the files' contents do not change);
- `expire`: `pos-engine counters expire` runs from 2 s into the run, as the
  hourly job does: it reads the counters the swipes since its last run noted.
  It runs once, unmeasured, before the first round, since a namespace's first
  run (and one a week) reads every counter. With `--everything`, every run
  reads every counter.
Printed for each run: the rate achieved, p50 / p95 / p99 / max, errors. wrk
paces each connection with a delay after each answer, so a stall delays the
requests behind it rather than piling them up (coordinated omission): the
figures during upkeep are, if anything, kinder than a till's. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loadtests.bench import ROOT, Result, cli, gunicorn, run_wrk, warm_up, world_credentials, world_settings, write_requests
from pos_engine.rules_watch import RULES_RELOAD_INTERVAL_S

RELOAD_AT_S = (5.0, 17.0)
EXPIRE_AT_S = 2.0


def touch_rules(rules_dir: Path, log: list[str]) -> None:
    target = sorted(rules_dir.rglob("*.yaml"))[-1]
    started = time.monotonic()
    for at in RELOAD_AT_S:
        time.sleep(max(0.0, started + at - time.monotonic()))
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, time.time_ns()))
    log.append(f"moved on the modification time of {target.name} at {', '.join(f'{at:.0f}' for at in RELOAD_AT_S)} s")


def run_expire(env: dict[str, str], log: list[str], everything: bool) -> None:
    time.sleep(EXPIRE_AT_S)
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "pos_engine.cli", "counters", "expire", *(["--everything"] if everything else [])],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    said = (completed.stdout + completed.stderr).strip().splitlines()
    log.append(
        f"counters expire from {EXPIRE_AT_S:.0f} s took {time.monotonic() - started:.1f} s: {said[-1] if said else completed.returncode}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="world.json of a large world loaded into --pg-url")
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--upkeep", choices=("reload", "expire"), default="reload")
    parser.add_argument("--everything", action="store_true", help="expire: read every counter's time to live, each run")
    parser.add_argument("--rate", type=float, default=800.0, help="swipes a second (about half the engine's saturation)")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of a quiet run and a run with upkeep")
    args = parser.parse_args()
    if args.everything and args.upkeep != "expire":
        parser.error("--everything goes with --upkeep expire")
    if shutil.which("wrk") is None:
        sys.exit("upkeep_latency: wrk is not installed; `apt-get install -y wrk` (Debian) and run again")
    # Each worker's watcher sees the second change within its poll, then loads for about a second.
    seconds_min = RELOAD_AT_S[-1] + RULES_RELOAD_INTERVAL_S + 3
    if args.seconds < seconds_min:
        sys.exit(f"upkeep_latency: --seconds must be at least {seconds_min:.0f}, to hold both reloads")

    env = {key: value for key, value in os.environ.items() if not key.startswith("POS_ENGINE_")}
    env |= {"POS_ENGINE_DATABASE_URL": args.pg_url, "POS_ENGINE_REDIS_URL": args.redis_url, "POS_ENGINE_REDIS_NAMESPACE": "bench"}
    env |= world_settings(args.world)
    rules_dir = Path(env["POS_ENGINE_RULES_DIR"])
    credentials = world_credentials(args.world)
    shipped = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    scratch = Path(tempfile.mkdtemp(prefix="pos-upkeep-"))
    cli(env, "counters", "rebuild")
    if args.upkeep == "expire":
        cli(env, "counters", "expire")  # a run that reads every counter (a namespace's first, or a week on) is not measured
    connections = 8
    print(
        f"upkeep_latency: {args.upkeep}{' --everything' if args.everything else ''}; "
        f"gunicorn -w {shipped['workers']} -k {shipped['worker_class']} --threads {shipped['threads']}; "
        f"wrk, {connections} connections at {args.rate:.0f} req/s, {args.seconds} s a run",
        flush=True,
    )
    try:
        with gunicorn(
            "pos_engine.wsgi:app", env, shipped["workers"], shipped["worker_class"], shipped["threads"], scratch / "gunicorn.log"
        ) as (url, pid):
            result = Result("engine PostgreSQL + Redis", "pg-redis", credentials, url=url, server_pid=pid)
            warm_up(result, scratch)
            for round_ in range(args.rounds):
                for upkeep in (None, args.upkeep):
                    requests = scratch / "requests.tsv"
                    write_requests(
                        requests,
                        credentials,
                        int(args.rate * (args.seconds + 5) * 1.2) + 1000,
                        seed=100 + 2 * round_ + (upkeep is not None),
                    )
                    log: list[str] = []
                    thread = None
                    if upkeep == "reload":
                        thread = threading.Thread(target=touch_rules, args=(rules_dir, log))
                    elif upkeep == "expire":
                        thread = threading.Thread(target=run_expire, args=(env, log, args.everything))
                    if thread:
                        thread.start()
                    data = run_wrk(url + "/v1/authorisations", requests, args.seconds, connections, delay_ms=connections * 1000 / args.rate)
                    if thread:
                        thread.join()
                    figures = " / ".join(f"{data[key] / 1000:.2f}" for key in ("p50_us", "p95_us", "p99_us", "max_us"))
                    if upkeep and not log:
                        log.append("the upkeep failed (see above): this run is not one with upkeep")
                    print(
                        f"round {round_ + 1}, {upkeep or 'quiet'}: {data['rps']:.0f} req/s; p50 / p95 / p99 / max {figures} ms; "
                        f"errors {data['errors']}" + (f"; {log[0]}" if log else ""),
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
