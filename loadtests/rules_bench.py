"""Print µs per rule evaluation at 10 to 10,000 rules, beside zen-engine evaluating the same rules as a decision table.

    python -m loadtests.rules_bench [--swipes 20000] [--sizes 10,100,1000,10000] [--merchants 10000]

The rulebooks are `loadtests.rulegen.city_rulebook`: eight place-wide
campaigns in every size, the rest partner agreements that name one merchant
each, over the same 10,000 merchants at every size, so only the rule count
changes. Each size's rulebook is also translated into one zen decision table
(hit policy "collect", one row per rule, rows in our evaluation order), built
once per size and reused for every evaluation.

What is timed, per swipe, on the same swipes on both sides (perf_counter_ns,
garbage collector left on, both sides warmed up first, timed in alternating
blocks so that a noisy neighbour slows both alike):
- ours, matching: `plan_swipe`: the index lookup (`Rulebook.candidates`),
  campaign validity and every condition of each candidate, in Asia/Shanghai
  (converted inside the call), and the counter keys and limits of each
  matching rule;
- ours, matching + amounts: the same plus `execute_plan` on an empty counter
  dict: each benefit on what is still payable, rounded down, capped, with
  exclusivity;
- zen: `ZenDecision.evaluate(input)`: every row's cells (merchant, category,
  district, member groups, weekday, time of day, campaign validity and date
  range, minimum amount), returning each matching row's benefit (kind,
  percent or fixed fen, maximum) and order keys. zen is spared the time-zone
  conversion (its input dict, with weekday, second of day and day number
  already in Asia/Shanghai, is built before timing), counter keys and
  amounts: it does the matching part of `plan_swipe` only, so the ratio
  printed compares ours *with* amounts against zen *without*.
"zen core" is the time zen's own engine reports in its answer ("performance"),
without the Python binding; it is printed for reference, not compared.

"steady mean" is ours +amounts again, each swipe's fastest of three passes: on
a shared machine a preempted swipe adds milliseconds to a microsecond mean,
and the raw mean then says more about the neighbours than about the code. The
second and third passes take turns between the sizes, once every size's
first pass is done, so that a drift of the machine's speed over the run falls
on every size alike.
The last line reports it as us_N and ratio_…; the raw mean and p50 ratios
follow it. The p50 and the mean answer different questions here: at 10 rules
three swipes in four match nothing, at 10,000 most match a partner agreement,
so the p50 moves from a no-benefit swipe to a one-benefit swipe; the second
table (by how many rules matched) compares like with like.

Every timed swipe's benefits are compared between the two sides (zen_agrees);
the figures are only a comparison if they agree. Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from importlib.metadata import version
from typing import Any

import zen

from loadtests.rulegen import CITY_MEMBER_GROUPS, city_merchants, city_rulebook
from pos_engine.domain.clock import SHANGHAI
from pos_engine.domain.evaluation import Plan, Swipe, execute_plan, plan_swipe
from pos_engine.domain.rulebook import Rule, Rulebook, order_key

DEFAULT_SIZES = (10, 100, 1_000, 10_000)
DEFAULT_SWIPES = 20_000
DEFAULT_WARMUP_SWIPES = 1_000
DEFAULT_MERCHANTS = 10_000
BLOCK_SWIPES = 500  # ours and zen take turns in blocks of this many swipes
STEADY_PASSES = 3
CARD_COUNT = 5_000
# The week the swipes fall in: Monday 2026-11-23 00:00 in Asia/Shanghai, inside every city campaign's validity.
WEEK_START = datetime(2026, 11, 23, tzinfo=SHANGHAI)
MEMBER_GROUP_SHARES = {"model_worker": 0.10, "hardship": 0.05, "machinery_union": 0.10}

# What a matching rule gives, as both sides report it: (campaign_id, rule_id, kind, percent_bp, fixed_fen, amount_fen_max).
BenefitRow = tuple[str, str, str, int | None, int | None, int | None]

ZEN_INPUTS = ("merchant_id", "category", "district", "member_groups", "weekday", "second_of_day", "day_number", "amount_fen")
ZEN_OUTPUTS = ("campaign_id", "rule_id", "kind", "percent_bp", "fixed_fen", "amount_fen_max", "priority", "exclusive")


def city_swipes(count: int, merchants: Sequence[tuple[str, str, str]], seed: int = 1) -> list[Swipe]:
    """`count` swipes at merchants drawn uniformly, at any second of one week, by members of some groups."""
    assert set(MEMBER_GROUP_SHARES) == set(CITY_MEMBER_GROUPS)
    rng = random.Random(seed)
    swipes: list[Swipe] = []
    for _ in range(count):
        merchant_id, category, district = rng.choice(merchants)
        # Terminals send UTC; the rules judge weekdays and times of day in Asia/Shanghai.
        occurred_at = (WEEK_START + timedelta(seconds=rng.randrange(7 * 86_400))).astimezone(UTC)
        groups = frozenset(group for group, share in MEMBER_GROUP_SHARES.items() if rng.random() < share)
        swipes.append(
            Swipe(rng.randint(500, 30_000), occurred_at, merchant_id, category, district, f"card-{rng.randrange(CARD_COUNT)}", groups)
        )
    return swipes


# --- zen: the rulebook as one decision table ------------------------------------------------------------


def _any_of(values: frozenset[str]) -> str:
    """A zen unary cell that holds when the column equals any of `values`."""
    return ", ".join(json.dumps(value) for value in sorted(values))


def _seconds(at: time_of_day) -> int:
    # zen sees a swipe's second of day, floored; that is exact only against bounds in whole seconds.
    assert at.microsecond == 0
    return at.hour * 3600 + at.minute * 60 + at.second


def zen_row(rule: Rule, rulebook: Rulebook) -> dict[str, str] | None:
    """One decision-table row with the same conditions as `rule`, or None if the rule can never match."""
    c = rule.conditions
    campaign = rulebook.campaigns[rule.campaign_id]
    cells = dict.fromkeys(ZEN_INPUTS, "")  # an empty cell matches anything, as None does in Conditions
    for column, values in (("merchant_id", c.merchant_ids), ("category", c.categories), ("district", c.districts)):
        if values is not None:
            if not values:
                return None  # an empty list matches nothing (and the rulebook indexes the rule nowhere)
            cells[column] = _any_of(values)
    if c.member_groups is not None:
        if not c.member_groups:
            return None
        cells["member_groups"] = f"some($, # in [{_any_of(c.member_groups)}])"
    if c.weekdays is not None:
        if not c.weekdays:
            return None
        cells["weekday"] = ", ".join(str(day) for day in sorted(c.weekdays))
    if c.time_from is not None and c.time_until is not None:
        cells["second_of_day"] = f"$ >= {_seconds(c.time_from)} and $ < {_seconds(c.time_until)}"
    elif c.time_from is not None:
        cells["second_of_day"] = f">= {_seconds(c.time_from)}"
    elif c.time_until is not None:
        cells["second_of_day"] = f"< {_seconds(c.time_until)}"
    first_day = max(campaign.valid_from, c.date_from or campaign.valid_from)
    last_day = min(campaign.valid_until, c.date_until or campaign.valid_until)
    cells["day_number"] = f"$ >= {first_day.toordinal()} and $ <= {last_day.toordinal()}"
    if c.amount_fen_min is not None:
        cells["amount_fen"] = f">= {c.amount_fen_min}"
    benefit = rule.benefit
    outputs = {
        "campaign_id": json.dumps(rule.campaign_id),
        "rule_id": json.dumps(rule.rule_id),
        "kind": json.dumps(benefit.kind),
        "percent_bp": json.dumps(benefit.percent_bp),
        "fixed_fen": json.dumps(benefit.fixed_fen),
        "amount_fen_max": json.dumps(benefit.amount_fen_max),
        "priority": str(rule.priority),
        "exclusive": json.dumps(rule.exclusive),
    }
    return {**{f"in-{column}": cell for column, cell in cells.items()}, **{f"out-{column}": cell for column, cell in outputs.items()}}


def zen_decision_content(rulebook: Rulebook) -> dict[str, Any]:
    """A JDM graph, request → decision table (hit policy collect) → response, equivalent to `rulebook`'s conditions."""
    rules = sorted((rule for campaign in rulebook.campaigns.values() for rule in campaign.rules), key=order_key)
    rows = []
    for rule in rules:
        row = zen_row(rule, rulebook)
        if row is not None:
            rows.append({"_id": rule.ref, **row})
    table = {
        "hitPolicy": "collect",
        "inputs": [{"id": f"in-{column}", "name": column, "field": column} for column in ZEN_INPUTS],
        "outputs": [{"id": f"out-{column}", "name": column, "field": column} for column in ZEN_OUTPUTS],
        "rules": rows,
    }
    return {
        "contentType": "application/vnd.gorules.decision",
        "nodes": [
            {"id": "request", "type": "inputNode", "name": "Request", "position": {"x": 0, "y": 0}},
            {"id": "rules", "type": "decisionTableNode", "name": "Rules", "position": {"x": 300, "y": 0}, "content": table},
            {"id": "response", "type": "outputNode", "name": "Response", "position": {"x": 600, "y": 0}},
        ],
        "edges": [
            {"id": "request-rules", "type": "edge", "sourceId": "request", "targetId": "rules"},
            {"id": "rules-response", "type": "edge", "sourceId": "rules", "targetId": "response"},
        ],
    }


def zen_decision(engine: zen.ZenEngine, rulebook: Rulebook) -> zen.ZenDecision:
    """Compile `rulebook`'s decision table once."""
    return engine.create_decision(json.dumps(zen_decision_content(rulebook)))


def zen_input(swipe: Swipe) -> dict[str, Any]:
    """What zen's table reads of a swipe, already in Asia/Shanghai (ours converts inside `plan_swipe`)."""
    at_local = swipe.occurred_at.astimezone(SHANGHAI)
    return {
        "merchant_id": swipe.merchant_id,
        "category": swipe.category,
        "district": swipe.district,
        "member_groups": sorted(swipe.member_groups),
        "weekday": at_local.weekday(),
        # Whole seconds: with whole-second bounds, floor(t) < bound exactly when t < bound.
        "second_of_day": at_local.hour * 3600 + at_local.minute * 60 + at_local.second,
        "day_number": at_local.date().toordinal(),
        "amount_fen": swipe.amount_fen,
    }


def zen_benefits(answer: Any) -> list[BenefitRow]:
    """The benefits of the rows zen matched, in row order (which is our evaluation order)."""
    rows = answer["result"]
    assert isinstance(rows, list)
    return [
        (row["campaign_id"], row["rule_id"], row["kind"], row.get("percent_bp"), row.get("fixed_fen"), row.get("amount_fen_max"))
        for row in rows
    ]


def our_benefits(plan: Plan) -> list[BenefitRow]:
    """The benefits of the rules `plan_swipe` matched, in evaluation order."""
    return [
        (
            step.rule.campaign_id,
            step.rule.rule_id,
            step.benefit.kind,
            step.benefit.percent_bp,
            step.benefit.fixed_fen,
            step.benefit.amount_fen_max,
        )
        for step in plan.steps
    ]


_DURATION = re.compile(r"([0-9.]+)\s*(ns|µs|us|ms|s)")
_NS_PER_UNIT = {"ns": 1, "µs": 1_000, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def zen_reported_ns(answer: Any) -> float:
    """zen's own timing of an evaluation ('8.4µs'), in ns; nan if it gave none."""
    match = _DURATION.fullmatch(str(answer.get("performance", "")).strip())
    return float(match.group(1)) * _NS_PER_UNIT[match.group(2)] if match else float("nan")


# --- timing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """A sample of durations, in µs."""

    p50_us: float
    mean_us: float
    p99_us: float

    @classmethod
    def of(cls, samples_ns: Sequence[float]) -> Figures:
        ordered = sorted(samples_ns)
        return cls(
            ordered[len(ordered) // 2] / 1000,
            statistics.fmean(ordered) / 1000,
            ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1000,
        )


@dataclass(frozen=True)
class SizeResult:
    """One rulebook size: candidates and matches per swipe, the three timings, and whether the sides agreed."""

    rules: int
    candidates_per_swipe: float
    matches_per_swipe: float
    ours_matching: Figures
    ours_with_amounts: Figures
    ours_steady: Figures  # ours +amounts, each swipe's fastest of STEADY_PASSES passes
    zen: Figures
    zen_core_p50_us: float
    agreed: int
    swipes: int
    by_matches: dict[int, tuple[int, Figures]]  # matching rules -> (swipes, ours +amounts), 2 meaning 2 or more

    @property
    def ours_over_zen(self) -> float:
        return self.ours_with_amounts.mean_us / self.zen.mean_us

    @property
    def faster_than_zen(self) -> bool:
        return self.ours_with_amounts.p50_us < self.zen.p50_us and self.ours_with_amounts.mean_us < self.zen.mean_us


def bench_size(
    rule_count: int,
    merchants: Sequence[tuple[str, str, str]],
    swipes: Sequence[Swipe],
    warmup: Sequence[Swipe],
    engine: zen.ZenEngine,
) -> tuple[SizeResult, Rulebook, list[int]]:
    """Time ours and zen on the same swipes against one city rulebook of `rule_count` rules.

    Returns the result (its steady figures from this one pass), the rulebook,
    and ours +amounts per swipe in ns, for `steady_pass` to improve on.
    """
    rulebook = city_rulebook(rule_count, list(merchants))
    decision = zen_decision(engine, rulebook)
    for swipe in warmup:
        execute_plan(plan_swipe(rulebook, swipe), {})
        decision.evaluate(zen_input(swipe))
    # A long-running worker has seen every merchant: fill the per-merchant candidate cache as it would be.
    for merchant_id, category, district in merchants:
        rulebook.candidates(merchant_id, category, district)

    clock = time.perf_counter_ns
    matching_ns: list[int] = []
    with_amounts_ns: list[int] = []
    zen_ns: list[int] = []
    zen_core_ns: list[float] = []
    matches: list[int] = []
    agreed = 0
    for first in range(0, len(swipes), BLOCK_SWIPES):
        block = swipes[first : first + BLOCK_SWIPES]
        zen_inputs = [zen_input(swipe) for swipe in block]
        plans: list[Plan] = []
        answers: list[Any] = []
        for swipe in block:
            start = clock()
            plan = plan_swipe(rulebook, swipe)
            planned = clock()
            execute_plan(plan, {})
            done = clock()
            matching_ns.append(planned - start)
            with_amounts_ns.append(done - start)
            plans.append(plan)
        for context in zen_inputs:
            start = clock()
            answer = decision.evaluate(context)
            done = clock()
            zen_ns.append(done - start)
            answers.append(answer)
        # Checked between blocks and then dropped, so that a growing heap of answers does not slow the
        # garbage collector, and with it the later blocks, on either side.
        agreed += sum(our_benefits(plan) == zen_benefits(answer) for plan, answer in zip(plans, answers, strict=True))
        matches.extend(len(plan.steps) for plan in plans)
        zen_core_ns.extend(zen_reported_ns(answer) for answer in answers)
    candidates = [len(rulebook.candidates(swipe.merchant_id, swipe.category, swipe.district)) for swipe in swipes]
    by_matches: dict[int, list[int]] = {}
    for count, sample_ns in zip(matches, with_amounts_ns, strict=True):
        by_matches.setdefault(min(count, 2), []).append(sample_ns)
    result = SizeResult(
        rules=rulebook.rule_count,
        candidates_per_swipe=statistics.fmean(candidates),
        matches_per_swipe=statistics.fmean(matches),
        ours_matching=Figures.of(matching_ns),
        ours_with_amounts=Figures.of(with_amounts_ns),
        ours_steady=Figures.of(with_amounts_ns),
        zen=Figures.of(zen_ns),
        zen_core_p50_us=statistics.median(zen_core_ns) / 1000,
        agreed=agreed,
        swipes=len(swipes),
        by_matches={count: (len(samples), Figures.of(samples)) for count, samples in sorted(by_matches.items())},
    )
    return result, rulebook, list(with_amounts_ns)


def steady_pass(rulebook: Rulebook, swipes: Sequence[Swipe], best_ns: list[int]) -> None:
    """One more pass of ours alone over all the swipes; each swipe keeps its fastest time in `best_ns`.

    A swipe that a neighbouring process preempted (milliseconds on a busy
    machine, where ours takes microseconds) is rarely preempted in every pass,
    so the mean of the fastest is the reproducible cost per evaluation.
    """
    clock = time.perf_counter_ns
    for index, swipe in enumerate(swipes):
        start = clock()
        execute_plan(plan_swipe(rulebook, swipe), {})
        done = clock()
        best_ns[index] = min(best_ns[index], done - start)


def _pair(figures: Figures) -> str:
    return f"{figures.p50_us:8.2f} / {figures.mean_us:8.2f}"


def print_tables(results: Sequence[SizeResult], out: Callable[[str], None]) -> None:
    out(
        f"{'rules':>6} | {'cand/swipe':>10} | {'match/swipe':>11} | {'ours matching µs p50 / mean':>27} | "
        f"{'ours +amounts µs p50 / mean':>27} | {'steady mean':>11} | {'zen µs p50 / mean':>19} | "
        f"{'zen core p50':>12} | {'ours/zen':>8} | agree"
    )
    for result in results:
        out(
            f"{result.rules:>6} | {result.candidates_per_swipe:>10.2f} | {result.matches_per_swipe:>11.2f} | "
            f"{_pair(result.ours_matching):>27} | {_pair(result.ours_with_amounts):>27} | {result.ours_steady.mean_us:>11.2f} | "
            f"{_pair(result.zen):>19} | "
            f"{result.zen_core_p50_us:>12.2f} | {result.ours_over_zen:>8.4f} | {result.agreed}/{result.swipes}"
        )
    out("ours matching = plan_swipe; ours +amounts = plan_swipe + execute_plan({}); zen = ZenDecision.evaluate (matching only).")
    out("steady mean = ours +amounts, mean of each swipe's fastest of 3 passes (filters out preemption by other processes).")
    out("ours/zen = ours +amounts mean / zen mean. zen core = zen's self-reported engine time, without the Python binding.")
    out("")
    out("ours +amounts by how many rules matched the swipe (share of swipes, p50 / mean µs):")
    for result in results:
        cells = [
            f"{count if count < 2 else '2+'} matched: {share / result.swipes:6.1%} {_pair(figures)}"
            for count, (share, figures) in result.by_matches.items()
        ]
        out(f"{result.rules:>6} | " + " | ".join(cells))


def summary_line(results: Sequence[SizeResult]) -> str:
    """The machine-readable last line. us_N and ratio: ours +amounts, steady mean; the raw mean and the p50 follow."""
    smallest = min(results, key=lambda result: result.rules)
    largest = max(results, key=lambda result: result.rules)
    small, large = smallest, largest
    fields = {
        f"us_{small.rules}": f"{small.ours_steady.mean_us:.2f}",
        f"us_{large.rules}": f"{large.ours_steady.mean_us:.2f}",
        f"ratio_{large.rules}_to_{small.rules}": f"{large.ours_steady.mean_us / small.ours_steady.mean_us:.3f}",
        f"zen_us_{large.rules}": f"{large.zen.mean_us:.2f}",
        "faster_than_zen_at_all_sizes": str(all(result.faster_than_zen for result in results)).lower(),
        f"raw_mean_ratio_{large.rules}_to_{small.rules}": f"{large.ours_with_amounts.mean_us / small.ours_with_amounts.mean_us:.3f}",
        f"p50_ratio_{large.rules}_to_{small.rules}": f"{large.ours_with_amounts.p50_us / small.ours_with_amounts.p50_us:.3f}",
        "zen_agrees": str(all(result.agreed == result.swipes for result in results)).lower(),
    }
    return "rules_bench: " + " ".join(f"{key}={value}" for key, value in fields.items())


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("sizes are positive rule counts separated by commas, such as 10,100,1000")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--swipes", type=int, default=DEFAULT_SWIPES, help="timed swipes per size (default %(default)s)")
    parser.add_argument("--sizes", type=_sizes, default=list(DEFAULT_SIZES), help="rule counts (default 10,100,1000,10000)")
    parser.add_argument("--merchants", type=int, default=DEFAULT_MERCHANTS, help="merchants at every size (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP_SWIPES, help="untimed swipes per size first (default %(default)s)")
    args = parser.parse_args(argv)

    merchants = city_merchants(args.merchants)
    swipes = city_swipes(args.swipes, merchants, seed=1)
    warmup = city_swipes(args.warmup, merchants, seed=2)
    engine = zen.ZenEngine()
    print(
        f"rules_bench: Python {platform.python_version()}, zen-engine {version('zen-engine')}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; {args.merchants} merchants, {args.swipes} timed swipes per size"
    )
    measured: list[tuple[SizeResult, Rulebook, list[int]]] = []
    for size in args.sizes:
        measured.append(bench_size(size, merchants, swipes, warmup, engine))
        print(f"  {size} rules done", file=sys.stderr)
    # The steady passes take turns between the sizes, so that a drift of the machine's speed over the
    # run (the sizes' first passes are minutes apart: zen takes milliseconds a swipe at 10,000 rules)
    # falls on every size alike.
    for _ in range(STEADY_PASSES - 1):
        for _result, rulebook, best_ns in measured:
            steady_pass(rulebook, swipes, best_ns)
    results = [replace(result, ours_steady=Figures.of(best_ns)) for result, _rulebook, best_ns in measured]
    print_tables(results, print)
    print(summary_line(results))


if __name__ == "__main__":
    main()
