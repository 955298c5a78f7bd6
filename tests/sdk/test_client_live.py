"""The merchant SDK against the real engine, served by gunicorn with two workers on loopback.

Faults are made by a small TCP proxy between the SDK and gunicorn: it can lose
an answer after the engine acted on the request, or replace it with a 503.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from merchant_sdk import (
    AsyncPosClient,
    AuthenticationError,
    Authorisation,
    AuthorisationUnknown,
    ConflictError,
    NotFoundError,
    PosClient,
    ValidationError,
)
from tests.live import LiveEngine
from tests.live import live_engine as serve_demo

ROOT = Path(__file__).resolve().parents[2]
DINING_MERCHANT_ID = "m-wujin-dining-001"
CHINA = timezone(timedelta(hours=8))
PROXY_SOCKET_TIMEOUT_S = 10.0


# The engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEngine]:
    """Serve a fresh demo world with gunicorn."""
    with serve_demo(tmp_path_factory.mktemp("live-engine"), workers=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def live_engine(served: LiveEngine) -> tuple[str, dict[str, Any]]:
    """The served engine's base URL and the demo credentials."""
    return served.base_url, served.credentials


@pytest.fixture(scope="module")
def terminal(live_engine: tuple[str, dict[str, Any]]) -> dict[str, str]:
    _, credentials = live_engine
    for candidate in credentials["terminals"]:
        if candidate["merchant_id"] == DINING_MERCHANT_ID:
            return dict(candidate)
    pytest.fail(f"the demo world has no terminal for {DINING_MERCHANT_ID}")


@pytest.fixture(scope="module")
def usable_cards(live_engine: tuple[str, dict[str, Any]]) -> Iterator[str]:
    # Each test takes cards of its own, so per-card caps used by one test never
    # change what another sees.
    return iter(live_engine[1]["cards"]["usable"])


@pytest.fixture
def card(usable_cards: Iterator[str]) -> str:
    return next(usable_cards)


@pytest.fixture
def make_client(live_engine: tuple[str, dict[str, Any]], terminal: dict[str, str]) -> Iterator[Callable[..., PosClient]]:
    clients: list[PosClient] = []

    def make(base_url: str | None = None, *, secret: str | None = None, **options: Any) -> PosClient:
        client = PosClient(base_url or live_engine[0], terminal["terminal_id"], secret or terminal["secret"], **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., PosClient]) -> PosClient:
    return make_client()


def swipe(client: PosClient, card: str, **options: Any) -> Authorisation:
    authorisation = client.authorise(card, DINING_MERCHANT_ID, 10000, **options)
    assert authorisation.discount_fen + authorisation.subsidy_fen + authorisation.payable_fen == authorisation.amount_fen
    return authorisation


def approved_swipe(client: PosClient, card: str, **options: Any) -> Authorisation:
    authorisation = swipe(client, card, **options)
    assert authorisation.approved, authorisation
    assert authorisation.subsidy_fen > 0, "the city dining subsidy applies to any dining swipe of 20 yuan or more"
    return authorisation


# A proxy that loses answers ------------------------------------------------------------------


def _read_http_message(sock: socket.socket, *, until_eof: bool = False) -> bytes:
    """Read one HTTP/1.1 message: its head and a Content-Length body (or all until EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while (length is None and until_eof) or (length is not None and len(body) < length):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _closing(answer: bytes) -> bytes:
    """The engine's answer, saying the connection closes after it (the proxy serves one request each).

    The engine keeps connections alive; passed on unchanged, that header would let
    the client send its next request down a connection the proxy is closing.
    """
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if line.partition(b":")[0].strip().lower() != b"connection"]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body


SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nConnection: close\r\nContent-Length: 60\r\n\r\n"
    + b'{"title":"Unavailable","status":503,"code":"unavailable"}   '
)


class FaultyProxy:
    """Forward loopback connections to the engine, one request each, with planned faults.

    Actions, taken in order by matching requests: "forward"; "drop" (forward,
    let the engine answer, close without passing the answer on); "stall" (the
    same, but hold the connection open past the client's timeout first);
    "503" (answer 503 without forwarding); "forwarded_503" (forward, then
    answer 503 instead of the engine's answer).
    """

    def __init__(self, upstream_url: str) -> None:
        upstream = httpx.URL(upstream_url)
        self.upstream = (upstream.host, upstream.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.plans: dict[tuple[str, str], list[str]] = {}
        self.log: list[tuple[str, str, dict[str, Any] | None, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.handlers: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def plan(self, method: str, path: str, *actions: str) -> None:
        with self.lock:
            self.plans.setdefault((method, path), []).extend(actions)

    def seen(self, method: str, path: str) -> list[tuple[dict[str, Any] | None, str]]:
        with self.lock:
            return [(body, action) for m, p, body, action in self.log if m == method and p == path]

    def close(self) -> None:
        self.stopping.set()
        self.acceptor.join()
        for handler in self.handlers:
            handler.join()
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            handler = threading.Thread(target=self._handle, args=(connection,), daemon=True)
            self.handlers.append(handler)
            handler.start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(PROXY_SOCKET_TIMEOUT_S)
            request = _read_http_message(connection)
            if not request:
                return
            method, target = request.split(b" ", 2)[:2]
            path = target.decode().split("?")[0]
            body_bytes = request.partition(b"\r\n\r\n")[2]
            with self.lock:
                queue = self.plans.get((method.decode(), path), [])
                action = queue.pop(0) if queue else "forward"
                self.log.append((method.decode(), path, json.loads(body_bytes) if body_bytes else None, action))
            if action == "503":
                connection.sendall(SERVICE_UNAVAILABLE)
                return
            with socket.create_connection(self.upstream, timeout=PROXY_SOCKET_TIMEOUT_S) as upstream:
                upstream.sendall(request)
                answer = _read_http_message(upstream, until_eof=True)
            if action == "drop":
                return
            if action == "stall":
                self.stopping.wait(3.0)
                return
            connection.sendall(SERVICE_UNAVAILABLE if action == "forwarded_503" else _closing(answer))


@pytest.fixture
def proxy(live_engine: tuple[str, dict[str, Any]]) -> Iterator[FaultyProxy]:
    faulty = FaultyProxy(live_engine[0])
    yield faulty
    faulty.close()


# Swipes -----------------------------------------------------------------------------------------


def test_a_swipe_at_the_wujin_restaurant_gets_a_discount_and_a_subsidy(client, card):
    authorisation = approved_swipe(client, card, occurred_at=datetime.now(UTC))

    assert authorisation.discount_fen > 0
    assert authorisation.subsidy_fen > 0
    assert authorisation.payable_fen < 10000
    assert {b.kind for b in authorisation.benefits} == {"discount", "subsidy"}
    assert sum(b.amount_fen for b in authorisation.benefits if b.kind == "discount") == authorisation.discount_fen
    assert sum(b.amount_fen for b in authorisation.benefits if b.kind == "subsidy") == authorisation.subsidy_fen
    assert authorisation.rules_version
    assert authorisation.terminal_id == client.terminal_id
    assert authorisation.card_last4 == card[-4:]


def test_a_swipe_now_is_approved_with_the_city_dining_subsidy(client, card):
    authorisation = approved_swipe(client, card)

    assert authorisation.id.startswith("au_")
    assert authorisation.charge_fen == authorisation.payable_fen
    assert authorisation.occurred_at.tzinfo is not None


def test_a_lost_card_is_declined_not_raised(client, live_engine):
    lost_card = live_engine[1]["cards"]["lost"][0]

    authorisation = swipe(client, lost_card)

    assert (authorisation.status, authorisation.decline_code) == ("declined", "card_inactive")
    assert (authorisation.discount_fen, authorisation.subsidy_fen) == (0, 0)
    assert authorisation.charge_fen == 10000


def test_the_same_request_id_returns_the_same_authorisation(client, card):
    first = approved_swipe(client, card)

    again = client.authorise(card, DINING_MERCHANT_ID, 10000, occurred_at=first.occurred_at, request_id=first.request_id)

    assert again == first


def test_a_reversal_gives_back_what_the_swipe_got(client, card):
    authorisation = approved_swipe(client, card)

    reversal = client.reverse(authorisation.id)
    details = client.get(authorisation.id)

    assert (reversal.kind, reversal.authorisation_id) == ("reversal", authorisation.id)
    assert (reversal.amount_fen, reversal.discount_fen, reversal.subsidy_fen) == (
        10000,
        authorisation.discount_fen,
        authorisation.subsidy_fen,
    )
    assert details.reversed is True
    assert [a.kind for a in details.adjustments] == ["reversal"]
    with pytest.raises(ConflictError) as raised:
        client.reverse(authorisation.id)
    assert raised.value.code == "already_reversed"


def test_a_partial_refund_claws_back_pro_rata_and_shows_in_get(client, card):
    authorisation = approved_swipe(client, card)

    refund = client.refund(authorisation.id, 4000)
    details = client.get(authorisation.id)

    assert (refund.kind, refund.amount_fen) == ("refund", 4000)
    # Pro rata: at least the exact share of each benefit rounded down, and the benefits together
    # at least their exact share (the odd fen go back to the funders, never stay with them).
    amount = authorisation.amount_fen
    assert refund.subsidy_fen >= authorisation.subsidy_fen * 4000 // amount
    assert refund.discount_fen >= authorisation.discount_fen * 4000 // amount
    assert (refund.subsidy_fen + refund.discount_fen) * amount >= (authorisation.subsidy_fen + authorisation.discount_fen) * 4000
    assert refund.payable_fen == authorisation.payable_fen * 4000 // amount
    assert details.refunded_fen == 4000
    assert details.reversed is False
    assert [a.id for a in details.adjustments] == [refund.id]
    with pytest.raises(ValidationError) as raised:
        client.refund(authorisation.id, 6001)
    assert raised.value.code == "refund_exceeds_remaining"


def test_explain_says_why_each_rule_applied_or_not(client, card):
    authorisation = approved_swipe(client, card, explain=True)

    assert authorisation.explanations
    applied = [e for e in authorisation.explanations if e.outcome in ("applied", "partly_applied")]
    assert {(e.campaign_id, e.rule_id) for e in applied} == {(b.campaign_id, b.rule_id) for b in authorisation.benefits}
    assert sum(e.given_fen for e in applied) == authorisation.discount_fen + authorisation.subsidy_fen
    assert all(e.reason for e in authorisation.explanations if e.outcome == "not_applied")


def test_a_bad_amount_is_refused_with_the_field_named(client, card):
    with pytest.raises(ValidationError) as raised:
        client.authorise(card, DINING_MERCHANT_ID, 0)

    assert raised.value.status == 422
    assert raised.value.code == "validation_failed"
    assert "amount_fen" in [e.field for e in raised.value.errors]
    assert client.pending_reversals == ()


def test_an_unknown_authorisation_is_not_found(client):
    with pytest.raises(NotFoundError) as raised:
        client.get("au_does_not_exist")

    assert (raised.value.status, raised.value.code) == (404, "not_found")


def test_a_wrong_secret_is_refused(make_client, card):
    client = make_client(secret="not-the-secret")

    with pytest.raises(AuthenticationError) as raised:
        client.authorise(card, DINING_MERCHANT_ID, 10000)

    assert raised.value.code == "signature_invalid"


def test_a_void_that_arrives_before_its_request_declines_the_request(make_client, card):
    voided = make_client().reverse_request("till-live-late-0001")

    # Another client stands in for the original request arriving late: the
    # client that voided it refuses to send that request id again.
    late = make_client().authorise(card, DINING_MERCHANT_ID, 10000, request_id="till-live-late-0001")

    assert (voided.outcome, voided.authorisation_id) == ("nothing_to_reverse", None)
    assert (late.status, late.decline_code) == ("declined", "voided_by_terminal")
    assert late.charge_fen == 10000  # the engine's stored void says 0 fen: the till still charges the full price


def test_the_async_client_authorises_and_reverses(live_engine, terminal, card):
    async def scenario() -> tuple[Authorisation, Any]:
        async with AsyncPosClient(live_engine[0], terminal["terminal_id"], terminal["secret"]) as client:
            authorisation = await client.authorise(card, DINING_MERCHANT_ID, 10000)
            return authorisation, await client.reverse(authorisation.id)

    authorisation, reversal = asyncio.run(scenario())

    assert authorisation.approved
    assert reversal.amount_fen == 10000


# Faults ----------------------------------------------------------------------------------------


def test_a_lost_answer_raises_authorisation_unknown_and_the_engine_voids_the_swipe(make_client, proxy, card):
    client = make_client(proxy.base_url)
    proxy.plan("POST", "/v1/authorisations", *["drop"] * (1 + client.max_retries))

    with pytest.raises(AuthorisationUnknown) as raised:
        client.authorise(card, DINING_MERCHANT_ID, 10000, request_id="till-live-drop-0001")

    error = raised.value
    assert error.request_id == "till-live-drop-0001"
    assert [body["original_request_id"] for body, _ in proxy.seen("POST", "/v1/reversals")] == ["till-live-drop-0001"]
    assert error.reversal is not None
    assert error.reversal.outcome == "reversed"
    assert error.reversal.reversal is not None
    assert error.reversal.reversal.subsidy_fen > 0
    assert client.reverse_request("till-live-drop-0001").outcome == "already_reversed"
    details = client.get(error.reversal.reversal.authorisation_id)
    assert details.reversed is True
    with pytest.raises(ValueError, match="new request id"):
        client.authorise(card, DINING_MERCHANT_ID, 10000, request_id="till-live-drop-0001")


def test_a_timeout_raises_authorisation_unknown_and_the_engine_voids_the_swipe(make_client, proxy, card):
    client = make_client(proxy.base_url, timeout=1.0, max_retries=0)
    proxy.plan("POST", "/v1/authorisations", "stall")

    with pytest.raises(AuthorisationUnknown) as raised:
        client.authorise(card, DINING_MERCHANT_ID, 10000, request_id="till-live-stall-0001")

    assert raised.value.reversal is not None
    assert raised.value.reversal.outcome == "reversed"
    assert client.reverse_request("till-live-stall-0001").outcome == "already_reversed"


def test_a_reversal_that_cannot_get_through_is_sent_on_the_next_call(make_client, proxy, card, usable_cards):
    client = make_client(proxy.base_url, max_retries=0)
    proxy.plan("POST", "/v1/authorisations", "drop")
    proxy.plan("POST", "/v1/reversals", "503")

    with pytest.raises(AuthorisationUnknown) as raised:
        client.authorise(card, DINING_MERCHANT_ID, 10000, request_id="till-live-queue-0001")
    assert raised.value.reversal_pending
    assert client.pending_reversals == ("till-live-queue-0001",)

    next_swipe = client.authorise(next(usable_cards), DINING_MERCHANT_ID, 10000)

    assert next_swipe.approved
    assert client.pending_reversals == ()
    assert [action for _, action in proxy.seen("POST", "/v1/reversals")] == ["503", "forward"]
    assert client.reverse_request("till-live-queue-0001").outcome == "already_reversed"


def test_a_server_error_then_success_is_retried_through_the_proxy(make_client, proxy, card):
    client = make_client(proxy.base_url)
    proxy.plan("POST", "/v1/authorisations", "503", "503")

    authorisation = approved_swipe(client, card)

    attempts = proxy.seen("POST", "/v1/authorisations")
    assert [action for _, action in attempts] == ["503", "503", "forward"]
    assert {body["request_id"] for body, _ in attempts if body} == {authorisation.request_id}
    assert proxy.seen("POST", "/v1/reversals") == []


def ledger_entries_for(served: LiveEngine, request_id: str) -> list[tuple[str, str]]:
    """The ledger's (kind, entry id) rows recorded under `request_id`, read from the engine's database."""
    from sqlalchemy import create_engine, select

    from pos_engine.store.db import normalise_url
    from pos_engine.store.models import LedgerEntryRow

    database = create_engine(normalise_url(served.env["POS_ENGINE_DATABASE_URL"]))
    try:
        with database.connect() as connection:
            rows = connection.execute(select(LedgerEntryRow.kind, LedgerEntryRow.entry_id).where(LedgerEntryRow.request_id == request_id))
            return [(kind, entry_id) for kind, entry_id in rows]
    finally:
        database.dispose()


def test_a_retried_authorise_never_creates_two_ledger_entries(make_client, proxy, card, served):
    client = make_client(proxy.base_url)
    # The engine records the first attempt, the till sees 503, the retry with
    # the same request id reaches the engine again.
    proxy.plan("POST", "/v1/authorisations", "forwarded_503")

    authorisation = approved_swipe(client, card)

    attempts = proxy.seen("POST", "/v1/authorisations")
    assert [action for _, action in attempts] == ["forwarded_503", "forward"]
    assert len({body["request_id"] for body, _ in attempts if body}) == 1
    assert ledger_entries_for(served, authorisation.request_id) == [("authorisation", authorisation.id)]
    details = client.get(authorisation.id)
    assert (details.id, details.reversed, details.refunded_fen, details.adjustments) == (authorisation.id, False, 0, ())
    voided = client.reverse_request(authorisation.request_id)
    assert (voided.outcome, voided.authorisation_id) == ("reversed", authorisation.id)
    assert voided.reversal is not None
    assert (voided.reversal.amount_fen, voided.reversal.subsidy_fen) == (10000, authorisation.subsidy_fen)
    assert client.reverse_request(authorisation.request_id).outcome == "already_reversed"
    assert [a.kind for a in client.get(authorisation.id).adjustments] == ["reversal"]


def test_the_example_till_script_runs_against_the_engine(live_engine, tmp_path):
    base_url, credentials = live_engine
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps(credentials))
    card_number = credentials["cards"]["usable"][-1]
    env = {**os.environ, "PYTHONPATH": ""}
    script = ROOT / "merchant_sdk" / "examples" / "till.py"

    runs = [
        subprocess.run(
            [sys.executable, str(script), "--base-url", base_url, "--credentials", str(demo), *options],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        for options in (["--card", card_number, "--explain", "--refund-fen", "1000"], ["--card-kind", "lost"])
    ]

    approved, declined = runs
    assert approved.returncode == 0, approved.stderr
    assert "Approved au_" in approved.stdout
    assert "refunded ¥10.00" in approved.stdout
    assert declined.returncode == 0, declined.stderr
    assert "Declined (card_inactive)" in declined.stdout
