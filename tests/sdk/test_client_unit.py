"""The merchant SDK against a fake engine behind `httpx.MockTransport`: no sockets, no sleeping."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import importlib.resources
import importlib.util
import io
import json
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from merchant_sdk._retry import backoff_delay_s, parse_retry_after_s, should_retry

import merchant_sdk
from merchant_sdk import (
    DEFAULT_MAX_RETRIES,
    MAX_RETRY_AFTER_S,
    MAX_RETRY_DELAY_S,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncPosClient,
    AuthenticationError,
    Authorisation,
    AuthorisationDetails,
    AuthorisationUnknown,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    PosClient,
    PosError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
    ValidationError,
    compute_signature,
    fen_to_yuan,
    format_yuan,
)

SDK_ROOT = Path(__file__).resolve().parents[2] / "merchant_sdk"
BASE_URL = "https://pos.test"
TERMINAL_ID = "t-wujin-0001"
SECRET = "s3cret-終端"  # not ASCII, so the UTF-8 key encoding is tested too
MERCHANT_ID = "m-wujin-dining-001"
USABLE_CARD = "6200000000000001"
LOST_CARD = "6200000000000002"
CHINA = timezone(timedelta(hours=8))


# A fake engine ------------------------------------------------------------------------


def expected_signature(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    """Compute the signature as the contract states it, independently of the SDK."""
    message = f"{method}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


class FakeClock:
    """Time that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now_s = 1_795_000_000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def problem(
    status: int,
    code: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"type": f"https://errors.test/{code}", "title": code.replace("_", " "), "status": status, "code": code}
    if errors is not None:
        body["errors"] = errors
    if request_id is not None:  # the engine echoes the X-Request-Id trace header here
        body["request_id"] = request_id
    return httpx.Response(
        status, headers={"Content-Type": "application/problem+json", **(headers or {})}, content=json.dumps(body).encode()
    )


class FakeEngine:
    """Check every request as the engine does and answer it as the contract says.

    Faults are queued per method and path with `fail()`; each matching request
    takes the next one. `"timeout"`/`"drop"` happen after the request was
    processed (the answer is lost on the way back), `"timeout_unsent"` and
    `"connect_error"` before it ever reaches the engine, `"processed_503"`
    processes it and answers 503; an `httpx.Response` is answered as is.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.secrets = {TERMINAL_ID: SECRET}
        self.seen: list[httpx.Request] = []
        self.processed: list[httpx.Request] = []
        self.faults: dict[tuple[str, str], list[Any]] = {}
        self.answers: dict[tuple[str, str], tuple[bytes, httpx.Response]] = {}
        self.authorisations: dict[str, dict[str, Any]] = {}
        self.by_request_id: dict[str, str] = {}
        self.voided_request_ids: set[str] = set()
        self.counter = 0

    def fail(self, method: str, path: str, *faults: Any) -> None:
        self.faults.setdefault((method, path), []).extend(faults)

    def bodies(self, method: str, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.seen if r.method == method and r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        queue = self.faults.get((request.method, request.url.path), [])
        fault = queue.pop(0) if queue else None
        if isinstance(fault, httpx.Response):
            return fault
        if fault == "connect_error":
            raise httpx.ConnectError("connection refused", request=request)
        if fault == "timeout_unsent":
            raise httpx.ReadTimeout("timed out", request=request)
        response = self.handle(request)
        if fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if fault == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if fault == "processed_503":
            return problem(503, "unavailable")
        assert fault is None, fault
        return response

    # The engine's side ------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        refusal = self.check_signature(request)
        if refusal is not None:
            return refusal
        self.processed.append(request)
        path = request.url.path
        parts = path.strip("/").split("/")
        if request.method == "GET" and len(parts) == 3:
            return self.get(parts[2])
        if request.headers.get("content-type") != "application/json":
            return problem(400, "malformed_json")
        body = json.loads(request.content)
        key = (request.headers["x-terminal-id"], body["request_id"])
        fingerprint = request.method.encode() + path.encode() + request.content
        if key in self.answers:
            stored_fingerprint, stored = self.answers[key]
            if stored_fingerprint != fingerprint:
                return problem(409, "idempotency_conflict")
            return httpx.Response(stored.status_code, headers=stored.headers, content=stored.content)
        if path == "/v1/authorisations":
            response = self.authorise(body, explain=request.url.params.get("explain") == "true")
        elif path == "/v1/reversals":
            response = self.reverse_request(body)
        elif len(parts) == 4 and parts[3] == "reversal":
            response = self.reverse(parts[2], body["request_id"])
        elif len(parts) == 4 and parts[3] == "refunds":
            response = self.refund(parts[2], body)
        else:
            return problem(404, "not_found")
        if response.status_code == 200:
            self.answers[key] = (fingerprint, response)
        return response

    def check_signature(self, request: httpx.Request) -> httpx.Response | None:
        terminal_id = request.headers.get("x-terminal-id")
        timestamp = request.headers.get("x-timestamp")
        signature = request.headers.get("x-signature")
        if not (terminal_id and timestamp and signature):
            return problem(401, "signature_missing")
        if terminal_id not in self.secrets:
            return problem(401, "terminal_unknown")
        if abs(int(timestamp) - self.clock.time()) > 300:
            return problem(401, "timestamp_out_of_window")
        path = request.url.raw_path.decode("ascii")
        if not hmac.compare_digest(
            signature, expected_signature(self.secrets[terminal_id], request.method, path, timestamp, request.content)
        ):
            return problem(401, "signature_invalid")
        return None

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter:04d}"

    def recorded_at(self) -> str:
        return datetime.fromtimestamp(self.clock.time(), CHINA).isoformat()

    def authorise(self, body: dict[str, Any], *, explain: bool) -> httpx.Response:
        amount_fen = body["amount_fen"]
        if not isinstance(amount_fen, int) or amount_fen <= 0:
            return problem(422, "validation_failed", errors=[{"field": "amount_fen", "message": "must be a positive integer"}])
        card = body["card_number"]
        decline_code = None
        if body["request_id"] in self.voided_request_ids:
            decline_code = "voided_by_terminal"
        elif card == LOST_CARD:
            decline_code = "card_inactive"
        elif card != USABLE_CARD:
            decline_code = "card_unknown"
        if decline_code == "voided_by_terminal":
            # As the engine does: the void stored its own decline before the request came, 0 fen, and
            # answers it whatever the request's body (pos_engine.service.swipes.reverse_request).
            amount_fen = 0
        discount_fen = subsidy_fen = 0
        benefits = []
        if decline_code is None:
            discount_fen = amount_fen // 10
            subsidy_fen = min(500, (amount_fen - discount_fen) // 20)
            benefits = [
                {"campaign_id": "c-dining", "rule_id": "r-discount", "kind": "discount", "amount_fen": discount_fen},
                {"campaign_id": "c-union", "rule_id": "r-subsidy", "kind": "subsidy", "amount_fen": subsidy_fen},
            ]
        record: dict[str, Any] = {
            "id": self.next_id("au"),
            "request_id": body["request_id"],
            "status": "declined" if decline_code else "approved",
            "decline_code": decline_code,
            "terminal_id": TERMINAL_ID,
            "merchant_id": body["merchant_id"],
            "card_last4": card[-4:],
            "amount_fen": amount_fen,
            "discount_fen": discount_fen,
            "subsidy_fen": subsidy_fen,
            "payable_fen": amount_fen - discount_fen - subsidy_fen,
            "benefits": benefits,
            "rules_version": "2026.11.3",
            "occurred_at": body["occurred_at"],
            "recorded_at": self.recorded_at(),
        }
        self.authorisations[record["id"]] = {**record, "reversed": False, "refunded_fen": 0, "adjustments": []}
        self.by_request_id[body["request_id"]] = record["id"]
        if explain:
            record["explanations"] = [
                {
                    "campaign_id": "c-dining",
                    "rule_id": "r-discount",
                    "outcome": "applied",
                    "reason": None,
                    "wanted_fen": discount_fen,
                    "given_fen": discount_fen,
                },
                {
                    "campaign_id": "c-union",
                    "rule_id": "r-subsidy",
                    "outcome": "partly_applied",
                    "reason": "cap_per_card_daily",
                    "wanted_fen": 900,
                    "given_fen": subsidy_fen,
                },
            ]
        return httpx.Response(200, json=record)

    def adjustment(self, authorisation: dict[str, Any], kind: str, request_id: str, amount_fen: int) -> dict[str, Any]:
        discount_fen = authorisation["discount_fen"] * amount_fen // authorisation["amount_fen"]
        subsidy_fen = authorisation["subsidy_fen"] * amount_fen // authorisation["amount_fen"]
        adjustment = {
            "id": self.next_id("rv" if kind == "reversal" else "rf"),
            "kind": kind,
            "authorisation_id": authorisation["id"],
            "request_id": request_id,
            "amount_fen": amount_fen,
            "discount_fen": discount_fen,
            "subsidy_fen": subsidy_fen,
            "payable_fen": amount_fen - discount_fen - subsidy_fen,
            "benefits": [],
            "recorded_at": self.recorded_at(),
        }
        authorisation["adjustments"].append(adjustment)
        return adjustment

    def reverse(self, authorisation_id: str, request_id: str) -> httpx.Response:
        authorisation = self.authorisations.get(authorisation_id)
        if authorisation is None:
            return problem(404, "not_found")
        if authorisation["reversed"]:
            return problem(409, "already_reversed")
        authorisation["reversed"] = True
        remaining_fen = authorisation["amount_fen"] - authorisation["refunded_fen"]
        return httpx.Response(200, json=self.adjustment(authorisation, "reversal", request_id, remaining_fen))

    def refund(self, authorisation_id: str, body: dict[str, Any]) -> httpx.Response:
        authorisation = self.authorisations.get(authorisation_id)
        if authorisation is None:
            return problem(404, "not_found")
        if authorisation["status"] == "declined":
            return problem(409, "authorisation_declined")
        if authorisation["reversed"]:
            return problem(409, "authorisation_reversed")
        if body["amount_fen"] > authorisation["amount_fen"] - authorisation["refunded_fen"]:
            return problem(422, "refund_exceeds_remaining")
        authorisation["refunded_fen"] += body["amount_fen"]
        return httpx.Response(200, json=self.adjustment(authorisation, "refund", body["request_id"], body["amount_fen"]))

    def reverse_request(self, body: dict[str, Any]) -> httpx.Response:
        original = body["original_request_id"]
        answer: dict[str, Any] = {
            "original_request_id": original,
            "outcome": "nothing_to_reverse",
            "authorisation_id": None,
            "reversal": None,
        }
        authorisation_id = self.by_request_id.get(original)
        if authorisation_id is None:
            self.voided_request_ids.add(original)
        else:
            authorisation = self.authorisations[authorisation_id]
            answer["authorisation_id"] = authorisation_id
            if authorisation["reversed"]:
                answer["outcome"] = "already_reversed"
            elif authorisation["status"] == "approved":
                answer["outcome"] = "reversed"
                answer["reversal"] = self.reverse(authorisation_id, body["request_id"]).json()
        return httpx.Response(200, json=answer)

    def get(self, authorisation_id: str) -> httpx.Response:
        authorisation = self.authorisations.get(authorisation_id)
        if authorisation is None:
            return problem(404, "not_found")
        return httpx.Response(200, json=authorisation)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> FakeEngine:
    return FakeEngine(clock)


@pytest.fixture
def make_client(engine: FakeEngine, clock: FakeClock):
    clients: list[PosClient] = []

    def make(handler: Callable[[httpx.Request], httpx.Response] | None = None, **options: Any) -> PosClient:
        client = PosClient(BASE_URL, TERMINAL_ID, SECRET, transport=httpx.MockTransport(handler or engine), **options)
        client._clock = clock.time
        client._sleep = clock.sleep
        client._rand = lambda: 0.5
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., PosClient]) -> PosClient:
    return make_client()


def swipe(client: PosClient, card: str = USABLE_CARD, **options: Any) -> Authorisation:
    return client.authorise(card, MERCHANT_ID, 10000, **options)


# Signing ---------------------------------------------------------------------------------


def test_the_signature_matches_a_fixed_vector_computed_with_hmac_and_hashlib():
    body = b'{"request_id":"r-1","amount_fen":10000}'
    by_hand = expected_signature(SECRET, "POST", "/v1/authorisations?explain=true", "1764043200", body)

    signature = compute_signature(SECRET, "POST", "/v1/authorisations?explain=true", "1764043200", body)

    assert signature == by_hand
    assert signature == "4fb9d024dd067ffb9967c74fe038c1a5d866b682dbedc19ba1d73e8f07cd744a"


def test_a_get_is_signed_over_the_hash_of_an_empty_body():
    signature = compute_signature("secret", "GET", "/v1/authorisations/au_1", "1764043200", b"")

    assert signature == "d3587cfdcf0d7238680ee02f66beea368c241e33e5b2067594cbc85116f3ffac"


def test_every_request_carries_the_terminal_timestamp_and_a_signature_of_the_bytes_sent(client, engine, clock):
    authorisation = swipe(client)
    client.get(authorisation.id)

    post, get = engine.seen
    for request in (post, get):
        assert request.headers["x-terminal-id"] == TERMINAL_ID
        assert request.headers["x-timestamp"] == str(int(clock.time()))
        assert request.headers["x-signature"] == expected_signature(
            SECRET, request.method, request.url.raw_path.decode(), request.headers["x-timestamp"], request.content
        )
    assert post.headers["content-type"] == "application/json"
    assert get.content == b""


def test_the_signed_path_includes_the_query_string_when_explaining(client, engine):
    authorisation = swipe(client, explain=True)

    request = engine.seen[0]
    assert request.url.raw_path == b"/v1/authorisations?explain=true"
    assert request.headers["x-signature"] == expected_signature(
        SECRET, "POST", "/v1/authorisations?explain=true", request.headers["x-timestamp"], request.content
    )
    assert authorisation.explanations is not None
    assert [e.outcome for e in authorisation.explanations] == ["applied", "partly_applied"]
    assert authorisation.explanations[1].reason == "cap_per_card_daily"


def test_a_base_url_with_a_path_prefix_is_signed_with_the_full_path_sent(engine, clock):
    seen: list[httpx.Request] = []

    def behind_prefix(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        signed_path = request.url.raw_path.decode()
        assert request.headers["x-signature"] == expected_signature(SECRET, "GET", signed_path, request.headers["x-timestamp"], b"")
        return problem(404, "not_found")

    with (
        PosClient(f"{BASE_URL}/engine/", TERMINAL_ID, SECRET, transport=httpx.MockTransport(behind_prefix)) as client,
        pytest.raises(NotFoundError),
    ):
        client.get("au_0001")

    assert seen[0].url.raw_path == b"/engine/v1/authorisations/au_0001"


def test_a_wrong_secret_is_refused_and_not_retried(engine, clock):
    client = PosClient(BASE_URL, TERMINAL_ID, "not-the-secret", transport=httpx.MockTransport(engine))
    client._clock = clock.time

    with client, pytest.raises(AuthenticationError) as raised:
        swipe(client)

    assert raised.value.code == "signature_invalid"
    assert raised.value.status == 401
    assert len(engine.seen) == 1


# Results ---------------------------------------------------------------------------------


def test_an_approved_swipe_returns_the_four_amounts_and_its_benefits(client):
    authorisation = swipe(client)

    assert authorisation.approved
    assert authorisation.status == "approved"
    assert authorisation.decline_code is None
    assert (authorisation.amount_fen, authorisation.discount_fen, authorisation.subsidy_fen, authorisation.payable_fen) == (
        10000,
        1000,
        450,
        8550,
    )
    assert authorisation.charge_fen == 8550
    assert [(b.kind, b.amount_fen) for b in authorisation.benefits] == [("discount", 1000), ("subsidy", 450)]
    assert authorisation.rules_version == "2026.11.3"
    assert authorisation.card_last4 == "0001"
    assert authorisation.recorded_at.tzinfo is not None
    assert authorisation.explanations is None


def test_a_decline_is_returned_not_raised(client):
    authorisation = swipe(client, LOST_CARD)

    assert authorisation.declined
    assert authorisation.decline_code == "card_inactive"
    assert authorisation.charge_fen == 10000
    assert authorisation.benefits == ()


def test_results_are_immutable(client):
    authorisation = swipe(client)

    with pytest.raises(dataclasses.FrozenInstanceError):
        authorisation.payable_fen = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        authorisation.benefits[0].amount_fen = 0  # type: ignore[misc]
    assert isinstance(authorisation.benefits, tuple)


def test_reverse_refund_and_get_return_typed_results(client):
    authorisation = swipe(client)

    refund = client.refund(authorisation.id, 4000)
    reversal = client.reverse(authorisation.id)
    details = client.get(authorisation.id)

    assert (refund.kind, refund.amount_fen, refund.discount_fen, refund.subsidy_fen, refund.payable_fen) == ("refund", 4000, 400, 180, 3420)
    assert (reversal.kind, reversal.amount_fen) == ("reversal", 6000)
    assert isinstance(details, AuthorisationDetails)
    assert details.reversed is True
    assert details.refunded_fen == 4000
    assert [a.id for a in details.adjustments] == [refund.id, reversal.id]


def test_reverse_request_reports_what_voiding_a_request_did(client):
    authorisation = swipe(client, request_id="till-42-0001")

    first = client.reverse_request("till-42-0001")
    second = client.reverse_request("till-42-0001")
    nothing = client.reverse_request("till-42-never-sent")

    assert (first.outcome, first.authorisation_id) == ("reversed", authorisation.id)
    assert first.reversal is not None
    assert first.reversal.amount_fen == 10000
    assert (second.outcome, second.reversal) == ("already_reversed", None)
    assert (nothing.outcome, nothing.authorisation_id) == ("nothing_to_reverse", None)


def test_an_answer_that_breaks_the_money_invariant_is_refused(make_client, engine):
    def broken(request: httpx.Request) -> httpx.Response:
        answer = engine(request)
        data = answer.json()
        data["payable_fen"] += 1
        return httpx.Response(200, json=data)

    client = make_client(broken)

    with pytest.raises(UnexpectedResponseError):
        client.get(swipe(make_client()).id)


# Retries ---------------------------------------------------------------------------------


def test_a_request_id_is_made_once_and_reused_on_every_retry_with_a_fresh_signature(client, engine):
    wait = {"Retry-After": "2"}  # so that the timestamps of the attempts differ
    engine.fail("POST", "/v1/authorisations", problem(503, "unavailable", headers=wait), problem(502, "bad_gateway", headers=wait))

    authorisation = swipe(client)

    attempts = [r for r in engine.seen if r.url.path == "/v1/authorisations"]
    assert len(attempts) == 3
    assert len({r.content for r in attempts}) == 1
    assert {json.loads(r.content)["request_id"] for r in attempts} == {authorisation.request_id}
    assert len({r.headers["x-timestamp"] for r in attempts}) == 3
    assert len({r.headers["x-signature"] for r in attempts}) == 3


def test_a_server_error_then_success_is_retried(client, engine, clock):
    engine.fail("GET", "/v1/authorisations/au_0001", problem(500, "internal_error"))
    authorisation = swipe(client)

    details = client.get(authorisation.id)

    assert details.id == authorisation.id
    assert len(clock.sleeps) == 1


def test_a_connection_refused_is_retried_and_needs_no_reversal(client, engine):
    engine.fail("POST", "/v1/authorisations", "connect_error")

    authorisation = swipe(client)

    assert authorisation.approved
    assert engine.bodies("POST", "/v1/reversals") == []


@pytest.mark.parametrize(
    ("response", "error_class"),
    [
        (problem(401, "timestamp_out_of_window"), AuthenticationError),
        (problem(403, "merchant_mismatch"), PermissionDeniedError),
        (problem(422, "validation_failed", errors=[{"field": "amount_fen", "message": "too large"}]), ValidationError),
        (problem(409, "idempotency_conflict"), ConflictError),
        (problem(400, "malformed_json"), BadRequestError),
        (problem(415, "unsupported_media_type"), BadRequestError),
    ],
)
def test_a_refusal_that_cannot_succeed_is_not_retried_and_sends_no_reversal(client, engine, clock, response, error_class):
    engine.fail("POST", "/v1/authorisations", response)

    with pytest.raises(error_class) as raised:
        swipe(client, request_id="till-42-0002")

    assert raised.value.status == response.status_code
    assert raised.value.code == response.json()["code"]
    assert raised.value.request_id == "till-42-0002"
    assert len(engine.seen) == 1
    assert clock.sleeps == []
    assert client.pending_reversals == ()


def test_a_validation_error_names_the_bad_fields(client):
    with pytest.raises(ValidationError) as raised:
        client.authorise(USABLE_CARD, MERCHANT_ID, -5)

    assert raised.value.code == "validation_failed"
    assert [(e.field, e.message) for e in raised.value.errors] == [("amount_fen", "must be a positive integer")]
    assert "amount_fen" in str(raised.value)


def test_the_same_request_id_with_a_different_body_is_an_idempotency_conflict(client):
    swipe(client, request_id="till-42-0003")

    with pytest.raises(ConflictError) as raised:
        client.authorise(USABLE_CARD, MERCHANT_ID, 999, request_id="till-42-0003")

    assert raised.value.code == "idempotency_conflict"


def test_a_request_still_in_progress_is_retried(client, engine):
    engine.fail("POST", "/v1/authorisations", problem(409, "request_in_progress"))

    authorisation = swipe(client)

    assert authorisation.approved
    assert len(engine.bodies("POST", "/v1/authorisations")) == 2


def test_a_rate_limit_is_retried_no_sooner_than_retry_after(client, engine, clock):
    engine.fail("GET", "/v1/authorisations/au_0001", problem(429, "rate_limited", headers={"Retry-After": "3"}))
    authorisation = swipe(client)

    client.get(authorisation.id)

    assert clock.sleeps == [3.0]


def test_a_retry_after_given_as_an_http_date_is_honoured(client, engine, clock):
    later = datetime.fromtimestamp(clock.time() + 7, timezone.utc)
    engine.fail(
        "GET", "/v1/authorisations/au_0001", problem(503, "unavailable", headers={"Retry-After": format_datetime(later, usegmt=True)})
    )
    authorisation = swipe(client)

    client.get(authorisation.id)

    assert clock.sleeps == [7.0]


def test_a_retry_after_beyond_the_limit_is_raised_at_once(client, engine, clock):
    engine.fail("GET", "/v1/authorisations/au_0001", problem(429, "rate_limited", headers={"Retry-After": str(int(MAX_RETRY_AFTER_S) + 1)}))
    authorisation = swipe(client)

    with pytest.raises(RateLimitError) as raised:
        client.get(authorisation.id)

    assert raised.value.retry_after_s == MAX_RETRY_AFTER_S + 1
    assert clock.sleeps == []


def test_retries_stop_after_max_retries(make_client, engine, clock):
    client = make_client(max_retries=1)
    authorisation = swipe(client)
    engine.fail("GET", f"/v1/authorisations/{authorisation.id}", *[problem(503, "unavailable")] * 5)

    with pytest.raises(ServerError) as raised:
        client.get(authorisation.id)

    assert raised.value.code == "unavailable"
    assert len([r for r in engine.seen if r.method == "GET"]) == 2


def test_the_default_is_three_attempts(client, engine):
    engine.fail("GET", "/v1/authorisations/au_9999", *[problem(503, "unavailable")] * 5)

    with pytest.raises(ServerError):
        client.get("au_9999")

    assert len(engine.seen) == 1 + DEFAULT_MAX_RETRIES


def test_backoff_grows_exponentially_has_jitter_and_is_capped():
    no_jitter = [backoff_delay_s(n, rand=lambda: 0.0) for n in range(8)]
    most_jitter = [backoff_delay_s(n, rand=lambda: 1.0) for n in range(8)]

    assert no_jitter[:3] == [0.25, 0.5, 1.0]
    assert max(no_jitter) == MAX_RETRY_DELAY_S
    assert all(low == high * 0.75 for low, high in zip(most_jitter, no_jitter))
    assert backoff_delay_s(0, retry_after_s=2.0, rand=lambda: 0.0) == 2.0


def test_the_retry_predicate_sorts_failures():
    def status(code: int, problem_code: str | None = None, retry_after_s: float | None = None) -> APIStatusError:
        return APIStatusError("x", status=code, code=problem_code, request_id=None, retry_after_s=retry_after_s)

    retried = [
        APIConnectionError("x"),
        APITimeoutError("x"),
        status(408),
        status(409, "request_in_progress"),
        status(429),
        status(500),
        status(503),
    ]
    not_retried = [
        status(400),
        status(401),
        status(403),
        status(404),
        status(409, "idempotency_conflict"),
        status(409, "already_reversed"),
        status(422),
        status(501),
        status(429, retry_after_s=MAX_RETRY_AFTER_S + 1),
        UnexpectedResponseError("x"),
    ]
    assert all(should_retry(error) for error in retried)
    assert not any(should_retry(error) for error in not_retried)


def test_retry_after_is_read_as_seconds_or_a_date_and_garbage_is_ignored():
    now = datetime(2026, 11, 25, 4, 0, tzinfo=timezone.utc)

    assert parse_retry_after_s(httpx.Headers({"Retry-After": "2"}), now=now) == 2.0
    assert parse_retry_after_s(httpx.Headers({"Retry-After": "Wed, 25 Nov 2026 04:00:05 GMT"}), now=now) == 5.0
    assert parse_retry_after_s(httpx.Headers({"Retry-After": "soon"}), now=now) is None
    assert parse_retry_after_s(httpx.Headers({}), now=now) is None


# Timeout safety ------------------------------------------------------------------------


def test_a_timeout_on_every_attempt_raises_authorisation_unknown_and_reverses_the_request(client, engine):
    engine.fail("POST", "/v1/authorisations", *["timeout"] * 3)

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client, request_id="till-42-0004")

    error = raised.value
    assert error.request_id == "till-42-0004"
    assert isinstance(error.__cause__, APITimeoutError)
    assert "charge the full price" in str(error)
    assert [b["original_request_id"] for b in engine.bodies("POST", "/v1/reversals")] == ["till-42-0004"]
    assert error.reversal is not None
    assert error.reversal.outcome == "reversed"
    assert error.reversal_pending is False
    assert engine.authorisations[engine.by_request_id["till-42-0004"]]["reversed"] is True
    assert client.pending_reversals == ()


def test_a_voided_request_id_is_never_authorised_again(make_client, engine):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    with pytest.raises(AuthorisationUnknown):
        swipe(client, request_id="till-42-0012")
    client.reverse_request("till-42-0013")
    sent = len(engine.seen)

    for voided in ("till-42-0012", "till-42-0013"):
        with pytest.raises(ValueError, match="new request id"):
            swipe(client, request_id=voided)

    assert len(engine.seen) == sent
    assert swipe(client).approved


def test_a_connection_dropped_after_sending_is_treated_like_a_timeout(make_client, engine):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "drop")

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client)

    assert type(raised.value.__cause__) is APIConnectionError
    assert raised.value.reversal is not None
    assert raised.value.reversal.outcome == "reversed"


def test_a_timeout_before_the_engine_saw_the_request_voids_it_against_a_late_arrival(make_client, engine):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout_unsent")

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client, request_id="till-42-0005")
    late = swipe(make_client(), request_id="till-42-0005")  # the original, arriving late

    assert raised.value.reversal is not None
    assert raised.value.reversal.outcome == "nothing_to_reverse"
    assert (late.status, late.decline_code) == ("declined", "voided_by_terminal")
    # The engine's stored answer is the void's, 0 fen; a new client (a restarted till) must still charge the full price.
    assert (late.amount_fen, late.payable_fen, late.charge_fen) == (10000, 10000, 10000)


def test_an_error_keeps_the_call_s_request_id_whatever_trace_id_a_proxy_added(client, engine):
    engine.fail("POST", "/v1/authorisations/au_0001/refunds", *[problem(503, "unavailable", request_id="envoy-7f3a")] * 3)
    swipe(client)

    with pytest.raises(ServerError) as raised:
        client.refund("au_0001", 100, request_id="till-42-refund-1")

    assert raised.value.request_id == "till-42-refund-1"  # what to repeat the refund with
    assert "[trace envoy-7f3a]" in str(raised.value)


def test_a_reversal_answered_unreadably_stays_queued_until_the_engine_acknowledges_it(make_client, engine):
    def proxy_page_for_reversals(request: httpx.Request) -> httpx.Response:
        answer = engine(request)
        if request.url.path == "/v1/reversals" and len(engine.bodies("POST", "/v1/reversals")) == 1:
            return httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>gateway</html>")
        return answer

    client = make_client(proxy_page_for_reversals, max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client, request_id="till-42-0020")

    assert raised.value.reversal_pending is True
    assert client.pending_reversals == ("till-42-0020",)
    assert client.flush_pending_reversals() == ()  # sent again, and this time acknowledged
    assert engine.authorisations[engine.by_request_id["till-42-0020"]]["reversed"] is True


def test_an_async_authorisation_cancelled_in_flight_queues_its_reversal(engine, clock):
    async def answered_too_late(request: httpx.Request) -> httpx.Response:
        answer = engine(request)
        if request.url.path == "/v1/authorisations":
            await asyncio.Event().wait()  # processed, and the answer never comes back
        return answer

    async def scenario() -> tuple[str, ...]:
        async with AsyncPosClient(BASE_URL, TERMINAL_ID, SECRET, transport=httpx.MockTransport(answered_too_late)) as client:
            client._clock = clock.time
            client._sleep = clock.async_sleep
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.authorise(USABLE_CARD, MERCHANT_ID, 10000, request_id="till-42-0021"), 0.05)
            pending = client.pending_reversals
            await client.flush_pending_reversals()
            assert client.pending_reversals == ()
            return pending

    assert asyncio.run(scenario()) == ("till-42-0021",)
    assert engine.authorisations[engine.by_request_id["till-42-0021"]]["reversed"] is True


def test_a_server_error_on_every_attempt_after_processing_raises_authorisation_unknown(client, engine):
    engine.fail("POST", "/v1/authorisations", *["processed_503"] * 3)

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client)

    assert (raised.value.status, raised.value.code) == (503, "unavailable")
    assert raised.value.reversal is not None
    assert raised.value.reversal.outcome == "reversed"


def test_an_answer_after_a_timeout_on_retry_needs_no_reversal(client, engine):
    engine.fail("POST", "/v1/authorisations", "timeout")

    authorisation = swipe(client)

    assert authorisation.approved
    assert len(engine.authorisations) == 1
    assert engine.bodies("POST", "/v1/reversals") == []


def test_an_unreadable_answer_to_authorise_is_treated_as_unknown(make_client, engine):
    def truncating(request: httpx.Request) -> httpx.Response:
        answer = engine(request)
        if request.url.path == "/v1/authorisations":
            return httpx.Response(200, content=answer.content[:20])
        return answer

    client = make_client(truncating)

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client)

    assert isinstance(raised.value.__cause__, UnexpectedResponseError)
    assert len(engine.bodies("POST", "/v1/authorisations")) == 1
    assert raised.value.reversal is not None
    assert raised.value.reversal.outcome == "reversed"


def test_a_reversal_that_fails_is_sent_again_on_the_next_call_until_acknowledged(client, engine):
    engine.fail("POST", "/v1/authorisations", *["timeout"] * 3)
    engine.fail("POST", "/v1/reversals", "connect_error", problem(503, "unavailable"))

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client, request_id="till-42-0006")
    assert raised.value.reversal is None
    assert raised.value.reversal_pending is True
    assert "queued" in str(raised.value)
    assert client.pending_reversals == ("till-42-0006",)

    with pytest.raises(NotFoundError):
        client.get("au_9999")  # the queued reversal goes first and fails again (503)
    assert client.pending_reversals == ("till-42-0006",)

    client.get(engine.by_request_id["till-42-0006"])  # now it is acknowledged

    assert client.pending_reversals == ()
    reversal_bodies = engine.bodies("POST", "/v1/reversals")
    assert len(reversal_bodies) == 3
    assert len({json.dumps(b, sort_keys=True) for b in reversal_bodies}) == 1, "the same reversal request id on every attempt"
    paths = [r.url.path for r in engine.seen if r.url.path != "/v1/authorisations"]
    assert paths == ["/v1/reversals", "/v1/reversals", "/v1/authorisations/au_9999", "/v1/reversals", "/v1/authorisations/au_0001"]
    assert engine.authorisations["au_0001"]["reversed"] is True


@pytest.mark.parametrize(
    "call",
    [
        lambda client: swipe(client),
        lambda client: client.get("au_0001"),
        lambda client: client.refund("au_0001", 100),
        lambda client: client.reverse("au_0001"),
        lambda client: client.reverse_request("till-42-other"),
    ],
    ids=["authorise", "get", "refund", "reverse", "reverse_request"],
)
def test_every_call_sends_the_queued_reversals_first(make_client, engine, call):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    engine.fail("POST", "/v1/reversals", "connect_error")
    with pytest.raises(AuthorisationUnknown):
        swipe(client, request_id="till-42-queued")
    before = len(engine.seen)

    with contextlib.suppress(PosError):
        call(client)

    first = engine.seen[before]
    assert (first.url.path, json.loads(first.content)["original_request_id"]) == ("/v1/reversals", "till-42-queued")
    assert client.pending_reversals == ()


def test_a_queued_reversal_is_sent_on_close(make_client, engine):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    engine.fail("POST", "/v1/reversals", "connect_error")
    with pytest.raises(AuthorisationUnknown):
        swipe(client)
    assert len(client.pending_reversals) == 1

    client.close()

    assert client.pending_reversals == ()
    assert engine.authorisations["au_0001"]["reversed"] is True


def test_reverse_request_for_a_queued_reversal_reuses_its_request_id(make_client, engine):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    engine.fail("POST", "/v1/reversals", "connect_error", "connect_error")
    with pytest.raises(AuthorisationUnknown):
        swipe(client, request_id="till-42-0007")

    result = client.reverse_request("till-42-0007")

    assert result.outcome == "reversed"
    assert client.pending_reversals == ()
    assert len({b["request_id"] for b in engine.bodies("POST", "/v1/reversals")}) == 1


def test_flush_pending_reversals_reports_what_is_left(make_client, engine):
    client = make_client(max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    engine.fail("POST", "/v1/reversals", "connect_error", "connect_error")
    with pytest.raises(AuthorisationUnknown):
        swipe(client, request_id="till-42-0008")

    assert client.flush_pending_reversals() == ("till-42-0008",)
    assert client.flush_pending_reversals() == ()


# Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (408, APIStatusError),
        (409, ConflictError),
        (413, BadRequestError),
        (422, ValidationError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_each_status_maps_to_one_exception_class_carrying_status_code_and_request_id(make_client, status, error_class):
    client = make_client(lambda request: problem(status, f"code_{status}"), max_retries=0)

    with pytest.raises(error_class) as raised:
        client.refund("au_0001", 100, request_id="till-42-0009")

    assert type(raised.value) is error_class
    assert isinstance(raised.value, PosError)
    assert (raised.value.status, raised.value.code, raised.value.request_id) == (status, f"code_{status}", "till-42-0009")


def test_an_error_page_that_is_not_a_problem_document_still_raises_by_status(make_client):
    client = make_client(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"), max_retries=0)

    with pytest.raises(ServerError) as raised:
        client.get("au_0001")

    assert (raised.value.status, raised.value.code) == (502, None)


@pytest.mark.parametrize("errors", [5, "amount_fen", {"field": "amount_fen"}, [1, None, "x"]])
def test_a_problem_whose_errors_are_not_a_list_of_fields_still_raises_the_status_s_error(make_client, errors):
    answer = {"type": "about:blank", "title": "validation failed", "status": 422, "code": "validation_failed", "errors": errors}
    client = make_client(lambda request: httpx.Response(422, json=answer), max_retries=0)

    with pytest.raises(ValidationError) as raised:
        client.refund("au_0001", 100, request_id="till-42-0010")

    assert (raised.value.status, raised.value.code, raised.value.errors) == (422, "validation_failed", ())


def test_connection_errors_carry_the_request_id_and_no_status(make_client):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = make_client(refuse)

    with pytest.raises(APIConnectionError) as raised:
        client.reverse("au_0001", request_id="till-42-0010")

    assert (raised.value.status, raised.value.code, raised.value.request_id) == (None, None, "till-42-0010")


def test_an_authorise_that_never_reached_the_engine_raises_a_connection_error_without_a_reversal(make_client, engine):
    client = make_client(max_retries=1)
    engine.fail("POST", "/v1/authorisations", "connect_error", "connect_error")

    with pytest.raises(APIConnectionError) as raised:
        swipe(client)

    assert not isinstance(raised.value, AuthorisationUnknown)
    assert engine.bodies("POST", "/v1/reversals") == []


# Inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [100.0, True, "100"])
def test_amounts_must_be_integer_fen(client, engine, amount):
    with pytest.raises(TypeError):
        client.authorise(USABLE_CARD, MERCHANT_ID, amount)
    with pytest.raises(TypeError):
        client.refund("au_0001", amount)

    assert engine.seen == []


def test_a_naive_occurred_at_is_refused(client, engine):
    with pytest.raises(ValueError, match="timezone"):
        client.authorise(USABLE_CARD, MERCHANT_ID, 100, occurred_at=datetime(2026, 11, 25, 12, 0))

    assert engine.seen == []


def test_occurred_at_is_sent_as_given_or_now_in_utc(client, engine, clock):
    swipe(client)
    client.authorise(USABLE_CARD, MERCHANT_ID, 100, occurred_at=datetime(2026, 11, 25, 12, 0, tzinfo=CHINA))

    first, second = engine.bodies("POST", "/v1/authorisations")
    assert datetime.fromisoformat(first["occurred_at"]) == datetime.fromtimestamp(clock.time(), timezone.utc)
    assert first["occurred_at"].endswith("+00:00")
    assert second["occurred_at"] == "2026-11-25T12:00:00+08:00"
    assert set(first) == {"request_id", "card_number", "merchant_id", "amount_fen", "occurred_at"}


def test_options_are_checked_when_the_client_is_made():
    with pytest.raises(ValueError):
        PosClient("ftp://pos.test", TERMINAL_ID, SECRET)
    with pytest.raises(ValueError):
        PosClient(BASE_URL, TERMINAL_ID, SECRET, max_retries=-1)
    with pytest.raises(ValueError):
        PosClient(BASE_URL, "", SECRET)
    with pytest.raises(TypeError):
        PosClient(BASE_URL, TERMINAL_ID, SECRET, 5.0)  # type: ignore[misc]  # options are keyword-only


def test_the_client_is_a_context_manager_that_closes_its_connections(engine, clock):
    with PosClient(BASE_URL, TERMINAL_ID, SECRET, transport=httpx.MockTransport(engine)) as client:
        client._clock = clock.time
        swipe(client)

    assert client._http.is_closed


# Yuan helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount_fen", "plain", "formatted"),
    [
        (0, "0.00", "¥0.00"),
        (5, "0.05", "¥0.05"),
        (10000, "100.00", "¥100.00"),
        (123456789, "1234567.89", "¥1,234,567.89"),
        (-105, "-1.05", "-¥1.05"),
    ],
)
def test_yuan_helpers_format_fen_for_display(amount_fen, plain, formatted):
    assert fen_to_yuan(amount_fen) == plain
    assert format_yuan(amount_fen) == formatted


def test_yuan_helpers_refuse_anything_but_integer_fen():
    with pytest.raises(TypeError):
        format_yuan(1.5)  # type: ignore[arg-type]
    assert format_yuan(123456, symbol="CNY ", grouping=False) == "CNY 1234.56"


# Async twin ------------------------------------------------------------------------------


def test_the_async_client_retries_and_reverses_like_the_sync_one(engine, clock):
    async def scenario() -> tuple[Authorisation, AuthorisationUnknown]:
        async with AsyncPosClient(BASE_URL, TERMINAL_ID, SECRET, transport=httpx.MockTransport(engine)) as client:
            client._clock = clock.time
            client._sleep = clock.async_sleep
            engine.fail("POST", "/v1/authorisations", problem(503, "unavailable"))
            approved = await client.authorise(USABLE_CARD, MERCHANT_ID, 10000)
            engine.fail("POST", "/v1/authorisations", *["timeout"] * 3)
            engine.fail("POST", "/v1/reversals", "connect_error")
            with pytest.raises(AuthorisationUnknown) as raised:
                await client.authorise(USABLE_CARD, MERCHANT_ID, 10000, request_id="till-42-0011")
            assert client.pending_reversals == ("till-42-0011",)
            details = await client.get(approved.id)
            assert details.id == approved.id
            assert client.pending_reversals == ()
            return approved, raised.value

    approved, unknown = asyncio.run(scenario())

    assert approved.approved
    assert unknown.reversal_pending
    assert engine.authorisations[engine.by_request_id["till-42-0011"]]["reversed"] is True


# Packaging -------------------------------------------------------------------------------


def test_the_sdk_imports_only_the_standard_library_httpx_and_httpcore():
    imported: set[str] = set()
    for path in [*(SDK_ROOT / "src").rglob("*.py"), *(SDK_ROOT / "examples").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])

    # httpcore is httpx's own transport layer: the SDK wraps its network backend (_deadline.py).
    assert {name for name in imported if not _in_standard_library(name)} == {"httpx", "httpcore", "merchant_sdk"}


def _in_standard_library(name: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10 and later
    if names is not None:
        return name in names
    if name in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    return origin is not None and origin.startswith(sysconfig.get_paths()["stdlib"]) and "-packages" not in origin


def test_the_sdk_spells_no_type_union_that_python_3_9_cannot_run():
    # requires-python is >=3.9: `int | float` inside isinstance() raises TypeError there.
    # (Annotations are safe: every SDK module has `from __future__ import annotations`.)
    found = []
    for path in [*(SDK_ROOT / "src").rglob("*.py"), *(SDK_ROOT / "examples").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_type_check = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass")
            if is_type_check and any(isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr) for part in ast.walk(node.args[1])):
                found.append(f"{path.name}:{node.lineno}")

    assert found == []


def test_importing_the_sdk_loads_no_pos_engine_module():
    code = "import sys, merchant_sdk; print(sorted(m for m in sys.modules if m.split('.')[0] == 'pos_engine'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SDK_ROOT.parent)

    assert result.stdout.strip() == "[]"


def test_the_package_is_typed_and_its_version_matches_pyproject():
    pyproject = (SDK_ROOT / "pyproject.toml").read_text(encoding="utf-8")

    assert importlib.resources.files("merchant_sdk").joinpath("py.typed").is_file()
    assert f'version = "{merchant_sdk.__version__}"' in pyproject
    assert set(merchant_sdk.__all__) <= set(dir(merchant_sdk))


def test_the_example_till_prints_a_receipt(client):
    spec = importlib.util.spec_from_file_location("till_example", SDK_ROOT / "examples" / "till.py")
    assert spec is not None
    assert spec.loader is not None
    till = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(till)
    out = io.StringIO()

    status = till.run_till(
        client, card_number=USABLE_CARD, merchant_id=MERCHANT_ID, amount_fen=10000, explain=True, refund_fen=1000, out=out
    )

    receipt = out.getvalue()
    assert status == 0
    assert "To pay" in receipt
    assert "¥85.50" in receipt
    assert "Approved au_0001" in receipt
    assert "refunded ¥10.00" in receipt


# The call's deadline ---------------------------------------------------------------------


@pytest.fixture
def deadline_client(make_client, engine, clock):
    """A client whose deadline runs on the fake clock; a request that times out costs its read timeout."""
    read_timeouts: list[tuple[str, float]] = []

    def slow_when_timing_out(request: httpx.Request) -> httpx.Response:
        read_timeout = request.extensions["timeout"]["read"]
        read_timeouts.append((request.url.path, read_timeout))
        if engine.faults.get((request.method, request.url.path)):
            clock.now_s += read_timeout  # the fault is a timeout: the attempt waited all it was allowed
        return engine(request)

    def make(**options: Any) -> tuple[PosClient, list[tuple[str, float]]]:
        client = make_client(slow_when_timing_out, timeout=5.0, **options)
        client._monotonic = clock.time
        return client, read_timeouts

    return make


def test_an_authorisation_gives_up_within_its_deadline_and_still_voids_the_request(deadline_client, engine, clock):
    client, read_timeouts = deadline_client(deadline=3.0, max_retries=2)
    engine.fail("POST", "/v1/authorisations", "timeout", "timeout", "timeout")
    engine.fail("POST", "/v1/reversals", "timeout_unsent")  # only so that the void's read timeout is on the clock too
    started = clock.time()

    with pytest.raises(AuthorisationUnknown) as raised:
        swipe(client, request_id="till-42-0030")

    # One attempt, cut from 5 s to the 3 s deadline; no retry starts after it; then one attempt for the void.
    assert read_timeouts == [("/v1/authorisations", 3.0), ("/v1/reversals", 5.0)]
    assert clock.time() - started == 3.0 + 5.0
    assert raised.value.reversal_pending is True  # the void timed out too: queued for the next call


def test_a_retry_after_longer_than_the_deadline_leaves_is_not_waited_for(deadline_client, engine, clock):
    client, _ = deadline_client(deadline=3.0)
    engine.fail("GET", "/v1/authorisations/au_0001", problem(503, "unavailable", headers={"Retry-After": "5"}))
    swipe(client)

    with pytest.raises(ServerError):
        client.get("au_0001")

    assert clock.sleeps == []


def test_queued_reversals_take_at_most_half_of_the_next_call_s_deadline(deadline_client, engine, clock):
    client, read_timeouts = deadline_client(deadline=4.0, max_retries=0)
    engine.fail("POST", "/v1/authorisations", "timeout")
    engine.fail("POST", "/v1/reversals", "timeout", "timeout")
    with pytest.raises(AuthorisationUnknown):
        swipe(client, request_id="till-42-0031")
    assert client.pending_reversals == ("till-42-0031",)
    read_timeouts.clear()

    authorisation = swipe(client)  # the queued reversal times out again, in half the budget

    assert authorisation.approved
    assert read_timeouts == [("/v1/reversals", 2.0), ("/v1/authorisations", 2.0)]
    assert client.pending_reversals == ("till-42-0031",)


def test_a_deadline_must_be_positive_seconds_or_none():
    for bad in (0, -1.0, True, "3"):
        with pytest.raises(ValueError, match="deadline"):
            PosClient(BASE_URL, TERMINAL_ID, SECRET, deadline=bad)  # type: ignore[arg-type]
    PosClient(BASE_URL, TERMINAL_ID, SECRET, deadline=None).close()


def test_the_async_client_keeps_the_same_deadline(engine, clock):
    read_timeouts: list[float] = []

    def slow_when_timing_out(request: httpx.Request) -> httpx.Response:
        read_timeouts.append(request.extensions["timeout"]["read"])
        if engine.faults.get((request.method, request.url.path)):
            clock.now_s += request.extensions["timeout"]["read"]
        return engine(request)

    async def scenario() -> None:
        async with AsyncPosClient(
            BASE_URL, TERMINAL_ID, SECRET, timeout=5.0, deadline=3.0, transport=httpx.MockTransport(slow_when_timing_out)
        ) as client:
            client._clock = clock.time
            client._monotonic = clock.time
            client._sleep = clock.async_sleep
            engine.fail("POST", "/v1/authorisations", "timeout", "timeout", "timeout")
            with pytest.raises(AuthorisationUnknown):
                await client.authorise(USABLE_CARD, MERCHANT_ID, 10000)

    asyncio.run(scenario())
    assert read_timeouts == [3.0, 5.0]  # one attempt cut to the deadline, then the void
