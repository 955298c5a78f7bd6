"""CPU per swipe through the WSGI app in one process, no gunicorn: the engine, and the ceiling app beside it.

    python -m loadtests.swipe_cpu --world var/load/rules/world.json \
        --pg-url postgresql://postgres@127.0.0.1:5432/pos_engine_load --redis-url redis://127.0.0.1:6379/2 \
        [--swipes 3000] [--warmup 500] [--rounds 3] [--profile swipe.prof]

Pre-signed, distinct authorisations (as `loadtests/bench.py` sends them) go
through `app(environ, start_response)` one after another. Printed per swipe:
this process's CPU (`time.process_time`), and the CPU every PostgreSQL and
Redis server process spent meanwhile (from /proc, so run it on a quiet
machine). The ceiling app (`loadtests/ceiling_app.py`) answers the same
requests in the same run. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

from loadtests.bench import process_cpu_s, world_credentials, world_settings, write_requests

CARDS_READY_TIMEOUT_S = 300.0


def environs(requests_file: Path) -> list[dict[str, Any]]:
    """WSGI environs of the pre-signed requests, with the raw path as gunicorn gives it (RAW_URI)."""
    built = []
    for line in requests_file.read_text().splitlines():
        method, path, headers, body = line.split("\t")
        header_pairs = [tuple(header.split(":", 1)) for header in headers.split("|")]
        environ = EnvironBuilder(path=path, method=method, headers=header_pairs, data=body.encode()).get_environ()
        environ["RAW_URI"] = path
        built.append(environ)
    return built


def run(app: Callable[..., Iterable[bytes]], batch: list[dict[str, Any]]) -> tuple[float, float, float, int]:
    """Wall, CPU and system CPU seconds for the batch, and how many answers were not 200."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    wall, cpu, system = time.perf_counter(), time.process_time(), os.times().system
    for environ in batch:
        for _chunk in app(environ, start_response):
            pass
    wall, cpu, system = time.perf_counter() - wall, time.process_time() - cpu, os.times().system - system
    failures = sum(1 for status in statuses if not status.startswith("200"))
    return wall, cpu, system, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="world.json of the large world loaded into --pg-url")
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--swipes", type=int, default=3_000, help="measured swipes per round")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also profile one more round with cProfile into this file")
    args = parser.parse_args()

    os.environ.update(
        POS_ENGINE_DATABASE_URL=args.pg_url,
        POS_ENGINE_REDIS_URL=args.redis_url,
        POS_ENGINE_REDIS_NAMESPACE="bench",
        **world_settings(args.world),
    )
    from loadtests.ceiling_app import app as ceiling
    from pos_engine.api import create_app

    engine = create_app()
    ctx = engine.extensions["pos_engine"]
    deadline = time.monotonic() + CARDS_READY_TIMEOUT_S
    while ctx.cards is not None and not ctx.cards.ready:
        if time.monotonic() > deadline:
            raise SystemExit("swipe_cpu: the card directory did not load")
        time.sleep(0.2)

    rounds = args.rounds + (1 if args.profile else 0)
    with tempfile.TemporaryDirectory() as scratch:
        requests_file = Path(scratch) / "requests.tsv"
        write_requests(requests_file, world_credentials(args.world), args.warmup + args.swipes * rounds, seed=os.getpid())
        batches = environs(requests_file)
    ceiling_batches = environs_copy(batches)

    run(engine, batches[: args.warmup])
    run(ceiling, ceiling_batches[: args.warmup])
    for index in range(args.rounds):
        start, stop = args.warmup + index * args.swipes, args.warmup + (index + 1) * args.swipes
        servers = process_cpu_s(os.getpid())
        wall, cpu, system, failures = run(engine, batches[start:stop])
        servers = {group: value - servers[group] for group, value in process_cpu_s(os.getpid()).items()}
        _, ceiling_cpu, _, _ = run(ceiling, ceiling_batches[start:stop])
        per = 1e6 / args.swipes
        print(
            f"round {index + 1}: engine {cpu * per:.0f} µs CPU/swipe ({system * per:.0f} µs in the kernel; {wall * per:.0f} µs wall), "
            f"PostgreSQL {servers['PostgreSQL'] * per:.0f} µs, Redis {servers['Redis'] * per:.0f} µs, "
            f"non-200 {failures}; ceiling app {ceiling_cpu * per:.0f} µs",
            flush=True,
        )
    if args.profile:
        start = args.warmup + args.rounds * args.swipes
        profiler = cProfile.Profile()
        profiler.enable()
        run(engine, batches[start : start + args.swipes])
        profiler.disable()
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def environs_copy(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same requests with bodies of their own (a WSGI app reads its input once)."""
    return [{**environ, "wsgi.input": io.BytesIO(environ["wsgi.input"].getvalue())} for environ in batches]


if __name__ == "__main__":
    main()
