"""Print the swipe path's own latency, in-process: rule evaluation alone, and a whole authorisation.

    python -m loadtests.swipe_latency [--swipes 2000] [--pg postgresql://…] [--redis redis://…]

Runs on a throw-away SQLite file with the demo world (and, with --pg/--redis,
on PostgreSQL + Redis too), with the demo rulebook and with 5,000 generated
rules added. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from loadtests.rulegen import with_generated_rules
from pos_engine.demo import load_demo
from pos_engine.domain.clock import SystemClock
from pos_engine.domain.evaluation import Swipe, execute_plan, plan_swipe
from pos_engine.domain.rulebook import Rulebook
from pos_engine.rules_loader import load_rulebook
from pos_engine.service import swipes
from pos_engine.service.context import EngineContext
from pos_engine.store.counters import counter_store_from_url
from pos_engine.store.db import Database, SqlRegistry
from pos_engine.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
CARD_KEY = b"bench-card-key"
GENERATED_RULES = 5_000


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return f"p50={at(0.50):.3f} ms  p99={at(0.99):.3f} ms  mean={statistics.fmean(ordered) * 1000:.3f} ms  n={len(ordered)}"


def time_each(count: int, work: Callable[[int], object]) -> list[float]:
    samples = []
    for index in range(count):
        start = time.perf_counter()
        work(index)
        samples.append(time.perf_counter() - start)
    return samples


def bench_evaluation(rulebook: Rulebook, merchants: list[tuple[str, str, str]], count: int) -> None:
    rng = random.Random(1)
    now = datetime.now(timezone.utc)

    def evaluate(_index: int) -> object:
        merchant_id, category, district = rng.choice(merchants)
        plan = plan_swipe(rulebook, Swipe(10_000, now, merchant_id, category, district, "card-1", frozenset()))
        return execute_plan(plan, {})

    time_each(200, evaluate)  # warm the per-merchant candidate cache
    samples = time_each(count, evaluate)
    print(f"  evaluation only ({rulebook.rule_count} rules): {percentiles(samples)}")


def bench_authorise(label: str, database_url: str, redis_url: str | None, rulebook: Rulebook, count: int) -> None:
    upgrade(database_url)
    database = Database(database_url)
    credentials = load_demo(database, CARD_KEY, datetime.now(timezone.utc).year, reset=True)
    ctx = EngineContext(
        unit_of_work=database.unit_of_work,
        single_statement=database.single_statement,
        swipe_transaction=database.swipe_transaction,
        registry=SqlRegistry(database),
        counters=counter_store_from_url(redis_url, database, namespace=f"bench-{uuid.uuid4().hex[:8]}"),
        rulebook=rulebook,
        clock=SystemClock(),
        card_key=CARD_KEY,
    )
    ctx.counters.reset()
    rng = random.Random(2)
    cards = credentials.cards["usable"]
    terminals = [ctx.terminal(terminal["terminal_id"]) for terminal in credentials.terminals]
    run = uuid.uuid4().hex[:8]

    def authorise(index: int) -> object:
        terminal = rng.choice(terminals)
        assert terminal is not None
        request = swipes.AuthorisationRequest(
            f"{run}-{index}", rng.choice(cards), terminal.merchant_id, rng.randint(500, 30_000), ctx.clock.now()
        )
        return swipes.authorise(ctx, terminal, request, f"hash-{run}-{index}")

    time_each(100, lambda index: authorise(10**9 + index))  # warm caches and connections
    samples = time_each(count, authorise)
    print(f"  authorise, {label} ({rulebook.rule_count} rules): {percentiles(samples)}")
    ctx.counters.reset()
    database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swipes", type=int, default=2000)
    parser.add_argument("--pg", help="a PostgreSQL URL to measure on too (its tables are wiped)")
    parser.add_argument("--redis", help="a Redis URL to use with --pg")
    args = parser.parse_args()

    demo_rulebook = load_rulebook(ROOT / "rules")
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/bench.sqlite3"
        upgrade(url)
        database = Database(url)
        load_demo(database, CARD_KEY, 2026, reset=True)
        from sqlalchemy import select

        from pos_engine.store.models import MerchantRow

        with database.sessions() as session:
            merchants = [(m.merchant_id, m.category, m.district) for m in session.execute(select(MerchantRow)).scalars()]
        database.dispose()
        big_rulebook = with_generated_rules(demo_rulebook, GENERATED_RULES, [merchant[0] for merchant in merchants] * 30)
        for rulebook in (demo_rulebook, big_rulebook):
            print(f"rulebook {rulebook.version}: {rulebook.rule_count} rules")
            bench_evaluation(rulebook, merchants, args.swipes * 5)
            bench_authorise(
                "SQLite + SQL counters", f"sqlite:///{scratch}/bench-{rulebook.rule_count}.sqlite3", None, rulebook, args.swipes
            )
            if args.pg:
                bench_authorise(
                    "PostgreSQL + Redis" if args.redis else "PostgreSQL + SQL counters", args.pg, args.redis, rulebook, args.swipes
                )


if __name__ == "__main__":
    main()
