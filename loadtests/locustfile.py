"""A realistic terminal workload for pos-engine: signed swipes from tills, over raw HTTP and through the SDK.

1. A world (one of):
     large:  python -m loadtests.world --database-url postgresql://postgres@127.0.0.1:5432/pos_engine_load \\
                 --rules-out var/load/rules                      # 1M cards, 10k merchants, 5k rules, a week
             export LOADTEST_WORLD=var/load/rules/world.json     # card numbers and secrets recomputed from its seed
     demo:   POS_ENGINE_DATABASE_URL=… pos-engine demo --reset --out var/demo.json
             export LOADTEST_CREDENTIALS=var/demo.json
2. The engine, on the same database and rulebook (and card key: world.json has it):
     POS_ENGINE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/pos_engine_load \\
     POS_ENGINE_RULES_DIR=var/load/rules POS_ENGINE_CARD_KEY=<world.json card_key> \\
     POS_ENGINE_REDIS_URL=redis://127.0.0.1:6379/1 POS_ENGINE_REDIS_NAMESPACE=load \\
         sh -c 'pos-engine counters rebuild && gunicorn -c gunicorn.conf.py -b 127.0.0.1:8080 pos_engine.wsgi:app'
3. Run headless for 60 s, writing CSV stats (from the repository root):
     locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s \\
         --host http://127.0.0.1:8080 --csv var/locust --only-summary
     python loadtests/locustfile.py var/locust_stats.csv      # a short summary of the CSV

Users (both run unless classes are named on the command line):
    TerminalUser      weight 3   FastHttpUser: builds and signs every request itself
                                 (METHOD\\nPATH\\nTIMESTAMP\\nSHA256_HEX(BODY), hex HMAC-SHA256 with the
                                 terminal's secret; PATH with its query string), as a till's firmware would.
    SdkTerminalUser   weight 1   merchant_sdk.PosClient (max_retries=0, so every error is seen); each call is
                                 reported to locust with request type "SDK".
Each user is one terminal: terminals are handed out round-robin to users as they start (in
world.json order, or the demo file's), so 50 users are 50 tills of 50 different merchants.

What a till does, one action per task, chosen by weight:
    80  authorise        POST /v1/authorisations; 3 % of them with ?explain=true ("authorise ?explain")
     8  get              GET /v1/authorisations/{id} of one of this till's approvals
     5  refund           POST /v1/authorisations/{id}/refunds: 1 fen to half of what is left unrefunded
     4  reversal         POST /v1/authorisations/{id}/reversal of an approval not yet reversed
     3  timeout void     POST /v1/reversals for a request id that was never sent (what the SDK does after a
                         timeout); the answer must be outcome "nothing_to_reverse"
    A till with no approval to work on swipes instead. Each till remembers its last 200 approvals, what
    it refunded and what it reversed, so it never asks for something the engine must refuse.
Think time: uniform between LOADTEST_WAIT_MIN_S and LOADTEST_WAIT_MAX_S (defaults 0.5 and 1.5 s) after
each action: a busy till compressed in time (a real till swipes every minute or two), so one user is
about one request a second and `-u 50` offers about 50 requests a second.

Cards: drawn with a strong skew, rank = floor(n * u**2) for uniform u (loadtests.world.skewed_rank):
the busiest 1 % of members make about 10 % of the swipes, so some cards meet their daily and monthly
caps (declined `no_benefit`, or approved with less) while most swipe now and then. From a world
file only usable cards are drawn (their ranks scattered over the million), from a demo file the
"usable" list. Amounts: lognormal around the merchant category's median (dining 60 yuan, shopping
120, transport 30, entertainment 80, lodging 300, travel 400), rounded to 10 fen, 10 to 1,000 yuan.
Request ids are fresh uuid4 hex for every request.

Success and failure: a 200 whose body is consistent (amounts add up, the amount is ours, the
reversal/refund gives back what was asked) is a success; a decline (status "declined") is a success.
Anything else fails: a non-200 (a 409 or 422 too, since the tills never ask for what must be
refused), a transport error, an SDK exception, or an inconsistent body. At the end the outcome
tallies (approved, declined by code, void outcomes) are logged.

Reading the CSV (`--csv var/locust`): var/locust_stats.csv has one row per request type and name plus
"Aggregated": Request Count, Failure Count, Median/Average/Min/Max Response Time (ms), Requests/s,
and percentiles 50 % … 100 % (ms); var/locust_failures.csv lists each distinct failure with its
count; var/locust_exceptions.csv the exceptions; var/locust_stats_history.csv the time series.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from locust import FastHttpUser, User, between, events, task
from locust.env import Environment

# Locust puts this file's directory on sys.path, not the repository root that `loadtests` lives in.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.world import Scatter, amount_fen, card_kind, card_number, skewed_rank, terminal_secret
from merchant_sdk import DECLINE_CODES, PosClient
from pos_engine.api.signing import sign

log = logging.getLogger("loadtests")
# One INFO line per request from httpx (under the SDK) would drown locust's own output.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("merchant_sdk").setLevel(logging.WARNING)
T = TypeVar("T")

WAIT_MIN_S = float(os.environ.get("LOADTEST_WAIT_MIN_S", "0.5"))
WAIT_MAX_S = float(os.environ.get("LOADTEST_WAIT_MAX_S", "1.5"))
SDK_TIMEOUT_S = 30.0  # generous: a slow answer is measured, not turned into a void
RECEIPTS_MAX = 200  # approvals each till remembers for gets, refunds and reversals
EXPLAIN_SHARE = 0.03  # of authorisations
ACTIONS = ("authorise", "get", "refund", "reversal", "timeout_void")
ACTION_WEIGHTS = (80, 8, 5, 4, 3)

# What the engine answered, over the whole run (this process): logged when the test stops.
OUTCOMES: Counter[str] = Counter()


# -- the world ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TerminalCredentials:
    """A till: its id and secret, and the merchant it sells for."""

    terminal_id: str
    secret: str
    merchant_id: str
    category: str
    district: str


class CardPool(Protocol):
    def draw(self, rng: random.Random) -> str: ...


class WorldCards:
    """The usable cards of a generated world, recomputed from its seed; busy members drawn often."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed
        self.scatter = Scatter(count, seed)

    def draw(self, rng: random.Random) -> str:
        while True:  # ~90 % of cards are usable: this loops about 1.1 times
            i = self.scatter(skewed_rank(rng.random(), self.count))
            if card_kind(i, self.seed) == "usable":
                return card_number(i, self.seed)


class ListCards:
    """A list of card numbers (the demo's usable cards); the first ones drawn most often."""

    def __init__(self, numbers: list[str]) -> None:
        assert numbers, "no usable cards in the credentials file"
        self.numbers = numbers

    def draw(self, rng: random.Random) -> str:
        return self.numbers[skewed_rank(rng.random(), len(self.numbers))]


@dataclass(frozen=True)
class Workload:
    """Terminals to act as and cards to swipe."""

    source: str
    terminals: list[TerminalCredentials]
    cards: CardPool


def _terminals(items: list[dict[str, Any]], seed: int | None) -> list[TerminalCredentials]:
    terminals: list[TerminalCredentials] = []
    for item in items:
        secret = item.get("secret")
        if secret is None:
            assert seed is not None, "a terminal without a secret needs the world's seed"
            secret = terminal_secret(item["terminal_id"], seed)
        terminals.append(TerminalCredentials(item["terminal_id"], secret, item["merchant_id"], item["category"], item["district"]))
    if not terminals:
        raise RuntimeError("the world has no active terminals")
    return terminals


def load_workload(environ: dict[str, str] | None = None) -> Workload:
    """Read LOADTEST_WORLD (a world.json) or LOADTEST_CREDENTIALS (a demo credentials file)."""
    env = os.environ if environ is None else environ
    world_path, credentials_path = env.get("LOADTEST_WORLD"), env.get("LOADTEST_CREDENTIALS")
    if world_path:
        world = json.loads(Path(world_path).read_text())
        seed = int(world["seed"])
        return Workload(world_path, _terminals(world["terminals"], seed), WorldCards(int(world["cards"]["count"]), seed))
    if credentials_path:
        credentials = json.loads(Path(credentials_path).read_text())
        return Workload(credentials_path, _terminals(credentials["terminals"], None), ListCards(list(credentials["cards"]["usable"])))
    raise RuntimeError("set LOADTEST_WORLD=…/world.json (python -m loadtests.world) or LOADTEST_CREDENTIALS=demo.json (pos-engine demo)")


_workload: Workload | None = None
_terminal_turns = itertools.count()


def workload() -> Workload:
    global _workload
    if _workload is None:
        _workload = load_workload()
    return _workload


def next_terminal() -> TerminalCredentials:
    """The next terminal, round-robin over the users of this process (both classes share the turn)."""
    terminals = workload().terminals
    return terminals[next(_terminal_turns) % len(terminals)]


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    loaded = workload()  # fail at once, not in every user, if the world is missing
    log.info("load test: %d terminals from %s", len(loaded.terminals), loaded.source)


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    if OUTCOMES:
        log.info("outcomes: %s", ", ".join(f"{name} {count}" for name, count in sorted(OUTCOMES.items())))


# Registered by call, not as decorators: locust's event hooks are untyped.
events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]


# -- one till's behaviour, whatever it talks through ---------------------------------------------


@dataclass
class Receipt:
    """An approval this till holds: what it may still refund or reverse."""

    authorisation_id: str
    amount_fen: int
    refunded_fen: int = 0
    reversed: bool = False

    @property
    def open(self) -> bool:
        return not self.reversed and self.refunded_fen < self.amount_fen


@dataclass
class Till:
    """The state and choices of one terminal: what to do next, on which approval, for how much."""

    terminal: TerminalCredentials
    cards: CardPool
    rng: random.Random = field(default_factory=random.Random)
    receipts: list[Receipt] = field(default_factory=list)

    def next_action(self) -> str:
        action = self.rng.choices(ACTIONS, ACTION_WEIGHTS)[0]
        if action in ("refund", "reversal") and not any(receipt.open for receipt in self.receipts):
            return "authorise"
        if action == "get" and not self.receipts:
            return "authorise"
        return action

    def swipe(self) -> tuple[str, int, bool]:
        """A card, an amount and whether to ask for explanations."""
        return self.cards.draw(self.rng), amount_fen(self.rng, self.terminal.category), self.rng.random() < EXPLAIN_SHARE

    def remember(self, authorisation_id: str, amount: int) -> None:
        self.receipts.append(Receipt(authorisation_id, amount))
        if len(self.receipts) > RECEIPTS_MAX:
            del self.receipts[0]

    def any_receipt(self) -> Receipt:
        return self.rng.choice(self.receipts)

    def open_receipt(self) -> Receipt:
        return self.rng.choice([receipt for receipt in self.receipts if receipt.open])

    def refund_amount(self, receipt: Receipt) -> int:
        left = receipt.amount_fen - receipt.refunded_fen
        return self.rng.randint(1, max(1, left // 2))


def request_id() -> str:
    return uuid.uuid4().hex


def authorisation_problem(body: Any, amount: int) -> str | None:
    """What is wrong with an authorisation answer, or None."""
    if not isinstance(body, dict):
        return "the answer is not a JSON object"
    if body.get("status") not in ("approved", "declined"):
        return f"status {body.get('status')!r}"
    if body.get("amount_fen") != amount:
        return f"amount_fen {body.get('amount_fen')} is not the {amount} sent"
    parts = [body.get("discount_fen"), body.get("subsidy_fen"), body.get("payable_fen")]
    if not all(isinstance(part, int) and part >= 0 for part in parts) or sum(parts) != amount:  # type: ignore[arg-type]
        return f"discount + subsidy + payable = {parts} does not add up to {amount}"
    if body["status"] == "declined" and body.get("decline_code") not in DECLINE_CODES:
        return f"decline_code {body.get('decline_code')!r}"
    if body["status"] == "approved" and not body.get("benefits"):
        return "approved without benefits"
    return None


def adjustment_problem(body: Any, kind: str, authorisation_id: str, amount: int | None) -> str | None:
    """What is wrong with a reversal or refund answer, or None."""
    if not isinstance(body, dict):
        return "the answer is not a JSON object"
    if body.get("kind") != kind or body.get("authorisation_id") != authorisation_id:
        return f"got a {body.get('kind')!r} of {body.get('authorisation_id')!r}"
    if amount is not None and body.get("amount_fen") != amount:
        return f"gave back {body.get('amount_fen')} fen, not {amount}"
    parts = [body.get("discount_fen"), body.get("subsidy_fen"), body.get("payable_fen")]
    if sum(parts) != body.get("amount_fen"):  # type: ignore[arg-type]
        return f"discount + subsidy + payable = {parts} does not add up to {body.get('amount_fen')}"
    return None


def details_problem(found_id: Any, reversed_: Any, refunded_fen: Any, receipt: Receipt) -> str | None:
    """What is wrong with a GET answer for `receipt`, or None: the refunds and the reversal must be this till's."""
    if found_id != receipt.authorisation_id or reversed_ != receipt.reversed or refunded_fen != receipt.refunded_fen:
        return f"got {found_id!r} reversed={reversed_!r} refunded_fen={refunded_fen!r}, expected {receipt}"
    return None


# -- raw HTTP ---------------------------------------------------------------------------------------


class TerminalUser(FastHttpUser):
    """A till that signs its own HTTP requests."""

    weight = 3
    wait_time = between(WAIT_MIN_S, WAIT_MAX_S)

    def on_start(self) -> None:
        self.till = Till(next_terminal(), workload().cards)

    @task
    def act(self) -> None:
        getattr(self, self.till.next_action())()

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        terminal = self.till.terminal
        return {
            "X-Terminal-Id": terminal.terminal_id,
            "X-Timestamp": timestamp,
            "X-Signature": sign(terminal.secret, method, path, timestamp, body),
            "Content-Type": "application/json",
        }

    def _post(self, path: str, payload: dict[str, Any], name: str) -> Any:
        raw = json.dumps(payload, separators=(",", ":")).encode()
        # The exact bytes signed are the bytes sent; locust documents bytes here though its annotation says str.
        headers = self._headers("POST", path, raw)
        return self.client.post(path, data=raw, headers=headers, name=name, catch_response=True)  # type: ignore[arg-type]

    def _answer(self, response: Any) -> Any:
        """The JSON body of a 200, or None after marking the response failed."""
        if response.status_code != 200:
            code = ""
            try:
                code = response.json().get("code", "")
            except Exception:
                code = (response.text or "")[:120]
            response.failure(f"HTTP {response.status_code} {code}".strip())
            return None
        try:
            return response.json()
        except Exception:
            response.failure("a 200 whose body is not JSON")
            return None

    def authorise(self) -> None:
        till = self.till
        card, amount, explain = till.swipe()
        path = "/v1/authorisations?explain=true" if explain else "/v1/authorisations"
        payload = {
            "request_id": request_id(),
            "card_number": card,
            "merchant_id": till.terminal.merchant_id,
            "amount_fen": amount,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        with self._post(path, payload, "authorise ?explain" if explain else "authorise") as response:
            body = self._answer(response)
            if body is None:
                return
            problem = authorisation_problem(body, amount)
            if problem is None and explain and not isinstance(body.get("explanations"), list):
                problem = "no explanations with ?explain=true"
            if problem is not None:
                response.failure(problem)
                return
            OUTCOMES["approved" if body["status"] == "approved" else f"declined {body['decline_code']}"] += 1
            if body["status"] == "approved":
                till.remember(body["id"], amount)

    def get(self) -> None:
        receipt = self.till.any_receipt()
        path = f"/v1/authorisations/{receipt.authorisation_id}"
        headers = self._headers("GET", path, b"")
        with self.client.get(path, headers=headers, name="get", catch_response=True) as response:
            body = self._answer(response)
            if body is None:
                return
            problem = details_problem(body.get("id"), body.get("reversed"), body.get("refunded_fen"), receipt)
            if problem is not None:
                response.failure(problem)

    def refund(self) -> None:
        receipt = self.till.open_receipt()
        amount = self.till.refund_amount(receipt)
        path = f"/v1/authorisations/{receipt.authorisation_id}/refunds"
        with self._post(path, {"request_id": request_id(), "amount_fen": amount}, "refund") as response:
            body = self._answer(response)
            if body is None:
                return
            problem = adjustment_problem(body, "refund", receipt.authorisation_id, amount)
            if problem is not None:
                response.failure(problem)
                return
            receipt.refunded_fen += amount
            OUTCOMES["refunded"] += 1

    def reversal(self) -> None:
        receipt = self.till.open_receipt()
        path = f"/v1/authorisations/{receipt.authorisation_id}/reversal"
        with self._post(path, {"request_id": request_id()}, "reversal") as response:
            body = self._answer(response)
            if body is None:
                return
            problem = adjustment_problem(body, "reversal", receipt.authorisation_id, receipt.amount_fen - receipt.refunded_fen)
            if problem is not None:
                response.failure(problem)
                return
            receipt.reversed = True
            OUTCOMES["reversed"] += 1

    def timeout_void(self) -> None:
        original = request_id()  # a swipe whose request never reached the engine
        with self._post("/v1/reversals", {"request_id": request_id(), "original_request_id": original}, "timeout void") as response:
            body = self._answer(response)
            if body is None:
                return
            if body.get("outcome") != "nothing_to_reverse" or body.get("original_request_id") != original:
                response.failure(f"outcome {body.get('outcome')!r} for a request never sent")
                return
            OUTCOMES["void nothing_to_reverse"] += 1


# -- through the SDK --------------------------------------------------------------------------------


class InconsistentAnswer(Exception):
    """The engine answered 200, but with something a till cannot accept."""


class SdkTerminalUser(User):
    """A till running merchant software on merchant_sdk.PosClient."""

    weight = 1
    wait_time = between(WAIT_MIN_S, WAIT_MAX_S)

    def on_start(self) -> None:
        self.till = Till(next_terminal(), workload().cards)
        assert self.host, "give --host"
        terminal = self.till.terminal
        # No retries: a load test must see every error, not have the SDK hide it.
        self.client = PosClient(self.host, terminal.terminal_id, terminal.secret, timeout=SDK_TIMEOUT_S, max_retries=0)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def act(self) -> None:
        getattr(self, self.till.next_action())()

    def _timed(self, name: str, call: Callable[[], T], check: Callable[[T], str | None]) -> T | None:
        """Run one SDK call and report it to locust: its time, and any exception or inconsistency."""
        started = time.perf_counter()
        result: T | None = None
        error: BaseException | None = None
        try:
            result = call()
            problem = check(result)
            if problem is not None:
                error = InconsistentAnswer(problem)
        except Exception as exc:  # every SDK error is a failed request here
            error = exc
        self.environment.events.request.fire(
            request_type="SDK",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            response=None,
            context={},
            exception=error,
        )
        return None if error is not None else result

    def authorise(self) -> None:
        till = self.till
        card, amount, explain = till.swipe()

        def check(result: Any) -> str | None:
            body = {
                "status": result.status,
                "decline_code": result.decline_code,
                "amount_fen": result.amount_fen,
                "discount_fen": result.discount_fen,
                "subsidy_fen": result.subsidy_fen,
                "payable_fen": result.payable_fen,
                "benefits": list(result.benefits),
            }
            problem = authorisation_problem(body, amount)
            if problem is None and explain and result.explanations is None:
                return "no explanations with explain=True"
            return problem

        result = self._timed(
            "authorise ?explain" if explain else "authorise",
            lambda: self.client.authorise(card, till.terminal.merchant_id, amount, request_id=request_id(), explain=explain),
            check,
        )
        if result is None:
            return
        OUTCOMES["approved" if result.status == "approved" else f"declined {result.decline_code}"] += 1
        if result.status == "approved":
            till.remember(result.id, amount)

    def get(self) -> None:
        receipt = self.till.any_receipt()

        def check(details: Any) -> str | None:
            return details_problem(details.id, details.reversed, details.refunded_fen, receipt)

        self._timed("get", lambda: self.client.get(receipt.authorisation_id), check)

    def refund(self) -> None:
        receipt = self.till.open_receipt()
        amount = self.till.refund_amount(receipt)

        def check(adjustment: Any) -> str | None:
            return adjustment_problem(_adjustment_body(adjustment), "refund", receipt.authorisation_id, amount)

        if self._timed("refund", lambda: self.client.refund(receipt.authorisation_id, amount, request_id=request_id()), check):
            receipt.refunded_fen += amount
            OUTCOMES["refunded"] += 1

    def reversal(self) -> None:
        receipt = self.till.open_receipt()
        left = receipt.amount_fen - receipt.refunded_fen

        def check(adjustment: Any) -> str | None:
            return adjustment_problem(_adjustment_body(adjustment), "reversal", receipt.authorisation_id, left)

        if self._timed("reversal", lambda: self.client.reverse(receipt.authorisation_id, request_id=request_id()), check):
            receipt.reversed = True
            OUTCOMES["reversed"] += 1

    def timeout_void(self) -> None:
        original = request_id()

        def check(result: Any) -> str | None:
            if result.outcome != "nothing_to_reverse" or result.original_request_id != original:
                return f"outcome {result.outcome!r} for a request never sent"
            return None

        if self._timed("timeout void", lambda: self.client.reverse_request(original, request_id=request_id()), check):
            OUTCOMES["void nothing_to_reverse"] += 1


def _adjustment_body(adjustment: Any) -> dict[str, Any]:
    return {
        "kind": adjustment.kind,
        "authorisation_id": adjustment.authorisation_id,
        "amount_fen": adjustment.amount_fen,
        "discount_fen": adjustment.discount_fen,
        "subsidy_fen": adjustment.subsidy_fen,
        "payable_fen": adjustment.payable_fen,
    }


# -- reading the CSV --------------------------------------------------------------------------------


def summarise_stats(stats_csv: Path) -> str:
    """A short table from locust's <prefix>_stats.csv (and the failures next to it)."""
    lines = [f"{'type':<5} {'name':<20} {'requests':>9} {'failures':>8} {'median':>7} {'p95':>6} {'p99':>6} {'max':>7} {'rps':>7}"]
    with stats_csv.open(newline="") as stream:
        for row in csv.DictReader(stream):
            lines.append(
                f"{row['Type'][:5]:<5} {row['Name'][:20]:<20} {row['Request Count']:>9} {row['Failure Count']:>8} "
                f"{row['50%']:>7} {row['95%']:>6} {row['99%']:>6} {float(row['Max Response Time']):>7.0f} "
                f"{float(row['Requests/s']):>7.1f}"
            )
    lines.append("(response times in ms)")
    failures_csv = stats_csv.with_name(stats_csv.name.replace("_stats.csv", "_failures.csv"))
    if failures_csv.exists():
        with failures_csv.open(newline="") as stream:
            for row in csv.DictReader(stream):
                lines.append(f"failure: {row['Method']} {row['Name']}: {row['Error']} x{row['Occurrences']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise_stats(Path(sys.argv[1] if len(sys.argv) > 1 else "var/locust_stats.csv")))
