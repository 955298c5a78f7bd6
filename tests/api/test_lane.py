"""The swipe lane answers what it takes exactly as Flask would, and leaves everything else to Flask untouched."""

from __future__ import annotations

import itertools
import json
import logging
import re
from datetime import timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Response

from pos_engine.api.lane import SwipeLane
from pos_engine.domain.clock import FixedClock
from pos_engine.service import swipes
from tests.api.conftest import CARD
from tests.helpers import SignedClient, World

PATH = "/v1/authorisations"
Answer = tuple[str, list[tuple[str, str]], bytes]


class CountingFlask:
    """Flask's own wsgi_app behind the lane, counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.app(environ, start_response)


@pytest.fixture
def flask_app(app: Any) -> CountingFlask:
    lane = app.wsgi_app
    assert isinstance(lane, SwipeLane)
    lane.app = CountingFlask(lane.app)
    return lane.app


@pytest.fixture
def clients(app: Any, flask_app: CountingFlask) -> dict[str, Client]:
    """Two ways in: through the lane (as gunicorn serves the app), and to Flask alone."""
    return {"lane": app.test_client(), "flask": Client(flask_app, Response)}


def answer(client: Client, raw: bytes, headers: dict[str, str], query: str = "") -> Answer:
    response = client.post(PATH + (f"?{query}" if query else ""), data=raw, headers=headers)
    return response.status, list(response.headers.items()), response.get_data()


def signed(world: World, clock: FixedClock, terminal_id: str, raw: bytes, query: str = "", signature: str = "good") -> dict[str, str]:
    """A till's headers for `raw`, signed well, with another secret ('bad'), an hour ago ('stale'), or not at all ('missing')."""
    secret = world.terminals[terminal_id][0] if terminal_id in world.terminals else "no-such-secret"
    at = FixedClock(clock.now() - timedelta(hours=1)) if signature == "stale" else clock
    till = SignedClient(None, terminal_id, "another-secret" if signature == "bad" else secret, at)
    headers: dict[str, str] = till.headers("POST", PATH + (f"?{query}" if query else ""), raw)
    if signature == "missing":
        del headers["X-Signature"]
    return headers


@pytest.fixture
def shop(world: World) -> World:
    world.add_merchant("m-1")
    world.add_merchant("m-2")
    world.add_card(CARD)
    return world


# A request the lane should take, and none, one or two defects that should send it to Flask (or
# be refused by either), so that about a third of the examples are well-formed swipes.
DEFECTS = [
    ("amount_fen", "10000"),
    ("amount_fen", 0),
    ("occurred_at", "last year"),
    ("occurred_at", "naive"),
    ("extra", "x"),
    ("not_json", True),
    ("terminal_id", "t-unknown"),
    ("signature", "bad"),
    ("signature", "missing"),
    ("signature", "stale"),
    ("content_type", "application/json\x0c"),
    ("content_type", "text/plain"),
    ("content_type", None),
    ("query", "explain=yes"),
    ("query", "explain=1&x=2"),
]
requests = st.builds(
    lambda case, defects: {**case, **dict(defects)},
    st.fixed_dictionaries(
        {
            "request_id": st.sampled_from(["req-a", "req-b", "req-c"]),
            "card_number": st.sampled_from([CARD, "6217000000000099"]),
            "merchant_id": st.sampled_from(["m-1", "m-2"]),
            "amount_fen": st.sampled_from([10_000, 2_500, 40_000, 1]),
            "occurred_at": st.just("now"),
            "extra": st.none(),
            "not_json": st.just(False),
            "terminal_id": st.sampled_from(["t-m-1", "t-m-2"]),
            "signature": st.just("good"),
            "content_type": st.sampled_from(["application/json", "application/json; charset=utf-8", " application/json\t"]),
            "query": st.sampled_from(["", "explain=true"]),
            "x_request_id": st.sampled_from([None, "trace-7"]),
            "lane_first": st.booleans(),
        }
    ),
    st.one_of(st.just(()), st.tuples(st.sampled_from(DEFECTS)), st.tuples(st.sampled_from(DEFECTS), st.sampled_from(DEFECTS))),
)


EXAMPLES = itertools.count()
AUTHORISATION_ID = re.compile(rb"au_[0-9a-f]{27}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=requests)
def test_every_request_gets_the_same_status_headers_and_body_through_the_lane_as_from_flask_alone(
    case: dict[str, Any], clients: dict[str, Client], shop: World, clock: FixedClock
) -> None:
    occurred = {"now": clock.now(), "last year": clock.now() - timedelta(days=365), "naive": clock.now().replace(tzinfo=None)}
    order = ["lane", "flask"] if case["lane_first"] else ["flask", "lane"]
    example = next(EXAMPLES)

    def request_for(way: str) -> tuple[bytes, dict[str, str]]:
        """The case's request as `way` sends it: its own request id and, for the known card, a card of its own."""
        body: dict[str, Any] = {key: case[key] for key in ("card_number", "merchant_id", "amount_fen")}
        # Same lengths both ways (and the same last four digits), so that the answers differ only in these.
        body["request_id"] = f"{case['request_id']}-{example:04d}-{way[0]}"
        if case["card_number"] == CARD:
            body["card_number"] = f"6217{example:05d}{order.index(way) + 1}000001"
            shop.add_card(body["card_number"])
        body["occurred_at"] = occurred[case["occurred_at"]].isoformat()
        if case["extra"]:
            body["extra"] = case["extra"]
        raw = b"{not json" if case["not_json"] else json.dumps(body).encode()
        headers = signed(shop, clock, case["terminal_id"], raw, case["query"], case["signature"])
        if case["content_type"] is None:
            del headers["Content-Type"]
        else:
            headers["Content-Type"] = case["content_type"]
        if case["x_request_id"]:
            headers["X-Request-Id"] = case["x_request_id"]
        return raw, headers

    def made_alike(way: str, got: Answer) -> Answer:
        """`got` with `way`'s request id and authorisation id written as placeholders of the same length."""
        status, headers, raw = got
        mine = f"{case['request_id']}-{example:04d}-{way[0]}".encode()
        placeholder = mine[:-1] + b"?"
        raw = AUTHORISATION_ID.sub(lambda found: b"au_" + b"?" * 27, raw.replace(mine, placeholder))
        return status, [(name, value.replace(mine.decode(), placeholder.decode())) for name, value in headers], raw

    sent = {way: request_for(way) for way in order}
    # Each way makes its own answer afresh (a new request id, a card with the same history) ...
    fresh = {way: answer(clients[way], *sent[way], case["query"]) for way in order}
    assert made_alike(order[0], fresh[order[0]]) == made_alike(order[1], fresh[order[1]])
    # ... and sent again the other way, each request gets that answer again, byte for byte.
    for way, other in (order, order[::-1]):
        assert answer(clients[other], *sent[way], case["query"]) == fresh[way]


def test_a_well_formed_swipe_never_reaches_flask_and_its_answer_is_flasks(
    clients: dict[str, Client], flask_app: CountingFlask, shop: World, clock: FixedClock
) -> None:
    def swipe(request_id: str, card: str) -> bytes:
        body = {"request_id": request_id, "card_number": card, "merchant_id": "m-1", "amount_fen": 10_000}
        return json.dumps({**body, "occurred_at": clock.now().isoformat()}).encode()

    other_card = "6217000000000002"
    shop.add_card(other_card)
    through_lane = answer(clients["lane"], swipe("req-lane", CARD), signed(shop, clock, "t-m-1", swipe("req-lane", CARD)))
    assert flask_app.calls == 0
    from_flask = answer(clients["flask"], swipe("req-full", other_card), signed(shop, clock, "t-m-1", swipe("req-full", other_card)))
    assert flask_app.calls == 1

    (lane_status, lane_headers, lane_raw), (flask_status, flask_headers, flask_raw) = through_lane, from_flask
    assert (lane_status, lane_headers) == (flask_status, flask_headers) == ("200 OK", flask_headers)
    lane_body, flask_body = json.loads(lane_raw), json.loads(flask_raw)
    for body, request_id, card in ((lane_body, "req-lane", CARD), (flask_body, "req-full", other_card)):
        assert (body.pop("request_id"), body.pop("card_last4")) == (request_id, card[-4:])
        assert body.pop("id").startswith("au_")
    assert lane_body["status"] == "approved"
    assert lane_body == flask_body


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"content_type": "text/plain"}, 415, None),
        ({"content_type": "application/x-www-form-urlencoded"}, 415, None),
        ({"content_type": ""}, 415, None),
        # Space and tab around the media type are allowed (werkzeug strips those two only); other white space is not.
        ({"content_type": "application/json\x0b"}, 415, None),
        ({"content_type": "application/json\xa0"}, 415, None),
        ({"content_type": "\x1capplication/json"}, 415, None),
        ({"query": "explain=yes"}, 422, "explain"),
        ({"body": {"amount_fen": "10000"}}, 422, "amount_fen"),
        ({"body": {"occurred_at": "2026-11-25T12:00:00"}}, 422, "occurred_at"),
        ({"body": {"comment": "hi"}}, 422, "comment"),
        ({"raw": b'{"request_id": '}, 400, None),
    ],
)
def test_what_the_lane_is_not_sure_of_reaches_flask_with_its_body(
    change: dict[str, Any], status: int, field: str | None, terminal: SignedClient, flask_app: CountingFlask, clock: FixedClock
) -> None:
    body = {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": clock.now().isoformat()}
    raw = change.get("raw") or json.dumps({**body, **change.get("body", {})}).encode()
    path = PATH + (f"?{change['query']}" if "query" in change else "")
    headers = {**terminal.headers("POST", path, raw), "Content-Type": change.get("content_type", "application/json")}

    response = terminal.client.post(path, data=raw, headers=headers)

    assert flask_app.calls == 1
    assert response.status_code == status, response.get_json()
    if field is not None:
        assert field in {error["field"] for error in response.get_json()["errors"]}


def wsgi_call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    seen: list[str] = []
    chunks = app.wsgi_app(environ, lambda status, headers, exc_info=None: seen.append(status))
    return seen[0], b"".join(chunks)


def raw_environ(terminal: SignedClient, raw: bytes, declared_length: int) -> dict[str, Any]:
    """A signed swipe's WSGI environ from a server that gives no raw path, declaring `declared_length` bytes."""
    environ: dict[str, Any] = EnvironBuilder(path=PATH, method="POST", data=raw, headers=terminal.headers("POST", PATH, raw)).get_environ()
    environ.pop("RAW_URI", None)
    environ.pop("REQUEST_URI", None)
    environ["CONTENT_LENGTH"] = str(declared_length)
    return environ


def test_a_server_that_gives_no_raw_path_and_a_body_cut_short_both_go_to_flask(
    app: Any, terminal: SignedClient, flask_app: CountingFlask, clock: FixedClock
) -> None:
    body = {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": clock.now().isoformat()}
    raw = json.dumps(body).encode()

    # No RAW_URI or REQUEST_URI: Flask rebuilds the path from PATH_INFO, and the signature still holds.
    status, answered = wsgi_call(app, raw_environ(terminal, raw, len(raw)))
    assert (status, flask_app.calls) == ("200 OK", 1)
    assert json.loads(answered)["request_id"] == "req-1"

    # A till that hangs up mid-body: Flask reads the same short body and refuses it.
    status, _ = wsgi_call(app, {**raw_environ(terminal, raw, len(raw) + 10), "RAW_URI": PATH})
    assert (status, flask_app.calls) == ("400 BAD REQUEST", 2)


def test_a_content_length_too_long_to_be_a_number_goes_to_flask(
    app: Any, terminal: SignedClient, flask_app: CountingFlask, clock: FixedClock
) -> None:
    """5,000 digits pass str.isdigit() but not int() (Python refuses over 4,300): a server that passes them on
    (werkzeug's, under `pos-engine serve`) must get Flask's answer, not a 500 from the lane."""
    body = {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": clock.now().isoformat()}
    raw = json.dumps(body).encode()
    environ = {**raw_environ(terminal, raw, len(raw)), "RAW_URI": PATH, "CONTENT_LENGTH": "9" * 5000}
    status, _ = wsgi_call(app, environ)
    assert flask_app.calls == 1
    assert not status.startswith("5"), status


class BrokenInput:
    """A request body whose connection drops while it is read."""

    def read(self, size: int = -1) -> bytes:
        raise ConnectionResetError("the till hung up")


def test_a_connection_lost_while_the_lane_reads_the_body_gets_flasks_answer(
    app: Any, terminal: SignedClient, flask_app: CountingFlask, clock: FixedClock
) -> None:
    body = {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": clock.now().isoformat()}
    raw = json.dumps(body).encode()

    status, _ = wsgi_call(app, {**raw_environ(terminal, raw, len(raw)), "RAW_URI": PATH, "wsgi.input": BrokenInput()})

    assert (status, flask_app.calls) == ("400 BAD REQUEST", 1)


@pytest.mark.parametrize(
    ("failure", "status", "logged"),
    [
        (redis.exceptions.ConnectionError("Redis is down"), "503 SERVICE UNAVAILABLE", "a dependency failed on POST /v1/authorisations"),
        (RuntimeError("a bug"), "500 INTERNAL SERVER ERROR", "unhandled error on POST /v1/authorisations"),
    ],
)
def test_a_failure_inside_the_lane_is_answered_and_logged_as_flask_answers_it(
    failure: Exception,
    status: str,
    logged: str,
    clients: dict[str, Client],
    shop: World,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(swipes, "authorise", failing)
    raw = json.dumps(
        {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 100, "occurred_at": clock.now().isoformat()}
    ).encode()
    headers = {**signed(shop, clock, "t-m-1", raw), "X-Request-Id": "trace-9"}

    with caplog.at_level(logging.ERROR):
        through_lane = answer(clients["lane"], raw, headers)
        from_flask = answer(clients["flask"], raw, headers)

    assert through_lane == from_flask
    assert through_lane[0] == status
    assert json.loads(through_lane[2])["request_id"] == "trace-9"
    records = [record for record in caplog.records if record.getMessage().startswith(logged)]
    assert len(records) == 2
    assert (records[0].exc_info is not None) == (status.startswith("500"))
