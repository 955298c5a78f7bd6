"""Generate a large load-test world: members and cards, merchants and terminals, a rulebook, a week of ledger.

    python -m loadtests.world --database-url postgresql://postgres@127.0.0.1:5432/pos_engine_load \\
        --rules-out var/load/rules [--cards 1000000] [--merchants 10000] [--rules 5000] \\
        [--history-days 7] [--history-swipes 700000] [--seed 2026] [--card-key KEY] \\
        [--redis-url redis://127.0.0.1:6379/0 --redis-namespace load] [--yes-wipe]

It WIPES the registry, ledger and counters of the database it is given: it
refuses a database whose name does not contain `load`, `bench` or `test`
unless `--yes-wipe` is given. Then, timing each step:

1. migrates the schema (Alembic) and truncates every table;
2. loads members and their cards (one card each), merchants across the six
   categories and seven districts (weighted like a city: dining and shopping
   lead, Wujin is the largest district; ~95 % active, ~3 % on probation, ~2 %
   suspended) and one terminal per merchant. PostgreSQL gets `COPY`; SQLite
   (small worlds, for tests) plain executemany;
3. writes a rulebook into `--rules-out` in the loader's spelling and loads it
   with `pos_engine.rules_loader.load_rulebook`: per-merchant partner
   discounts (each naming one or a few merchants; all the rules but a fixed
   few) and a fixed set of place-wide campaigns (city, district, category,
   member-group subsidies with caps per card and per merchant, and budgets).
   The place-wide set does not grow with `--rules`, so the rules one swipe
   can match stay few however large the rulebook is;
4. replays a week of swipes through the engine's own evaluation
   (`plan_swipe`, `execute_plan` on an in-memory counter dict, `decide`), in
   time order, and writes what the engine would have written: approved
   authorisations as ledger entries (benefit lines with their counters and
   funders, counter deltas), declines, and a few reversals and partial refunds
   (pro-rata claw-back exactly as `pos_engine.service.swipes` computes it);
5. writes the resulting `counters` table, so that the SQL counter store agrees
   with the ledger; with `--redis-url` it also replaces the Redis counters of
   `--redis-namespace` (otherwise run `pos-engine counters rebuild` with
   POS_ENGINE_REDIS_URL set before serving with Redis);
6. writes `<rules-out>/world.json` for the load generator.

Everything follows from `--seed`, so the load generator recomputes card numbers
(`card_number(i, seed)`), which cards are usable (`card_kind(i, seed)`) and
terminal secrets (`terminal_secret(terminal_id, seed)`) without a large file.
Card hashes use the engine's keyed hash with `--card-key`, which must be the
`POS_ENGINE_CARD_KEY` the engine runs with.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import heapq
import hmac
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from string import Template
from typing import Any

import orjson
import redis
import sqlalchemy.exc
import yaml
from sqlalchemy import Table, insert, text
from sqlalchemy.engine import make_url

from pos_engine.config import DEMO_CARD_KEY
from pos_engine.domain.clock import SHANGHAI
from pos_engine.domain.evaluation import Swipe, decide, execute_plan, plan_swipe
from pos_engine.domain.ledger import benefit_lines, claw_back
from pos_engine.domain.registry import card_hash
from pos_engine.domain.rulebook import CATEGORIES, DISTRICTS, Rulebook
from pos_engine.rules_loader import load_rulebook
from pos_engine.store.db import Database, is_sqlite
from pos_engine.store.migrate import upgrade
from pos_engine.store.models import Base

ROOT = Path(__file__).resolve().parents[1]
SAFE_DATABASE_WORDS = ("load", "bench", "test")


def say(line: str) -> None:
    """Print a progress line at once, even into a pipe."""
    print(line, flush=True)


# -- the deterministic world: identities anyone can recompute from the seed ------------------------

_MASK64 = (1 << 64) - 1
_TWO64 = float(1 << 64)
# Independent pseudo-random streams, one per property.
_STREAM_CARD_KIND = 1
_STREAM_MODEL_WORKER = 2
_STREAM_HARDSHIP = 3
_STREAM_MEMBER_DISTRICT = 4
_STREAM_MERCHANT_CATEGORY = 5
_STREAM_MERCHANT_DISTRICT = 6
_STREAM_MERCHANT_STATUS = 7
_STREAM_CARD_NUMBER = 8
_STREAM_SCATTER = 9

CARD_PREFIX = "62"  # UnionPay's range; the union card is a co-branded bank card
CARD_BODY_DIGITS = 13  # prefix + body + one Luhn check digit = 16 digits
CARD_BODY_SPACE = 10**CARD_BODY_DIGITS

# Shares of cards that cannot get a benefit; the rest (~90 %) are usable.
CARD_LOST_SHARE = 0.03
CARD_REVIEW_DUE_SHARE = 0.04
CARD_NOT_IN_SERVICE_SHARE = 0.03
MODEL_WORKER_SHARE = 0.05
HARDSHIP_SHARE = 0.05
CARD_KINDS = ("usable", "lost", "review_due", "not_in_service")

MERCHANT_ACTIVE_SHARE = 0.95
MERCHANT_PROBATION_SHARE = 0.03  # the rest is suspended

# A city's merchant mix, and where people live and shop (weights, not percent).
CATEGORY_WEIGHTS = {"dining": 40, "shopping": 24, "transport": 10, "entertainment": 10, "lodging": 8, "travel": 8}
DISTRICT_WEIGHTS = {"wujin": 20, "xinbei": 16, "tianning": 16, "zhonglou": 16, "liyang": 11, "jintan": 10, "qishuyan": 11}
CATEGORY_NOUNS = {
    "dining": "Noodle House",
    "shopping": "Supermarket",
    "transport": "Taxi Co-op",
    "entertainment": "Cinema",
    "lodging": "Garden Hotel",
    "travel": "Travel Service",
}

# Amounts: lognormal around a median per category, in fen, rounded to 10 fen and clipped.
AMOUNT_MEDIAN_FEN = {"dining": 6_000, "shopping": 12_000, "transport": 3_000, "entertainment": 8_000, "lodging": 30_000, "travel": 40_000}
AMOUNT_SIGMA = 0.6
AMOUNT_FEN_MIN = 1_000  # 10 yuan
AMOUNT_FEN_MAX = 100_000  # 1,000 yuan

# Activity skew: rank = floor(n * u ** SKEW_EXPONENT) for uniform u, i.e. a density
# proportional to rank ** (1 / SKEW_EXPONENT - 1). With 2: the busiest 1 % of
# cards make 10 % of the swipes and the busiest 10 % make 32 %.
SKEW_EXPONENT = 2.0


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _unit(seed: int, stream: int, index: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, stream, index)."""
    return _mix64(_mix64((seed << 8) ^ stream) ^ index) / _TWO64


def _weighted(weights: dict[str, int]) -> tuple[list[str], list[float]]:
    names = list(weights)
    total = sum(weights.values())
    cumulative: list[float] = []
    running = 0
    for name in names:
        running += weights[name]
        cumulative.append(running / total)
    return names, cumulative


_CATEGORY_TABLE = _weighted(CATEGORY_WEIGHTS)
_DISTRICT_TABLE = _weighted(DISTRICT_WEIGHTS)


def _pick(table: tuple[list[str], list[float]], u: float) -> str:
    names, cumulative = table
    return names[min(bisect.bisect_right(cumulative, u), len(names) - 1)]


def luhn_digit(digits: str) -> str:
    """The Luhn check digit for `digits` (what card readers verify)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def _card_affine(seed: int) -> tuple[int, int]:
    """Multiplier (coprime to 10, so the map is a bijection mod 10**13) and offset of card bodies."""
    multiplier = _mix64(_mix64(seed) ^ _STREAM_CARD_NUMBER) % CARD_BODY_SPACE
    while multiplier % 2 == 0 or multiplier % 5 == 0 or multiplier < CARD_BODY_SPACE // 10:
        multiplier = (multiplier * 7 + 3) % CARD_BODY_SPACE
    offset = _mix64(seed ^ (_STREAM_CARD_NUMBER << 32)) % CARD_BODY_SPACE
    return multiplier, offset


_AFFINE_CACHE: dict[int, tuple[int, int]] = {}


def card_number(i: int, seed: int) -> str:
    """Card `i`'s 16-digit number: '62', 13 digits unique per i (an affine bijection), a Luhn digit."""
    affine = _AFFINE_CACHE.get(seed)
    if affine is None:
        affine = _AFFINE_CACHE[seed] = _card_affine(seed)
    multiplier, offset = affine
    assert 0 <= i < CARD_BODY_SPACE
    body = CARD_PREFIX + f"{(multiplier * i + offset) % CARD_BODY_SPACE:013d}"
    return body + luhn_digit(body)


def card_kind(i: int, seed: int) -> str:
    """'usable', 'lost' (card reported lost), 'review_due' (last year's review) or 'not_in_service'."""
    u = _unit(seed, _STREAM_CARD_KIND, i)
    if u < CARD_LOST_SHARE:
        return "lost"
    if u < CARD_LOST_SHARE + CARD_REVIEW_DUE_SHARE:
        return "review_due"
    if u < CARD_LOST_SHARE + CARD_REVIEW_DUE_SHARE + CARD_NOT_IN_SERVICE_SHARE:
        return "not_in_service"
    return "usable"


def member_groups(i: int, seed: int) -> frozenset[str]:
    """The groups of card `i`'s member: ~5 % model workers, ~5 % hardship (independently)."""
    groups: set[str] = set()
    if _unit(seed, _STREAM_MODEL_WORKER, i) < MODEL_WORKER_SHARE:
        groups.add("model_worker")
    if _unit(seed, _STREAM_HARDSHIP, i) < HARDSHIP_SHARE:
        groups.add("hardship")
    return frozenset(groups)


def card_id(i: int) -> str:
    return f"c-{i:07d}"


def member_id(i: int) -> str:
    return f"mem-{i:07d}"


def merchant_id(j: int) -> str:
    return f"m-{j:05d}"


def terminal_id(j: int) -> str:
    return f"t-{j:05d}"


def terminal_secret(terminal_id: str, seed: int) -> str:
    """A terminal's secret: HMAC-SHA256 of its id keyed with the seed (load-test worlds only)."""
    return hmac.new(f"pos-engine-loadtest-{seed}".encode(), terminal_id.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class MerchantProfile:
    """One generated merchant."""

    index: int
    merchant_id: str
    terminal_id: str
    category: str
    district: str
    status: str


def merchant_profile(j: int, seed: int) -> MerchantProfile:
    category = _pick(_CATEGORY_TABLE, _unit(seed, _STREAM_MERCHANT_CATEGORY, j))
    district = _pick(_DISTRICT_TABLE, _unit(seed, _STREAM_MERCHANT_DISTRICT, j))
    u = _unit(seed, _STREAM_MERCHANT_STATUS, j)
    status = "active" if u < MERCHANT_ACTIVE_SHARE else "probation" if u < MERCHANT_ACTIVE_SHARE + MERCHANT_PROBATION_SHARE else "suspended"
    return MerchantProfile(j, merchant_id(j), terminal_id(j), category, district, status)


def skewed_rank(u: float, count: int) -> int:
    """A rank in [0, count) from a uniform u: low ranks are drawn far more often (see SKEW_EXPONENT)."""
    return min(count - 1, int(count * u**SKEW_EXPONENT))


class Scatter:
    """Spread ranks over [0, n): rank r → (r * stride + offset) mod n, a bijection.

    So the busiest cards (or merchants) are not simply the first ones.
    """

    def __init__(self, count: int, seed: int) -> None:
        assert count > 0
        self.count = count
        stride = max(1, int(count * 0.6180339887)) | 1
        while math.gcd(stride, count) != 1:
            stride += 1
        self.stride = stride
        self.offset = _mix64(seed ^ _STREAM_SCATTER) % count

    def __call__(self, rank: int) -> int:
        return (rank * self.stride + self.offset) % self.count


def amount_fen(rng: random.Random, category: str) -> int:
    """A purchase amount: lognormal around the category's median, rounded to 10 fen, 10 to 1,000 yuan."""
    raw = rng.lognormvariate(math.log(AMOUNT_MEDIAN_FEN[category]), AMOUNT_SIGMA)
    return max(AMOUNT_FEN_MIN, min(AMOUNT_FEN_MAX, int(raw / 10) * 10))


# -- the rulebook --------------------------------------------------------------------------------

PARTNER_RULES_PER_FILE = 190  # the loader allows 200 rules per campaign file


def _limit(per: str, period: str, *, uses_max: int | None = None, fen_max: int | None = None) -> dict[str, Any]:
    limit: dict[str, Any] = {"per": per, "period": period}
    if uses_max is not None:
        limit["uses_max"] = uses_max
    if fen_max is not None:
        limit["fen_max"] = fen_max
    return limit


# The fixed set of place-wide campaigns (city, district, category and member-group
# subsidies): 14 campaigns, 16 rules, whatever --rules says. At most four of them are
# indexed for any (category, district), so a swipe looks at those plus its
# merchant's own agreements however large the rulebook grows. $year is the
# current year in Asia/Shanghai, $next_year the one after.
PLACE_CAMPAIGNS: dict[str, str] = {
    "city-dining": """
campaign:
  id: city-dining-$year
  name: City-wide dining subsidy
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 5000000000
  limits: [{per: card, period: month, fen_max: 5000}]
  rules:
    - id: dining-10pct
      when: {categories: [dining], amount_fen_min: 2000}
      benefit: {subsidy: {percent: 10, fen_max: 2000}}
      limits: [{per: card, period: day, uses_max: 2}]
""",
    "city-shopping": """
campaign:
  id: city-shopping-$year
  name: City-wide shopping subsidy
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 3000000000
  limits: [{per: card, period: month, fen_max: 3000}]
  rules:
    - id: shopping-5pct
      when: {categories: [shopping], amount_fen_min: 5000}
      benefit: {subsidy: {percent: 5, fen_max: 1500}}
      limits: [{per: card, period: week, uses_max: 3}]
""",
    "bank-transit": """
campaign:
  id: bank-transit-$year
  name: Partner bank transport and travel
  funders: [{funder: partner_bank, share_percent: 60}, {funder: city_federation, share_percent: 40}]
  budget_fen: 2000000000
  limits: [{per: card, period: month, fen_max: 8000}, {per: merchant, period: month, fen_max: 2000000}]
  rules:
    - id: transport-8pct
      when: {categories: [transport]}
      benefit: {subsidy: {percent: 8, fen_max: 800}}
      limits: [{per: card, period: day, uses_max: 4}]
    - id: travel-12pct-weekdays
      when: {categories: [travel], weekdays: [mon, tue, wed, thu, fri]}
      benefit: {subsidy: {percent: 12, fen_max: 3000}}
      limits: [{per: card, period: month, uses_max: 2}]
""",
    "wujin-weekend": """
campaign:
  id: wujin-weekend-$year
  name: Wujin weekend
  funders: [{funder: wujin_federation, share_percent: 100}]
  budget_fen: 500000000
  rules:
    - id: weekend-15pct
      when: {districts: [wujin], categories: [dining, entertainment, shopping], weekdays: [sat, sun]}
      benefit: {subsidy: {percent: 15, fen_max: 3000}}
      limits: [{per: card, period: day, uses_max: 1}, {per: merchant, period: month, fen_max: 3000000}]
""",
    "jintan-tourism": """
campaign:
  id: jintan-tourism-$year
  name: Jintan Maoshan tourism
  funders: [{funder: jintan_federation, share_percent: 100}]
  budget_fen: 300000000
  rules:
    - id: lodging-travel-20pct
      when: {districts: [jintan], categories: [lodging, travel], amount_fen_min: 10000}
      benefit: {subsidy: {percent: 20, fen_max: 5000}}
      limits: [{per: card, period: year, uses_max: 6}]
""",
    "liyang-lake": """
campaign:
  id: liyang-lake-$year
  name: Liyang Tianmu Lake
  funders: [{funder: liyang_federation, share_percent: 100}]
  budget_fen: 300000000
  limits: [{per: card, period: month, fen_max: 10000}]
  rules:
    - id: lodging-15pct
      when: {districts: [liyang], categories: [lodging]}
      benefit: {subsidy: {percent: 15, fen_max: 6000}}
      limits: [{per: card, period: month, uses_max: 2}]
    - id: weekend-meal-8-yuan
      when: {districts: [liyang], categories: [dining], weekdays: [sat, sun], amount_fen_min: 5000}
      benefit: {subsidy: {fixed_fen: 800}}
      limits: [{per: card, period: day, uses_max: 1}]
""",
    "model-worker": """
campaign:
  id: model-worker-$year
  name: Model worker bonus
  funders: [{funder: city_federation, share_percent: 66.67}, {funder: industry_union_machinery, share_percent: 33.33}]
  budget_fen: 200000000
  rules:
    - id: ten-yuan-off
      priority: 200
      when: {member_groups: [model_worker], amount_fen_min: 3000}
      benefit: {subsidy: {fixed_fen: 1000}}
      limits: [{per: card, period: month, uses_max: 4}]
""",
    "hardship-grocery": """
campaign:
  id: hardship-grocery-$year
  name: Hardship groceries
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 500000000
  limits: [{per: card, period: month, fen_max: 20000}]
  rules:
    - id: grocery-20pct
      when: {member_groups: [hardship], categories: [shopping]}
      benefit: {subsidy: {percent: 20, fen_max: 4000}}
      limits: [{per: card, period: week, uses_max: 3}]
""",
    "xinbei-lunch": """
campaign:
  id: xinbei-lunch-$year
  name: Xinbei high-tech zone lunch
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 100000000
  rules:
    - id: weekday-lunch-10pct
      when: {districts: [xinbei], categories: [dining], weekdays: [mon, tue, wed, thu, fri], time_of_day: {from: "11:00", until: "14:00"}}
      benefit: {subsidy: {percent: 10, fen_max: 1000}}
      limits: [{per: card, period: day, uses_max: 1}]
""",
    "culture-weekend": """
campaign:
  id: culture-weekend-$year
  name: Tianning and Zhonglou culture weekends
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 100000000
  rules:
    - id: entertainment-10pct
      when: {districts: [tianning, zhonglou], categories: [entertainment], weekdays: [sat, sun]}
      benefit: {subsidy: {percent: 10, fen_max: 2000}}
      limits: [{per: card, period: month, uses_max: 4}]
""",
    "qishuyan-industrial": """
# A small budget on purpose: it runs out within a week of history, so swipes meet
# an exhausted budget (explained as campaign/budget/fen) as they do in real life.
campaign:
  id: qishuyan-industrial-$year
  name: Qishuyan rail-works union
  funders: [{funder: industry_union_machinery, share_percent: 100}]
  budget_fen: 5000000
  rules:
    - id: everything-5pct
      when: {districts: [qishuyan]}
      benefit: {subsidy: {percent: 5, fen_max: 1000}}
      limits: [{per: card, period: day, fen_max: 1000}]
""",
    "winter-lodging": """
campaign:
  id: winter-lodging-$year
  name: Winter stays
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 200000000
  rules:
    - id: december-to-february-10pct
      when: {categories: [lodging], dates: {from: $year-12-01, until: $next_year-02-28}}
      benefit: {subsidy: {percent: 10, fen_max: 5000}}
      limits: [{per: card, period: month, uses_max: 2}]
""",
    "night-transport": """
campaign:
  id: night-transport-$year
  name: Late-shift taxis
  funders: [{funder: city_federation, share_percent: 100}]
  budget_fen: 100000000
  rules:
    - id: after-22-three-yuan
      when: {categories: [transport], time_of_day: {from: "22:00", until: "24:00"}}
      benefit: {subsidy: {fixed_fen: 300}}
      limits: [{per: card, period: day, uses_max: 1}]
""",
    "bank-lodging": """
campaign:
  id: bank-lodging-$year
  name: Partner bank hotel nights
  funders: [{funder: partner_bank, share_percent: 100}]
  budget_fen: 300000000
  rules:
    - id: lodging-5pct
      when: {categories: [lodging], amount_fen_min: 15000}
      benefit: {subsidy: {percent: 5, fen_max: 3000}}
      limits: [{per: card, period: month, uses_max: 2}]
""",
}
PLACE_RULES = 16  # rules in PLACE_CAMPAIGNS


def place_campaign_files(year: int) -> dict[str, str]:
    """The place-wide campaign files for `year`: file name → YAML text, valid from last year to next year."""
    valid = f"  valid: {{from: {year - 1}-01-01, until: {year + 1}-12-31}}\n"
    files: dict[str, str] = {}
    for name, template in PLACE_CAMPAIGNS.items():
        body = Template(template.lstrip("\n")).substitute(year=year, next_year=year + 1)
        # The validity window goes right after the name, where a reader looks for it.
        head, _, rest = body.partition("  funders:")
        files[f"{name}-{year}.yaml"] = f"# Written by loadtests/world.py: a place-wide campaign.\n{head}{valid}  funders:{rest}"
    return files


def partner_rules(rule_count: int, merchants: Sequence[MerchantProfile], seed: int) -> list[dict[str, Any]]:
    """`rule_count` partner-agreement discounts, each naming one to five merchants (a chain's branches).

    Every agreement is exclusive: a merchant gives at most one discount per
    swipe. Restaurants sometimes add a weekday lunch special (priority 50,
    before the all-day discount), cinemas a matinee.
    """
    rng = random.Random(seed * 31 + 7)
    order = [merchant for merchant in merchants if merchant.status != "suspended"] or list(merchants)
    rng.shuffle(order)
    rules: list[dict[str, Any]] = []
    cursor = 0
    while len(rules) < rule_count:
        roll = rng.random()
        size = 1 if roll < 0.75 else 2 if roll < 0.90 else rng.randint(3, 5)
        named = [order[(cursor + offset) % len(order)] for offset in range(size)]
        cursor += size
        ids = sorted({merchant.merchant_id for merchant in named})
        first = named[0]
        number = len(rules)
        kind = rng.random()
        rule: dict[str, Any] = {"id": f"a{number:05d}", "exclusive": True, "when": {"merchant_ids": ids}}
        if kind < 0.60:
            percent = rng.choice([3, 5, 5, 8, 10])
            amount: dict[str, Any] = {"percent": percent}
            if rng.random() < 0.5:
                amount["fen_max"] = rng.choice([2_000, 3_000, 5_000])
            rule["benefit"] = {"discount": amount}
        elif kind < 0.80:
            rule["when"]["amount_fen_min"] = rng.choice([5_000, 10_000, 20_000])
            rule["benefit"] = {"discount": {"fixed_fen": rng.choice([500, 1_000, 2_000, 3_000])}}
            rule["limits"] = [_limit("card", "month", uses_max=4)]
        else:
            rule["benefit"] = {"discount": {"percent": rng.choice([5, 8]), "fen_max": 2_000}}
            rule["limits"] = [_limit("card", "day", uses_max=1), _limit("merchant", "month", fen_max=rng.choice([500_000, 1_000_000]))]
        rules.append(rule)
        if len(rules) < rule_count and first.category in ("dining", "entertainment") and rng.random() < 0.15:
            special: dict[str, Any] = {
                "id": f"a{len(rules):05d}",
                "priority": 50,
                "exclusive": True,
                "when": {"merchant_ids": ids, "weekdays": ["mon", "tue", "wed", "thu", "fri"]},
            }
            if first.category == "dining":
                special["when"]["time_of_day"] = {"from": "11:00", "until": "14:00"}
                special["benefit"] = {"discount": {"percent": rng.choice([8, 10, 12])}}
            else:
                special["when"]["time_of_day"] = {"from": "13:00", "until": "17:00"}
                special["benefit"] = {"discount": {"percent": 10, "fen_max": 2_000}}
            rules.append(special)
    return rules


class _NoAliasDumper(yaml.SafeDumper):
    """The loader refuses YAML aliases: never write one, even for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump_yaml(path: Path, header: str, document: dict[str, Any]) -> None:
    body = yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None, width=140, allow_unicode=True)
    path.write_text(header + body, encoding="utf-8")


def write_rulebook(rules_dir: Path, merchants: Sequence[MerchantProfile], rule_count: int, seed: int, year: int) -> dict[str, int]:
    """Write funders.yaml and campaigns/*.yaml holding `rule_count` rules; return counts by kind."""
    if rule_count < PLACE_RULES:
        raise SystemExit(f"--rules must be at least {PLACE_RULES} (the place-wide campaigns alone have that many)")
    campaigns_dir = rules_dir / "campaigns"
    if campaigns_dir.is_dir():
        shutil.rmtree(campaigns_dir)
    campaigns_dir.mkdir(parents=True)
    shutil.copyfile(ROOT / "rules" / "funders.yaml", rules_dir / "funders.yaml")
    for name, body in place_campaign_files(year).items():
        (campaigns_dir / name).write_text(body, encoding="utf-8")
    valid = {"from": date(year - 1, 1, 1), "until": date(year + 1, 12, 31)}
    agreements = partner_rules(rule_count - PLACE_RULES, merchants, seed)
    for batch, start in enumerate(range(0, len(agreements), PARTNER_RULES_PER_FILE)):
        campaign_id = f"partners-{year}-{batch:03d}"
        _dump_yaml(
            campaigns_dir / f"{campaign_id}.yaml",
            f"# Written by loadtests/world.py (seed {seed}): partner agreements; the merchant gives the discount.\n",
            {
                "campaign": {
                    "id": campaign_id,
                    "name": f"Partner merchant agreements, batch {batch}",
                    "valid": valid,
                    "rules": agreements[start : start + PARTNER_RULES_PER_FILE],
                }
            },
        )
    return {"place_rules": PLACE_RULES, "partner_rules": len(agreements), "place_campaigns": len(PLACE_CAMPAIGNS)}


def place_candidates_max(rulebook: Rulebook) -> int:
    """The most rules without merchant_ids that any (category, district) can look at."""
    return max(len(rulebook.candidates("no-such-merchant", category, district)) for category in CATEGORIES for district in DISTRICTS)


# -- writing rows --------------------------------------------------------------------------------

MEMBER_COLUMNS = ("member_id", "name", "unit_id", "union_id", "district", "groups", "in_service", "annual_review_year")
CARD_COLUMNS = ("card_id", "card_hash", "last4", "member_id", "status")
MERCHANT_COLUMNS = ("merchant_id", "name", "category", "district", "status")
TERMINAL_COLUMNS = ("terminal_id", "merchant_id", "secret", "status")
LEDGER_COLUMNS = (
    "entry_id",
    "kind",
    "authorisation_id",
    "terminal_id",
    "request_id",
    "merchant_id",
    "card_id",
    "card_last4",
    "amount_fen",
    "discount_fen",
    "subsidy_fen",
    "payable_fen",
    "occurred_at",
    "recorded_at",
    "rules_version",
    "benefits",
    "counter_deltas",
)
DECLINE_COLUMNS = (
    "decline_id",
    "terminal_id",
    "request_id",
    "merchant_id",
    "card_last4",
    "decline_code",
    "amount_fen",
    "occurred_at",
    "recorded_at",
    "rules_version",
)
COUNTER_COLUMNS = ("key", "value")
JSON_COLUMNS = frozenset({"benefits", "counter_deltas"})
SQLITE_BATCH_ROWS = 5_000


class RowWriter:
    """Bulk-load rows: COPY on PostgreSQL, executemany in batches on SQLite."""

    def __init__(self, database: Database, log: Callable[[str], None] = say) -> None:
        self.database = database
        self.log = log
        self.timings: list[tuple[str, int, float]] = []

    def truncate(self) -> None:
        # registry_version is the schema's own bookkeeping (migration 0003): its triggers raise it.
        tables = [table.name for table in reversed(Base.metadata.sorted_tables) if table.name != "registry_version"]
        with self.database.engine.begin() as connection:
            if self.database.is_postgresql:
                connection.execute(text(f"TRUNCATE {', '.join(tables)}"))
            else:
                for table in tables:
                    connection.execute(text(f"DELETE FROM {table}"))

    def write(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Write every row (a tuple in `columns` order; JSON columns as Python objects); return the count."""
        start = time.perf_counter()
        count = self._copy(table, columns, rows) if self.database.is_postgresql else self._insert(table, columns, rows)
        elapsed = time.perf_counter() - start
        self.timings.append((table, count, elapsed))
        self.log(f"  {table}: {count:,} rows in {elapsed:.1f} s")
        return count

    def _copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        json_positions = [index for index, column in enumerate(columns) if column in JSON_COLUMNS]
        count = 0
        raw = self.database.engine.raw_connection()
        try:
            connection = raw.driver_connection
            assert connection is not None
            with connection.cursor() as cursor:
                # A bulk load of a throw-away world: losing the last commit in a crash costs nothing.
                cursor.execute("SET LOCAL synchronous_commit = off")
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        if json_positions:
                            row = list(row)
                            for index in json_positions:
                                row[index] = orjson.dumps(row[index]).decode()
                        copy.write_row(row)
                        count += 1
            connection.commit()
        finally:
            raw.close()
        return count

    def _insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        target: Table = Base.metadata.tables[table]
        count = 0
        batch: list[dict[str, Any]] = []
        with self.database.engine.begin() as connection:
            for row in rows:
                batch.append(dict(zip(columns, row, strict=True)))
                if len(batch) >= SQLITE_BATCH_ROWS:
                    connection.execute(insert(target), batch)
                    count += len(batch)
                    batch = []
            if batch:
                connection.execute(insert(target), batch)
                count += len(batch)
        return count

    def forget_card_changes(self) -> None:
        with self.database.engine.begin() as connection:
            connection.execute(text("TRUNCATE card_changes" if self.database.is_postgresql else "DELETE FROM card_changes"))

    def analyse(self) -> None:
        start = time.perf_counter()
        with self.database.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
        self.log(f"  ANALYZE in {time.perf_counter() - start:.1f} s")


def member_rows(cards: int, seed: int, year: int) -> Iterator[tuple[Any, ...]]:
    for i in range(cards):
        kind = card_kind(i, seed)
        district = _pick(_DISTRICT_TABLE, _unit(seed, _STREAM_MEMBER_DISTRICT, i))
        groups = ",".join(sorted(member_groups(i, seed)))
        union = "union-city-level" if i % 50 == 0 else f"union-{district}"
        yield (
            member_id(i),
            f"Member {i}",
            f"unit-{district}-{i % 997:03d}",
            union,
            district,
            groups,
            kind != "not_in_service",
            year - 1 if kind == "review_due" else year,
        )


def card_rows(cards: int, seed: int, card_key: bytes) -> Iterator[tuple[Any, ...]]:
    for i in range(cards):
        number = card_number(i, seed)
        yield (card_id(i), card_hash(card_key, number), number[-4:], member_id(i), "lost" if card_kind(i, seed) == "lost" else "active")


# -- a week of history ---------------------------------------------------------------------------

# Swipes per hour of the day in Asia/Shanghai (relative): breakfast, lunch and dinner peaks.
HOURLY_WEIGHTS = (1, 0.5, 0.3, 0.2, 0.2, 0.5, 2, 5, 6, 5, 5, 9, 12, 8, 5, 5, 6, 9, 11, 9, 7, 5, 3, 2)
WEEKEND_FACTOR = 1.2
UNUSABLE_CARD_KEEP = 0.25  # an unusable card drawn for a swipe is kept this often (most such members stop swiping)
REVERSAL_SHARE = 0.015  # of approved swipes, voided at the till within minutes
REFUND_SHARE = 0.01  # of approved swipes, partly refunded within two days
SHANGHAI_OFFSET_S = 8 * 3600  # Asia/Shanghai has no daylight saving time


@dataclass
class HistoryStats:
    """What the history holds."""

    swipes: int = 0
    approved: int = 0
    declined: dict[str, int] = field(default_factory=dict)
    reversals: int = 0
    refunds: int = 0
    discount_fen: int = 0
    subsidy_fen: int = 0
    amount_fen: int = 0


def swipe_times(count: int, start_s: float, end_s: float, rng: random.Random) -> list[float]:
    """`count` sorted epoch seconds in [start_s, end_s), following the daily rhythm of a city."""
    weight_max = max(HOURLY_WEIGHTS) * WEEKEND_FACTOR
    times: list[float] = []
    span = end_s - start_s
    while len(times) < count:
        at = start_s + rng.random() * span
        local_s = at + SHANGHAI_OFFSET_S
        hour = int(local_s // 3600) % 24
        weekday = (int(local_s // 86400) + 3) % 7  # 1970-01-01 was a Thursday (3, Monday being 0)
        weight = HOURLY_WEIGHTS[hour] * (WEEKEND_FACTOR if weekday >= 5 else 1.0)
        if rng.random() * weight_max < weight:
            times.append(at)
    times.sort()
    return times


def _entry_id(prefix: str, at_s: float, rng: random.Random) -> str:
    """Like pos_engine.service.swipes.new_id: prefix, milliseconds in hex, 64 random bits."""
    return f"{prefix}_{int(at_s * 1000):011x}{rng.getrandbits(64):016x}"


def _adjustment(auth: tuple[Any, ...], kind: str, amount_back_fen: int, at_s: float, rng: random.Random) -> tuple[Any, ...]:
    """A reversal or refund of a not-yet-adjusted authorisation row, computed as the engine's `_adjust` does."""
    (entry_id, _, _, terminal, _, merchant, card, last4, amount, _, _, payable, _, _, version, benefits, _) = auth
    back = claw_back(amount, payable, benefits, 0, amount_back_fen)  # nothing was given back before
    at = datetime.fromtimestamp(at_s, UTC)
    return (
        _entry_id("rv" if kind == "reversal" else "rf", at_s, rng),
        kind,
        entry_id,
        terminal,
        f"{rng.getrandbits(128):032x}",
        merchant,
        card,
        last4,
        -amount_back_fen,
        -back.discount_fen,
        -back.subsidy_fen,
        -back.payable_fen,
        at,
        at,
        version,
        back.lines,
        back.counter_deltas,
    )


class History:
    """Replay swipes through the engine's evaluation against one in-memory counter dict."""

    def __init__(
        self,
        rulebook: Rulebook,
        merchants: Sequence[MerchantProfile],
        cards: int,
        seed: int,
        counters: dict[str, int],
    ) -> None:
        self.rulebook = rulebook
        self.serving = [merchant for merchant in merchants if merchant.status in ("active", "probation")]
        self.cards = cards
        self.seed = seed
        self.counters = counters
        self.card_scatter = Scatter(cards, seed)
        self.merchant_scatter = Scatter(len(self.serving), seed + 1)
        self.declines: list[tuple[Any, ...]] = []
        self.stats = HistoryStats()

    def _card(self, rng: random.Random) -> int:
        while True:
            i = self.card_scatter(skewed_rank(rng.random(), self.cards))
            if card_kind(i, self.seed) == "usable" or rng.random() < UNUSABLE_CARD_KEEP:
                return i

    def _swipe(self, merchant: MerchantProfile, i: int, rng: random.Random, at_s: float) -> tuple[Any, ...] | None:
        """One swipe: a ledger row if approved (a decline is kept in self.declines)."""
        stats = self.stats
        stats.swipes += 1
        amount = amount_fen(rng, merchant.category)
        number = card_number(i, self.seed)
        occurred_at = datetime.fromtimestamp(at_s, UTC)
        recorded_s = at_s + 0.02
        recorded_at = datetime.fromtimestamp(recorded_s, UTC)
        request_id = f"{rng.getrandbits(128):032x}"
        kind = card_kind(i, self.seed)
        decline_code: str | None = {
            "lost": "card_inactive",
            "not_in_service": "member_not_in_service",
            "review_due": "annual_review_due",
        }.get(kind)
        version = self.rulebook.version
        if decline_code is None:
            swipe = Swipe(
                amount, occurred_at, merchant.merchant_id, merchant.category, merchant.district, card_id(i), member_groups(i, self.seed)
            )
            plan = plan_swipe(self.rulebook, swipe)
            outcomes = execute_plan(plan, self.counters) if plan.steps else []
            decision = decide(plan, outcomes, version)
            if decision.status == "approved":
                lines = benefit_lines(plan, decision, self.rulebook)
                stats.approved += 1
                stats.amount_fen += amount
                stats.discount_fen += decision.discount_fen
                stats.subsidy_fen += decision.subsidy_fen
                return (
                    _entry_id("au", recorded_s, rng),
                    "authorisation",
                    None,  # the authorisation id is its own entry id: filled in by the caller
                    merchant.terminal_id,
                    request_id,
                    merchant.merchant_id,
                    card_id(i),
                    number[-4:],
                    amount,
                    decision.discount_fen,
                    decision.subsidy_fen,
                    decision.payable_fen,
                    occurred_at,
                    recorded_at,
                    version,
                    lines,
                    dict(decision.counter_deltas or {}),
                )
            decline_code = decision.decline_code
        assert decline_code is not None
        stats.declined[decline_code] = stats.declined.get(decline_code, 0) + 1
        self.declines.append(
            (
                _entry_id("au", recorded_s, rng),
                merchant.terminal_id,
                request_id,
                merchant.merchant_id,
                number[-4:],
                decline_code,
                amount,
                occurred_at,
                recorded_at,
                version,
            )
        )
        return None

    def rows(self, swipes: int, start_s: float, end_s: float) -> Iterator[tuple[Any, ...]]:
        """Ledger rows in time order: authorisations and, later, their reversals and refunds."""
        rng = random.Random(self.seed * 1_000_003 + 11)
        pending: list[tuple[float, int, str, int, tuple[Any, ...]]] = []  # (at, tie-break, kind, amount back, auth row)
        sequence = 0
        for at_s in swipe_times(swipes, start_s, end_s, rng):
            while pending and pending[0][0] <= at_s:
                yield self._apply_adjustment(heapq.heappop(pending), rng)
            merchant = self.serving[self.merchant_scatter(skewed_rank(rng.random(), len(self.serving)))]
            row = self._swipe(merchant, self._card(rng), rng, at_s)
            if row is None:
                continue
            row = (row[0], row[1], row[0], *row[3:])
            yield row
            roll = rng.random()
            if roll < REVERSAL_SHARE:
                when = at_s + rng.uniform(30, 1200)
                if when < end_s:
                    sequence += 1
                    heapq.heappush(pending, (when, sequence, "reversal", row[8], row))
            elif roll < REVERSAL_SHARE + REFUND_SHARE and row[8] >= 200:
                when = at_s + rng.uniform(3600, 2 * 86400)
                if when < end_s:
                    sequence += 1
                    heapq.heappush(pending, (when, sequence, "refund", rng.randint(1, row[8] // 2), row))
        while pending:
            yield self._apply_adjustment(heapq.heappop(pending), rng)

    def _apply_adjustment(self, item: tuple[float, int, str, int, tuple[Any, ...]], rng: random.Random) -> tuple[Any, ...]:
        at_s, _, kind, amount_back_fen, auth = item
        row = _adjustment(auth, kind, amount_back_fen, at_s, rng)
        for key, delta in row[16].items():
            self.counters[key] = self.counters.get(key, 0) + delta
        if kind == "reversal":
            self.stats.reversals += 1
        else:
            self.stats.refunds += 1
        return row


# -- the command ---------------------------------------------------------------------------------


def check_database_is_disposable(url: str, yes_wipe: bool) -> None:
    """Refuse to wipe a database whose name does not say it is for load tests, benchmarks or tests."""
    name = make_url(url).database or ""
    if is_sqlite(url):
        name = Path(name).name
    if yes_wipe or any(word in name.lower() for word in SAFE_DATABASE_WORDS):
        return
    raise SystemExit(
        f"refusing to wipe database {name!r}: its name contains none of {', '.join(SAFE_DATABASE_WORDS)}; "
        "pass --yes-wipe if it really is a throw-away database"
    )


@dataclass
class WorldResult:
    """What `build_world` made, for callers and tests."""

    world_json: Path
    rules_dir: Path
    rulebook_version: str
    history: HistoryStats
    counters: int
    timings: list[tuple[str, int, float]]
    seconds: float


def build_world(
    database_url: str,
    rules_out: Path,
    *,
    cards: int = 1_000_000,
    merchants: int = 10_000,
    rules: int = 5_000,
    history_days: int = 7,
    history_swipes: int = 700_000,
    seed: int = 2026,
    card_key: str = DEMO_CARD_KEY,
    redis_url: str | None = None,
    redis_namespace: str = "pos",
    now: datetime | None = None,
    yes_wipe: bool = False,
    log: Callable[[str], None] = say,
) -> WorldResult:
    """Wipe the database and load a whole world into it; write the rulebook and world.json."""
    check_database_is_disposable(database_url, yes_wipe)
    began = time.perf_counter()
    now = now or datetime.now(UTC)
    year = now.astimezone(SHANGHAI).year
    key = card_key.encode("utf-8")

    step = time.perf_counter()
    upgrade(database_url)
    database = Database(database_url)
    writer = RowWriter(database, log)
    writer.truncate()
    log(f"schema migrated and tables emptied in {time.perf_counter() - step:.1f} s")

    profiles = [merchant_profile(j, seed) for j in range(merchants)]
    writer.write(
        "merchants",
        MERCHANT_COLUMNS,
        (
            (p.merchant_id, f"{p.district.capitalize()} {CATEGORY_NOUNS[p.category]} {p.index}", p.category, p.district, p.status)
            for p in profiles
        ),
    )
    writer.write(
        "terminals", TERMINAL_COLUMNS, ((p.terminal_id, p.merchant_id, terminal_secret(p.terminal_id, seed), "active") for p in profiles)
    )
    writer.write("members", MEMBER_COLUMNS, member_rows(cards, seed, year))
    writer.write("cards", CARD_COLUMNS, card_rows(cards, seed, key))

    step = time.perf_counter()
    rules_out.mkdir(parents=True, exist_ok=True)
    counts = write_rulebook(rules_out, profiles, rules, seed, year)
    rulebook = load_rulebook(rules_out)
    log(
        f"  rulebook: {rulebook.rule_count:,} rules ({counts['partner_rules']:,} partner agreements, "
        f"{counts['place_rules']} place-wide rules in {counts['place_campaigns']} campaigns; at most "
        f"{place_candidates_max(rulebook)} place-wide rules per category and district) written and loaded in "
        f"{time.perf_counter() - step:.1f} s, version {rulebook.version}"
    )

    counters: dict[str, int] = {}
    history = History(rulebook, profiles, cards, seed, counters)
    end_s = now.timestamp()
    start_s = end_s - history_days * 86400
    writer.write("ledger_entries", LEDGER_COLUMNS, history.rows(history_swipes, start_s, end_s))
    writer.write("declines", DECLINE_COLUMNS, history.declines)
    nonzero = {counter_key: value for counter_key, value in counters.items() if value}
    writer.write("counters", COUNTER_COLUMNS, nonzero.items())
    if redis_url:
        from pos_engine.store.redis_counters import RedisCounterStore

        step = time.perf_counter()
        store = RedisCounterStore.from_url(redis_url, namespace=redis_namespace)
        store.reset()  # the ledger was emptied: claims and notes of an earlier world go too
        store.replace_all(nonzero)
        log(f"  redis: {len(nonzero):,} counters replaced in namespace {redis_namespace!r} in {time.perf_counter() - step:.1f} s")
    # The card_changes triggers logged every card just written; a new world has no reader to tell.
    writer.forget_card_changes()
    if database.is_postgresql:
        writer.analyse()
    database.dispose()

    stats = history.stats
    serving = [p for p in profiles if p.status == "active"]
    world = {
        "seed": seed,
        "generated_at": now.isoformat(),
        "database_url": make_url(database_url).render_as_string(hide_password=True),
        "rules_dir": str(rules_out.resolve()),
        "rules_version": rulebook.version,
        "card_key": card_key,
        "cards": {
            "count": cards,
            "number": "loadtests.world.card_number(i, seed); usable when loadtests.world.card_kind(i, seed) == 'usable'",
            "sample": {
                kind: [card_number(i, seed) for i in range(min(cards, 400)) if card_kind(i, seed) == kind][:5] for kind in CARD_KINDS
            },
        },
        "merchants": merchants,
        "terminals": [
            {
                "terminal_id": p.terminal_id,
                "secret": terminal_secret(p.terminal_id, seed),
                "merchant_id": p.merchant_id,
                "category": p.category,
                "district": p.district,
            }
            for p in serving
        ],
        "history": {
            "days": history_days,
            "swipes": stats.swipes,
            "approved": stats.approved,
            "declined": stats.declined,
            "reversals": stats.reversals,
            "refunds": stats.refunds,
            "amount_fen": stats.amount_fen,
            "discount_fen": stats.discount_fen,
            "subsidy_fen": stats.subsidy_fen,
        },
    }
    world_json = rules_out / "world.json"
    world_json.write_text(json.dumps(world, indent=1))
    seconds = time.perf_counter() - began
    log(
        f"history: {stats.swipes:,} swipes, {stats.approved:,} approved, declined {stats.declined}, "
        f"{stats.reversals:,} reversals, {stats.refunds:,} refunds; {len(nonzero):,} counters"
    )
    log(f"world ready in {seconds:.1f} s; load generator file {world_json}")
    return WorldResult(world_json, rules_out, rulebook.version, stats, len(nonzero), writer.timings, seconds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", required=True, help="postgresql://… (COPY) or sqlite:///… (small worlds); it is WIPED")
    parser.add_argument("--rules-out", required=True, type=Path, help="directory for the generated rulebook and world.json")
    parser.add_argument("--cards", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=5_000)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--history-swipes", type=int, default=700_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--card-key", default=DEMO_CARD_KEY, help="the POS_ENGINE_CARD_KEY the engine will run with")
    parser.add_argument("--redis-url", help="also replace the Redis counters (else run `pos-engine counters rebuild` with Redis set)")
    parser.add_argument("--redis-namespace", default="pos", help="POS_ENGINE_REDIS_NAMESPACE of the engine (with --redis-url)")
    parser.add_argument("--yes-wipe", action="store_true", help="wipe a database whose name does not contain load, bench or test")
    args = parser.parse_args(argv)
    if args.cards < 1 or args.merchants < 1 or args.history_days < 1 or args.history_swipes < 0:
        parser.error("--cards, --merchants and --history-days must be positive, --history-swipes not negative")
    try:
        result = build_world(
            args.database_url,
            args.rules_out,
            cards=args.cards,
            merchants=args.merchants,
            rules=args.rules,
            history_days=args.history_days,
            history_swipes=args.history_swipes,
            seed=args.seed,
            card_key=args.card_key,
            redis_url=args.redis_url,
            redis_namespace=args.redis_namespace,
            yes_wipe=args.yes_wipe,
        )
    except (sqlalchemy.exc.OperationalError, redis.exceptions.ConnectionError) as error:
        # A database that does not exist (or a server that does not answer) is the commonest slip.
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        sys.exit(f"world: cannot reach the database or Redis: {reason}\n(create the database first, as loadtests/README.md shows)")
    if not args.redis_url:
        print(
            "counters: the SQL `counters` table agrees with the ledger. To serve with Redis, first run\n"
            f"  POS_ENGINE_DATABASE_URL={args.database_url} POS_ENGINE_RULES_DIR={result.rules_dir} "
            "POS_ENGINE_REDIS_URL=redis://… POS_ENGINE_REDIS_NAMESPACE=… pos-engine counters rebuild"
        )


if __name__ == "__main__":
    main()
