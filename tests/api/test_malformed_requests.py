"""No request, however malformed, gets a 500 or changes anything."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.api.conftest import CARD
from tests.api.test_terminal_api import state
from tests.conftest import Backend
from tests.helpers import SignedClient

VALID = {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": "2026-11-25T12:00:00+08:00"}
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10.0,
    1e400,
    10**30,
    "",
    "x",
    "10000",
    "é" * 100,
    "\u0000",
    "9" * 5000,
    [],
    [1, 2],
    {},
    {"a": 1},
    "2026-11-25",
    "2026-11-25T12:00:00",  # no timezone
    "2026-13-45T99:00:00+08:00",
    "not a date",
]
RAW_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"42",
    b'"text"',
    b"{'single': 'quotes'}",
    b'{"request_id": "req-1",}',
    b"\xff\xfe\x00garbage",
    b'{"amount_fen": 1' + b"0" * 5000 + b"}",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    json.dumps({**VALID, "extra": 1}).encode(),
    json.dumps(VALID).encode("utf-16"),
]


def malformed_bodies(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    bodies = list(RAW_BODIES)
    for field in VALID:
        bodies.append(json.dumps({key: value for key, value in VALID.items() if key != field}).encode())
        for value in ODD_VALUES:
            bodies.append(json.dumps({**VALID, field: value}).encode())
    while len(bodies) < count:
        body = dict(VALID)
        for field in rng.sample(list(VALID), rng.randint(1, 3)):
            body[field] = rng.choice(ODD_VALUES)
        raw = json.dumps(body).encode()
        if rng.random() < 0.3:  # and some byte-level damage
            position = rng.randrange(len(raw))
            raw = raw[:position] + bytes([rng.randrange(256)]) + raw[position + 1 :]
        bodies.append(raw)
    return bodies


@pytest.mark.parametrize(
    "path",
    [
        "/v1/authorisations",
        "/v1/authorisations?explain=maybe",
        "/v1/authorisations/au_x/refunds",
        "/v1/authorisations/au_x/reversal",
        "/v1/reversals",
    ],
)
def test_hundreds_of_malformed_bodies_get_4xx_problems_and_change_nothing(terminal: SignedClient, backend: Backend, path: str) -> None:
    before = state(backend)
    statuses: dict[int, int] = {}
    for index, raw in enumerate(malformed_bodies(300 if path == "/v1/authorisations" else 80)):
        # Give each its own request id where the JSON survives, so idempotency can't mask a bug.
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict) and parsed.get("request_id") == "req-1":
                parsed["request_id"] = f"req-{index}"
                raw = json.dumps(parsed).encode()
        except (ValueError, RecursionError):
            pass
        response = terminal.client.post(path, data=raw, headers=terminal.headers("POST", path, raw))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert 400 <= response.status_code < 500 or (response.status_code == 200 and path == "/v1/authorisations"), raw[:200]
        if response.status_code != 200:
            assert response.mimetype == "application/problem+json"
            problem = response.get_json()
            assert problem["status"] == response.status_code
            assert problem["code"]
    assert 500 not in statuses
    if path.startswith("/v1/authorisations?") or path == "/v1/authorisations":
        # Nothing malformed was recorded; only well-formed swipes (odd but valid values) could be.
        after = state(backend)
        assert after["ledger_entries"] == before["ledger_entries"] + statuses.get(200, 0) - after["declines"] + before["declines"]
    else:
        assert state(backend) == before


def test_a_validation_error_names_each_bad_field(terminal: SignedClient) -> None:
    body = {**VALID, "amount_fen": "100", "card_number": "12ab", "occurred_at": "2026-11-25T12:00:00", "colour": "red"}
    response = terminal.post("/v1/authorisations", body)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "validation_failed"
    fields = {error["field"] for error in problem["errors"]}
    assert fields == {"amount_fen", "card_number", "occurred_at", "colour"}


@pytest.mark.parametrize("field", ["request_id", "card_number"])
def test_a_final_newline_is_not_part_of_a_request_id_or_a_card_number(terminal: SignedClient, field: str) -> None:
    # Python's `$` matches before a final newline; the OpenAPI document's pattern (JSON Schema) does not.
    response = terminal.post("/v1/authorisations", {**VALID, field: VALID[field] + "\n"})
    assert response.status_code == 422
    assert [error["field"] for error in response.get_json()["errors"]] == [field]


def test_a_float_or_boolean_amount_is_refused(terminal: SignedClient) -> None:
    for amount in (100.0, 100.5, True):
        response = terminal.post("/v1/authorisations", {**VALID, "amount_fen": amount})
        assert response.status_code == 422
        assert response.get_json()["errors"][0]["field"] == "amount_fen"


def test_a_body_over_the_size_limit_is_refused(terminal: SignedClient) -> None:
    raw = json.dumps({**VALID, "request_id": "x" * 20_000}).encode()
    response = terminal.client.post("/v1/authorisations", data=raw, headers=terminal.headers("POST", "/v1/authorisations", raw))
    assert response.status_code == 413  # refused by its declared length, never read whole
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "body_too_large"


def test_an_unknown_path_or_method_is_a_problem_too(terminal: SignedClient) -> None:
    assert terminal.client.get("/nowhere").get_json()["code"] == "not_found"
    response = terminal.client.delete("/v1/authorisations")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) >= {"POST"}


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("explian=true", {"explian": "unknown query parameter (this operation takes: explain)"}),
        ("explain=true&foo=1", {"foo": "unknown query parameter (this operation takes: explain)"}),
        ("explain=true&explain=false", {"explain": "given more than once"}),
        ("explain=1&explain=1", {"explain": "given more than once"}),
        ("=1", {"query": "unknown query parameter (this operation takes: explain)"}),
    ],
)
def test_a_query_parameter_the_swipe_does_not_take_or_one_given_twice_is_refused_and_named(
    terminal: SignedClient, backend: Backend, query: str, errors: dict[str, str]
) -> None:
    """A misspelt `explain` is not ignored (the till would get no explanation and no word why), nor does the
    first of two win; the swipe is not recorded, so the till's corrected retry with the same request id goes through."""
    before = state(backend)
    response = terminal.post(f"/v1/authorisations?{query}", {**VALID, "occurred_at": terminal.clock.now().isoformat()})
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "validation_failed"
    assert {error["field"]: error["message"] for error in problem["errors"]} == errors
    assert state(backend) == before
    assert terminal.authorise(CARD, 10_000, "req-1").get_json()["status"] == "approved"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/authorisations/{id}?fields=all", None),
        ("POST", "/v1/authorisations/{id}/reversal?explain=true", {"request_id": "req-2"}),
        ("POST", "/v1/authorisations/{id}/refunds?force=1", {"request_id": "req-2", "amount_fen": 100}),
        ("POST", "/v1/reversals?explain=true", {"request_id": "req-2", "original_request_id": "req-1"}),
    ],
)
def test_the_other_operations_take_no_query_parameter(
    terminal: SignedClient, backend: Backend, method: str, path: str, body: dict[str, Any] | None
) -> None:
    authorisation = terminal.authorise(CARD, 10_000, "req-1").get_json()
    before = state(backend)
    path = path.format(id=authorisation["id"])
    response = terminal.get(path) if body is None else terminal.post(path, body)
    assert response.status_code == 422
    name = path.split("?")[1].split("=")[0]
    assert response.get_json()["errors"] == [{"field": name, "message": "unknown query parameter (this operation takes: none)"}]
    assert state(backend) == before
