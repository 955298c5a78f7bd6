"""The terminal API end to end through Flask, on SQLite+SQL counters and on PostgreSQL+Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from pos_engine.api import schemas
from pos_engine.domain.clock import FixedClock
from pos_engine.service.context import EngineContext
from pos_engine.store.models import DeclineRow, IdempotencyRow, LedgerEntryRow
from tests.api.conftest import CARD
from tests.conftest import Backend
from tests.helpers import SignedClient, World, finishes_within, psycopg_url, silent_server


def state(backend: Backend) -> dict[str, Any]:
    """Everything a request could change: row counts and every counter."""
    with backend.database.sessions() as session:
        counts = {
            model.__tablename__: session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (LedgerEntryRow, DeclineRow, IdempotencyRow)
        }
    return {**counts, "counters": backend.counters.snapshot()}


def test_an_approved_swipe_gets_the_discount_then_the_subsidy_on_what_is_left(terminal: SignedClient) -> None:
    response = terminal.authorise(CARD, 10_000, "req-1")
    assert response.status_code == 200
    body = response.get_json()
    schemas.AuthorisationSchema().load(body)  # the answer is what the OpenAPI document says
    assert body["status"] == "approved"
    assert body["decline_code"] is None
    assert (body["discount_fen"], body["subsidy_fen"], body["payable_fen"]) == (500, 950, 8550)
    assert body["benefits"] == [
        {"campaign_id": "agreement-m-1", "rule_id": "five-percent", "kind": "discount", "amount_fen": 500},
        {"campaign_id": "city-dining", "rule_id": "ten-percent", "kind": "subsidy", "amount_fen": 950},
    ]
    assert body["rules_version"] == "test-v1"
    assert body["card_last4"] == CARD[-4:]
    assert "explanations" not in body


def test_the_card_number_is_never_stored(terminal: SignedClient, backend: Backend) -> None:
    terminal.authorise(CARD, 10_000, "req-1")
    terminal.authorise(CARD, 10_000, "req-2", merchant_id=None, at=None, explain=False)
    terminal.authorise(CARD[:-1] + "9", 10_000, "req-3")  # unknown card: a decline row
    with backend.database.engine.connect() as connection:
        for table in ("ledger_entries", "declines", "idempotency_records", "cards"):
            rows = connection.exec_driver_sql(f"SELECT * FROM {table}").fetchall()
            assert rows
            assert CARD not in repr(rows)


@pytest.mark.parametrize(
    ("card_setup", "code"),
    [
        ({"status": "lost"}, "card_inactive"),
        ({"status": "frozen"}, "card_inactive"),
        ({"status": "cancelled"}, "card_inactive"),
        ({"in_service": False}, "member_not_in_service"),
        ({"annual_review_year": 2025}, "annual_review_due"),
        ({"annual_review_year": None}, "annual_review_due"),
    ],
)
def test_a_card_that_may_not_be_used_is_declined_with_its_code(
    terminal: SignedClient, world: World, backend: Backend, card_setup: dict[str, Any], code: str
) -> None:
    world.add_card("6217000000000099", **card_setup)
    response = terminal.authorise("6217000000000099", 10_000, "req-1")
    body = response.get_json()
    schemas.AuthorisationSchema().load(body)
    assert response.status_code == 200
    assert (body["status"], body["decline_code"]) == ("declined", code)
    assert (body["discount_fen"], body["subsidy_fen"], body["payable_fen"]) == (0, 0, 10_000)
    assert state(backend)["ledger_entries"] == 0
    assert state(backend)["counters"] == {}


def test_an_unknown_card_is_declined(terminal: SignedClient) -> None:
    body = terminal.authorise("6217999999999999", 10_000, "req-1").get_json()
    assert (body["status"], body["decline_code"]) == ("declined", "card_unknown")


@pytest.mark.parametrize("status", ["pending", "suspended", "removed"])
def test_a_merchant_that_is_not_serving_is_declined(app: Any, world: World, clock: FixedClock, status: str) -> None:
    terminal_id = world.add_merchant("m-9", status=status)
    world.add_card(CARD)
    client = SignedClient(app.test_client(), terminal_id, world.terminals[terminal_id][0], clock)
    body = client.authorise(CARD, 10_000, "req-1").get_json()
    assert (body["status"], body["decline_code"]) == ("declined", "merchant_inactive")


def test_a_merchant_on_probation_still_serves_members(app: Any, world: World, clock: FixedClock) -> None:
    terminal_id = world.add_merchant("m-9", status="probation")
    world.add_card(CARD)
    client = SignedClient(app.test_client(), terminal_id, world.terminals[terminal_id][0], clock)
    assert client.authorise(CARD, 10_000, "req-1").get_json()["status"] == "approved"


def test_a_swipe_with_no_benefit_left_is_declined_no_benefit_and_explained(app: Any, world: World, clock: FixedClock) -> None:
    terminal_id = world.add_merchant("m-2")  # no merchant discount here, only the capped subsidy
    world.add_card(CARD)
    client = SignedClient(app.test_client(), terminal_id, world.terminals[terminal_id][0], clock)
    assert client.authorise(CARD, 10_000, "req-1").get_json()["subsidy_fen"] == 1000
    assert client.authorise(CARD, 10_000, "req-2").get_json()["subsidy_fen"] == 1000
    body = client.authorise(CARD, 10_000, "req-3", explain=True).get_json()
    assert (body["status"], body["decline_code"]) == ("declined", "no_benefit")
    assert body["explanations"] == [
        {
            "campaign_id": "city-dining",
            "rule_id": "ten-percent",
            "outcome": "not_applied",
            "reason": "rule/card/month/uses",
            "wanted_fen": 1000,
            "given_fen": 0,
        }
    ]


def test_explain_reports_partly_applied_with_the_cap_that_stopped_it(app: Any, world: World, clock: FixedClock) -> None:
    terminal_id = world.add_merchant("m-2")
    world.add_card(CARD)
    client = SignedClient(app.test_client(), terminal_id, world.terminals[terminal_id][0], clock)
    client.authorise(CARD, 25_000, "req-1")  # 2500 of the 3000 fen monthly cap
    body = client.authorise(CARD, 10_000, "req-2", explain=True).get_json()
    schemas.AuthorisationSchema().load(body)
    assert body["subsidy_fen"] == 500
    assert body["explanations"][0]["outcome"] == "partly_applied"
    assert body["explanations"][0]["reason"] == "rule/card/month/fen"
    assert (body["explanations"][0]["wanted_fen"], body["explanations"][0]["given_fen"]) == (1000, 500)


def test_explain_names_the_condition_a_rule_failed(terminal: SignedClient, context: EngineContext) -> None:
    from pos_engine.domain.rulebook import Conditions, Rulebook
    from tests.helpers import make_campaign, make_rule, subsidy

    weekend = make_rule("weekend", "sat-sun", subsidy(percent_bp=1500), conditions=Conditions(weekdays=frozenset({5, 6})))
    context.replace_rulebook(Rulebook("v2", [*context.rulebook.campaigns.values(), make_campaign("weekend", (weekend,))]))
    body = terminal.authorise(CARD, 10_000, "req-1", explain=True).get_json()
    weekend_lines = [line for line in body["explanations"] if line["campaign_id"] == "weekend"]
    assert weekend_lines == [
        {
            "campaign_id": "weekend",
            "rule_id": "sat-sun",
            "outcome": "not_applied",
            "reason": "condition:weekdays",
            "wanted_fen": 0,
            "given_fen": 0,
        }
    ]
    assert body["rules_version"] == "v2"


def test_the_same_request_gets_the_same_answer_byte_for_byte_and_changes_nothing(terminal: SignedClient, backend: Backend) -> None:
    first = terminal.authorise(CARD, 10_000, "req-1")
    before = state(backend)
    again = terminal.authorise(CARD, 10_000, "req-1")
    assert again.status_code == 200
    assert again.data == first.data
    assert state(backend) == before
    assert before["ledger_entries"] == 1


def test_the_same_request_id_with_another_body_is_refused(terminal: SignedClient, backend: Backend) -> None:
    terminal.authorise(CARD, 10_000, "req-1")
    before = state(backend)
    response = terminal.authorise(CARD, 20_000, "req-1")
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "idempotency_conflict"
    assert state(backend) == before


def test_a_reversal_voids_the_swipe_and_gives_back_every_cap_and_budget(terminal: SignedClient, backend: Backend) -> None:
    before = state(backend)["counters"]
    auth = terminal.authorise(CARD, 10_000, "req-1").get_json()
    assert state(backend)["counters"] != before
    response = terminal.post(f"/v1/authorisations/{auth['id']}/reversal", {"request_id": "rev-1"})
    assert response.status_code == 200
    body = response.get_json()
    schemas.AdjustmentSchema().load(body)
    assert (body["kind"], body["amount_fen"], body["discount_fen"], body["subsidy_fen"], body["payable_fen"]) == (
        "reversal",
        10_000,
        500,
        950,
        8550,
    )
    assert state(backend)["counters"] == before
    again = terminal.post(f"/v1/authorisations/{auth['id']}/reversal", {"request_id": "rev-1"})
    assert again.data == response.data
    other = terminal.post(f"/v1/authorisations/{auth['id']}/reversal", {"request_id": "rev-2"})
    assert (other.status_code, other.get_json()["code"]) == (409, "already_reversed")
    refund = terminal.post(f"/v1/authorisations/{auth['id']}/refunds", {"request_id": "rf-1", "amount_fen": 100})
    assert (refund.status_code, refund.get_json()["code"]) == (409, "already_reversed")


def test_partial_refunds_claw_back_pro_rata_and_a_full_refund_returns_every_cap(terminal: SignedClient, backend: Backend) -> None:
    before = state(backend)["counters"]
    auth = terminal.authorise(CARD, 10_000, "req-1").get_json()
    first = terminal.post(f"/v1/authorisations/{auth['id']}/refunds", {"request_id": "rf-1", "amount_fen": 3_333}).get_json()
    schemas.AdjustmentSchema().load(first)
    assert first["amount_fen"] == 3_333
    assert first["discount_fen"] + first["subsidy_fen"] + first["payable_fen"] == 3_333
    # Pro rata, in order, each share rounded down and the last line taking the odd fen:
    # payable 8,550 x 33.33 % = 2,849.7 -> 2,849; discount 500 x 33.33 % = 166.65 -> 166;
    # the subsidy (exactly 316.6) takes the rest, 318, so the funder never keeps more than its share.
    assert (first["payable_fen"], first["discount_fen"], first["subsidy_fen"]) == (2_849, 166, 318)
    # A use is still counted while part of the swipe stands.
    uses = {key: value for key, value in state(backend)["counters"].items() if key.endswith(":uses")}
    assert list(uses.values()) == [1]
    too_much = terminal.post(f"/v1/authorisations/{auth['id']}/refunds", {"request_id": "rf-2", "amount_fen": 6_668})
    assert too_much.status_code == 422
    assert too_much.get_json()["code"] == "refund_exceeds_remaining"
    rest = terminal.post(f"/v1/authorisations/{auth['id']}/refunds", {"request_id": "rf-3", "amount_fen": 6_667}).get_json()
    assert first["discount_fen"] + rest["discount_fen"] == 500
    assert first["subsidy_fen"] + rest["subsidy_fen"] == 950
    assert first["payable_fen"] + rest["payable_fen"] == 8550
    assert state(backend)["counters"] == before
    got = terminal.get(f"/v1/authorisations/{auth['id']}").get_json()
    schemas.AuthorisationStateSchema().load(got)
    assert (got["refunded_fen"], got["reversed"], len(got["adjustments"])) == (10_000, False, 2)
    nothing_left = terminal.post(f"/v1/authorisations/{auth['id']}/reversal", {"request_id": "rev-1"})
    assert (nothing_left.status_code, nothing_left.get_json()["code"]) == (409, "fully_refunded")


def test_a_refund_of_a_declined_swipe_is_refused(terminal: SignedClient) -> None:
    declined = terminal.authorise("6217999999999999", 10_000, "req-1").get_json()
    response = terminal.post(f"/v1/authorisations/{declined['id']}/refunds", {"request_id": "rf-1", "amount_fen": 100})
    assert (response.status_code, response.get_json()["code"]) == (409, "authorisation_declined")


def test_a_void_by_request_id_reverses_what_the_terminal_never_saw(terminal: SignedClient, backend: Backend) -> None:
    before = state(backend)["counters"]
    auth = terminal.authorise(CARD, 10_000, "req-1").get_json()
    response = terminal.post("/v1/reversals", {"request_id": "void-1", "original_request_id": "req-1"})
    body = response.get_json()
    schemas.VoidResultSchema().load(body)
    assert (body["outcome"], body["authorisation_id"]) == ("reversed", auth["id"])
    assert body["reversal"]["subsidy_fen"] == 950
    assert state(backend)["counters"] == before
    again = terminal.post("/v1/reversals", {"request_id": "void-2", "original_request_id": "req-1"}).get_json()
    assert again["outcome"] == "already_reversed"


def test_a_void_of_a_request_never_seen_is_harmless_and_declines_the_late_original(terminal: SignedClient, backend: Backend) -> None:
    response = terminal.post("/v1/reversals", {"request_id": "void-1", "original_request_id": "req-lost"})
    assert response.get_json() == {
        "original_request_id": "req-lost",
        "outcome": "nothing_to_reverse",
        "authorisation_id": None,
        "reversal": None,
    }
    late = terminal.authorise(CARD, 10_000, "req-lost").get_json()
    assert (late["status"], late["decline_code"]) == ("declined", "voided_by_terminal")
    assert state(backend)["ledger_entries"] == 0
    assert state(backend)["counters"] == {}


def test_a_void_under_its_own_original_s_request_id_is_refused_and_changes_nothing(terminal: SignedClient, backend: Backend) -> None:
    terminal.authorise(CARD, 10_000, "req-1")
    before = state(backend)
    for request_id in ("req-1", "req-never-seen"):
        response = terminal.post("/v1/reversals", {"request_id": request_id, "original_request_id": request_id})
        assert response.status_code == 422, response.get_json()
        problem = response.get_json()
        assert problem["errors"] == [{"field": "original_request_id", "message": "must differ from request_id"}]
    assert state(backend) == before


def test_a_request_id_voided_before_it_arrived_answers_only_its_late_authorisation(terminal: SignedClient, backend: Backend) -> None:
    auth = terminal.authorise(CARD, 10_000, "req-1").get_json()
    terminal.post("/v1/reversals", {"request_id": "void-1", "original_request_id": "req-lost"})
    before = state(backend)
    for path, body in (
        (f"/v1/authorisations/{auth['id']}/refunds", {"request_id": "req-lost", "amount_fen": 100}),
        (f"/v1/authorisations/{auth['id']}/reversal", {"request_id": "req-lost"}),
        ("/v1/reversals", {"request_id": "req-lost", "original_request_id": "req-1"}),
    ):
        response = terminal.post(path, body)
        assert (response.status_code, response.get_json()["code"]) == (409, "idempotency_conflict"), path
    assert state(backend) == before


def test_get_shows_an_authorisation_only_to_its_own_merchant(terminal: SignedClient, app: Any, world: World, clock: FixedClock) -> None:
    auth = terminal.authorise(CARD, 10_000, "req-1").get_json()
    got = terminal.get(f"/v1/authorisations/{auth['id']}")
    assert got.status_code == 200
    assert got.get_json()["subsidy_fen"] == 950
    other_id = world.add_merchant("m-2")
    other = SignedClient(app.test_client(), other_id, world.terminals[other_id][0], clock)
    forbidden = other.get(f"/v1/authorisations/{auth['id']}")
    assert (forbidden.status_code, forbidden.get_json()["code"]) == (403, "merchant_mismatch")
    refund = other.post(f"/v1/authorisations/{auth['id']}/refunds", {"request_id": "rf-1", "amount_fen": 100})
    assert (refund.status_code, refund.get_json()["code"]) == (403, "merchant_mismatch")
    missing = terminal.get("/v1/authorisations/au_nope")
    assert (missing.status_code, missing.get_json()["code"]) == (404, "not_found")


@pytest.mark.parametrize("authorisation_id", ["x%00", "au_%00abc", "%C3%A9t%C3%A9", "a" * 65])
def test_an_authorisation_id_no_authorisation_can_have_is_not_found(
    terminal: SignedClient, backend: Backend, authorisation_id: str
) -> None:
    """PostgreSQL refuses a NUL in a text parameter: such an id must be a 404 before it reaches the database."""
    before = state(backend)
    for response in (
        terminal.get(f"/v1/authorisations/{authorisation_id}"),
        terminal.post(f"/v1/authorisations/{authorisation_id}/reversal", {"request_id": "adj-1"}),
        terminal.post(f"/v1/authorisations/{authorisation_id}/refunds", {"request_id": "adj-2", "amount_fen": 100}),
    ):
        assert (response.status_code, response.get_json()["code"]) == (404, "not_found")
    assert state(backend) == before


def test_a_terminal_may_not_swipe_for_another_merchant(terminal: SignedClient, world: World, backend: Backend) -> None:
    world.add_merchant("m-2")
    before = state(backend)
    response = terminal.authorise(CARD, 10_000, "req-1", merchant_id="m-2")
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "merchant_mismatch"
    assert state(backend) == before


@pytest.mark.parametrize("offset", [timedelta(seconds=301), timedelta(hours=-24, seconds=-1)])
def test_an_occurred_at_outside_the_window_is_refused(
    terminal: SignedClient, clock: FixedClock, backend: Backend, offset: timedelta
) -> None:
    before = state(backend)
    response = terminal.authorise(CARD, 10_000, "req-1", at=clock.now() + offset)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "occurred_at_out_of_window"
    assert problem["errors"][0]["field"] == "occurred_at"
    assert state(backend) == before


def test_a_retry_of_a_recorded_swipe_gets_its_answer_even_once_occurred_at_has_left_the_window(
    terminal: SignedClient, clock: FixedClock, backend: Backend
) -> None:
    """Idempotency comes before the window: an offline swipe sent near the 24 h edge, approved, its answer lost, retried."""
    swiped_at = clock.now() - timedelta(hours=24, seconds=-10)
    first = terminal.authorise(CARD, 10_000, "req-1", at=swiped_at)
    assert first.get_json()["status"] == "approved"
    before = state(backend)
    clock.set(clock.now() + timedelta(seconds=20))  # the retry comes 20 s later: occurred_at is now 24 h 10 s behind
    again = terminal.authorise(CARD, 10_000, "req-1", at=swiped_at)
    assert (again.status_code, again.data) == (200, first.data)
    other = terminal.authorise(CARD, 20_000, "req-1", at=swiped_at)  # the id reused for another swipe: still a conflict
    assert (other.status_code, other.get_json()["code"]) == (409, "idempotency_conflict")
    never_seen = terminal.authorise(CARD, 10_000, "req-2", at=swiped_at)  # and a new request is refused as before
    assert (never_seen.status_code, never_seen.get_json()["code"]) == (422, "occurred_at_out_of_window")
    assert state(backend) == before


def _swipe_body() -> bytes:
    return json.dumps(
        {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": "2026-11-25T12:00:00+08:00"}
    ).encode()


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda h: {k: v for k, v in h.items() if k != "X-Signature"}, 401, "signature_missing"),
        (lambda h: {k: v for k, v in h.items() if k != "X-Terminal-Id"}, 401, "signature_missing"),
        (lambda h: {**h, "X-Signature": "0" * 64}, 401, "signature_invalid"),
        (lambda h: {**h, "X-Signature": "zzzé"}, 401, "signature_invalid"),
        (lambda h: {**h, "X-Terminal-Id": "t-nobody"}, 401, "terminal_unknown"),
        (lambda h: {**h, "X-Timestamp": str(int(h["X-Timestamp"]) - 301)}, 401, "timestamp_out_of_window"),
        (lambda h: {**h, "X-Timestamp": str(int(h["X-Timestamp"]) + 301)}, 401, "timestamp_out_of_window"),
        (lambda h: {**h, "X-Timestamp": "yesterday"}, 401, "timestamp_out_of_window"),
        # Latin-1 header bytes that str.isdigit() takes for digits and int() refuses.
        (lambda h: {**h, "X-Timestamp": "\u00b2"}, 401, "timestamp_out_of_window"),
        (lambda h: {**h, "X-Timestamp": h["X-Timestamp"][:-1] + "\u00b9"}, 401, "timestamp_out_of_window"),
    ],
)
def test_unsigned_wrongly_signed_or_stale_requests_are_refused_and_change_nothing(
    terminal: SignedClient, backend: Backend, mutate: Any, status: int, code: str
) -> None:
    before = state(backend)
    body = _swipe_body()
    headers = mutate(terminal.headers("POST", "/v1/authorisations", body))
    response = terminal.client.post("/v1/authorisations", data=body, headers=headers)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == code
    assert state(backend) == before


def test_a_signature_over_another_body_or_path_is_refused(terminal: SignedClient, backend: Backend) -> None:
    before = state(backend)
    body = _swipe_body()
    headers = terminal.headers("POST", "/v1/authorisations", body.replace(b"10000", b"90000"))
    assert terminal.client.post("/v1/authorisations", data=body, headers=headers).status_code == 401
    headers = terminal.headers("POST", "/v1/authorisations", body)
    assert terminal.client.post("/v1/authorisations?explain=true", data=body, headers=headers).status_code == 401
    assert state(backend) == before


def test_a_path_sent_with_raw_non_ascii_bytes_is_verified_over_those_bytes(terminal: SignedClient) -> None:
    """The signature covers the bytes the till sent; WSGI hands the server those bytes as latin-1 text."""
    import hashlib
    import hmac

    body = _swipe_body()
    sent = "/v1/authorisations?note=café".encode()  # raw UTF-8 in the request line, as a till may send it
    timestamp = str(int(terminal.clock.now().timestamp()))
    message = b"POST\n" + sent + b"\n" + timestamp.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode()
    signature = hmac.new(terminal.secret.encode(), message, hashlib.sha256).hexdigest()
    headers = {**terminal.headers("POST", "/v1/authorisations", body), "X-Timestamp": timestamp, "X-Signature": signature}
    as_wsgi = sent.decode("latin-1")  # what gunicorn and werkzeug put in RAW_URI

    response = terminal.client.post(
        "/v1/authorisations", query_string=as_wsgi.partition("?")[2], data=body, headers=headers, environ_overrides={"RAW_URI": as_wsgi}
    )

    # Past the signature: what refuses it is the parameter the swipe does not take (a bad signature is a 401).
    assert response.status_code == 422, response.get_json()
    assert [error["field"] for error in response.get_json()["errors"]] == ["note"]
    headers["X-Signature"] = "0" * 64
    response = terminal.client.post(
        "/v1/authorisations", query_string=as_wsgi.partition("?")[2], data=body, headers=headers, environ_overrides={"RAW_URI": as_wsgi}
    )
    assert response.status_code == 401


def test_a_query_string_that_is_not_utf8_is_a_400_problem(terminal: SignedClient, backend: Backend) -> None:
    import hashlib
    import hmac

    before = state(backend)
    body = _swipe_body()
    sent = b"/v1/authorisations?explain=\xff"  # a raw byte, not %FF: gunicorn passes it on as latin-1
    timestamp = str(int(terminal.clock.now().timestamp()))
    message = b"POST\n" + sent + b"\n" + timestamp.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode()
    signature = hmac.new(terminal.secret.encode(), message, hashlib.sha256).hexdigest()
    headers = {**terminal.headers("POST", "/v1/authorisations", body), "X-Timestamp": timestamp, "X-Signature": signature}
    as_wsgi = sent.decode("latin-1")

    response = terminal.client.post(
        "/v1/authorisations",
        data=body,
        headers=headers,
        environ_overrides={"RAW_URI": as_wsgi, "QUERY_STRING": as_wsgi.partition("?")[2]},
    )

    assert response.status_code == 400, response.get_data()
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "bad_request"
    assert "not UTF-8" in response.get_json()["detail"]
    assert state(backend) == before


@pytest.mark.parametrize("terminal_id", ["t-m-1\x00", "\x00", "t" * 65, "t-m-1 ", "t/m/1"])
def test_a_terminal_id_no_terminal_can_have_is_unknown_without_a_query(terminal: SignedClient, backend: Backend, terminal_id: str) -> None:
    """PostgreSQL refuses a NUL in text; the id is refused before it is looked up, as unknown."""
    before = state(backend)
    body = _swipe_body()
    headers = {**terminal.headers("POST", "/v1/authorisations", body), "X-Terminal-Id": "placeholder"}

    # Through the lane (a well-formed swipe) and through Flask (a GET).
    posted = terminal.client.post("/v1/authorisations", data=body, headers=headers, environ_overrides={"HTTP_X_TERMINAL_ID": terminal_id})
    got = terminal.client.get(
        "/v1/authorisations/au_x",
        headers=terminal.headers("GET", "/v1/authorisations/au_x", b""),
        environ_overrides={"HTTP_X_TERMINAL_ID": terminal_id},
    )

    for response in (posted, got):
        assert (response.status_code, response.get_json()["code"]) == (401, "terminal_unknown")
    assert state(backend) == before


def authorise_in_time(terminal: SignedClient, request_id: str, waiting_for: str) -> Any:
    """A swipe that must answer (here within 30 s, where the engine's own limits give a few) rather than wait for ever."""
    outcome = finishes_within(30, lambda: terminal.authorise(CARD, 10_000, request_id))
    assert outcome[:1] == ["returned"], f"the swipe is still waiting for {waiting_for}"
    return outcome[1]


def test_the_openapi_document_describes_the_terminal_api(app: Any) -> None:
    spec = app.test_client().get("/openapi.json").get_json()
    assert set(spec["paths"]) >= {
        "/v1/authorisations",
        "/v1/authorisations/{authorisation_id}",
        "/v1/authorisations/{authorisation_id}/reversal",
        "/v1/authorisations/{authorisation_id}/refunds",
        "/v1/reversals",
    }
    post = spec["paths"]["/v1/authorisations"]["post"]
    assert {"200", "401", "403", "409", "422", "503"} <= set(post["responses"])
    assert "AuthorisationRequest" in spec["components"]["schemas"]


def test_a_counter_store_outage_is_a_503_and_records_nothing(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: Any
) -> None:
    import redis

    before = state(backend)

    def down(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("connection refused")

    monkeypatch.setattr(context.counters, "reserve", down)
    response = terminal.authorise(CARD, 10_000, "req-1")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "unavailable"
    assert state(backend) == before
    monkeypatch.undo()
    assert terminal.authorise(CARD, 10_000, "req-1").get_json()["status"] == "approved"  # the retry goes through


@pytest.fixture
def stalled_redis_url() -> Any:
    with silent_server() as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_hung_redis_is_a_503_not_a_hung_worker_and_records_nothing(
    terminal: SignedClient, context: EngineContext, backend: Backend, stalled_redis_url: str, monkeypatch: Any
) -> None:
    from pos_engine.store.redis_counters import RedisCounterStore

    before = state(backend)
    monkeypatch.setattr(context, "counters", RedisCounterStore.from_url(stalled_redis_url, namespace=backend.counters.namespace))
    # The engine's socket timeouts answer in about 2 s (the script, then dropping the claim); without
    # them the swipe waits for the hung server for ever. The fixture's teardown then frees the thread.
    response = authorise_in_time(terminal, "req-1", "the hung Redis")
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable"
    monkeypatch.undo()
    assert state(backend) == before
    assert terminal.authorise(CARD, 10_000, "req-1").get_json()["status"] == "approved"  # the retry goes through


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)  # SQLite has no server connection to lose
def test_a_database_connection_lost_on_the_swipe_write_is_a_503_and_the_retry_reconnects(
    terminal: SignedClient, context: EngineContext, backend: Backend
) -> None:
    """PostgreSQL + Redis write a swipe on a per-thread driver connection; a broken one is dropped, caps given back."""
    import psycopg

    terminal.authorise(CARD, 10_000, "req-warm")  # opens this thread's connection
    before = state(backend)
    direct = backend.database._direct
    assert direct is not None
    victim = direct.get().info.backend_pid
    with psycopg.connect(psycopg_url(backend.url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
    response = terminal.authorise(CARD, 10_000, "req-1")
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable"
    assert state(backend) == before  # nothing recorded, the reservation given back, no claim left
    retried = terminal.authorise(CARD, 10_000, "req-1")
    assert retried.status_code == 200
    assert retried.get_json()["status"] == "approved"
    assert direct.get().info.backend_pid != victim


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)  # a transactional counter store moves with the ledger
def test_a_swipe_recorded_but_whose_answer_was_lost_keeps_its_caps_and_answers_200(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: Any
) -> None:
    """PostgreSQL committed the record and the connection broke before the answer came back."""
    import psycopg

    from pos_engine.service.counters import reconcile_counters
    from pos_engine.store import db

    execute = db._DirectStatement.execute

    def committed_then_lost(self: Any, *args: Any) -> None:
        execute(self, *args)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(db._DirectStatement, "execute", committed_then_lost)
    response = terminal.authorise(CARD, 10_000, "req-1")
    monkeypatch.undo()
    # The engine looks the request up on a new connection, finds it recorded, and answers with it.
    assert response.status_code == 200
    assert response.get_json()["status"] == "approved"
    assert reconcile_counters(context) == []  # the caps it took stay taken: counters agree with the ledger
    retried = terminal.authorise(CARD, 10_000, "req-1")
    assert retried.data == response.data
    assert state(backend)["ledger_entries"] == 1
    assert reconcile_counters(context) == []


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)  # only Redis gives caps back and holds claims
def test_a_failed_swipe_whose_caps_cannot_be_given_back_still_leaves_its_request_retryable(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: Any
) -> None:
    """PostgreSQL cancels the record (nothing written), then Redis fails the give-back: the claim must still go."""
    import psycopg
    import redis

    from pos_engine.store import db

    def cancelled(self: Any, *args: Any) -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    def down(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(db._DirectStatement, "execute", cancelled)
    monkeypatch.setattr(context.counters, "apply", down)
    response = terminal.authorise(CARD, 10_000, "req-1")
    assert (response.status_code, response.get_json()["code"]) == (503, "unavailable")
    monkeypatch.undo()
    assert state(backend)["ledger_entries"] == 0
    retried = terminal.authorise(CARD, 10_000, "req-1")  # not 409 request_in_progress behind a claim left for nothing
    assert (retried.status_code, retried.get_json()["status"]) == (200, "approved")


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_worker_stopped_while_its_record_is_on_the_way_keeps_the_caps_of_what_may_commit(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: Any
) -> None:
    """A sync worker's SIGQUIT or timeout raises SystemExit wherever it waits, here once the record was sent (and committed)."""
    from pos_engine.service.counters import reconcile_counters
    from pos_engine.store import db

    execute = db._DirectStatement.execute

    def sent_then_stopped(self: Any, *args: Any) -> None:
        execute(self, *args)
        raise SystemExit(1)

    monkeypatch.setattr(db._DirectStatement, "execute", sent_then_stopped)
    with pytest.raises(SystemExit):
        terminal.authorise(CARD, 10_000, "req-1")
    monkeypatch.undo()
    assert state(backend)["ledger_entries"] == 1
    assert reconcile_counters(context) == []  # the committed swipe's caps are still taken: no cap can be exceeded
    retried = terminal.authorise(CARD, 10_000, "req-1")  # the claim was dropped; the retry finds the record
    assert retried.get_json()["status"] == "approved"
    assert state(backend)["ledger_entries"] == 1
    assert reconcile_counters(context) == []


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
@pytest.mark.parametrize("lookup", ["session still open", "database unreachable"])
def test_a_swipe_whose_record_is_in_doubt_keeps_its_caps_and_the_retry_records_it_once(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: Any, lookup: str
) -> None:
    """The answer was lost with the statement sent, and it cannot be told whether it committed: caps stay taken."""
    import psycopg

    from pos_engine.service.counters import reconcile_counters
    from pos_engine.store import db

    def lost(self: Any, *args: Any) -> None:  # the old session stays open: it might still commit
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def unreachable(*args: Any) -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(db._DirectStatement, "execute", lost)
    if lookup == "database unreachable":
        monkeypatch.setattr(db, "_after_lost_answer", unreachable)
    response = terminal.authorise(CARD, 10_000, "req-1")
    monkeypatch.undo()
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable"
    assert state(backend)["ledger_entries"] == 0
    # Counters may run ahead of the ledger (a cap use no swipe made), never behind it.
    ahead = reconcile_counters(context)
    assert ahead
    assert all(difference.stored_value > difference.ledger_value for difference in ahead)
    retried = terminal.authorise(CARD, 10_000, "req-1")  # the claim was dropped: the retry is a swipe of its own
    assert retried.get_json()["status"] == "approved"
    assert state(backend)["ledger_entries"] == 1


@contextmanager
def key_held_by_another_session(backend: Backend, terminal_id: str, request_id: str) -> Iterator[Any]:
    """A transaction, left open, that has taken the request's idempotency key: a record of that request waits for it."""
    import psycopg

    with psycopg.connect(psycopg_url(backend.url)) as stuck:
        stuck.execute(
            "INSERT INTO idempotency_records (terminal_id, request_id, request_hash, status_code, response_body, created_at)"
            " VALUES (%s, %s, 'stuck', 200, '', now())",
            (terminal_id, request_id),
        )
        yield stuck


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_record_postgresql_does_not_answer_in_time_is_a_503_and_the_retry_settles_it(
    terminal: SignedClient, context: EngineContext, backend: Backend, monkeypatch: Any, request: pytest.FixtureRequest
) -> None:
    """A stuck transaction holds the swipe's idempotency key: the swipe gives up waiting, and its record commits later."""
    import time

    from pos_engine.service.counters import reconcile_counters
    from pos_engine.store import db

    monkeypatch.setattr(db, "RECORD_ANSWER_S_MAX", 0.3)
    # A server that has not cancelled the record itself (its statement limit longer than the engine's wait).
    patient = db.Database(backend.url, statement_timeout_ms=30_000)
    request.addfinalizer(patient.dispose)
    monkeypatch.setattr(context, "single_statement", patient.single_statement)
    with key_held_by_another_session(backend, terminal.terminal_id, "req-1") as stuck:
        # Without a limit of its own the swipe waits as long as the stuck transaction.
        response = authorise_in_time(terminal, "req-1", "PostgreSQL")
        # Its session still waits on the key: whether it will commit cannot be told, so the caps stay taken.
        assert response.status_code == 503
        assert response.get_json()["code"] == "unavailable"
        stuck.rollback()
    deadline = time.monotonic() + 10
    while state(backend)["ledger_entries"] == 0 and time.monotonic() < deadline:  # it commits once the key is free
        time.sleep(0.05)
    assert state(backend)["ledger_entries"] == 1
    assert reconcile_counters(context) == []
    retried = terminal.authorise(CARD, 10_000, "req-1")  # a duplicate of the record that committed: replays it
    assert retried.status_code == 200
    assert retried.get_json()["status"] == "approved"
    assert state(backend)["ledger_entries"] == 1
    assert reconcile_counters(context) == []


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)
def test_a_record_stuck_behind_a_lock_is_cancelled_by_postgresql_a_503_that_gives_its_caps_back(
    terminal: SignedClient, context: EngineContext, backend: Backend
) -> None:
    """A stuck transaction holds the swipe's idempotency key: PostgreSQL's statement limit cancels the record, which
    therefore wrote nothing, so the caps go back and the retry is a swipe of its own."""

    from pos_engine.service.counters import reconcile_counters

    before = state(backend)
    with key_held_by_another_session(backend, terminal.terminal_id, "req-1") as stuck:
        response = authorise_in_time(terminal, "req-1", "PostgreSQL")
        assert response.status_code == 503
        assert response.get_json()["code"] == "unavailable"
        assert state(backend) == before  # nothing recorded, every cap given back, the claim dropped
        stuck.rollback()
    retried = terminal.authorise(CARD, 10_000, "req-1")
    assert retried.status_code == 200
    assert retried.get_json()["status"] == "approved"
    assert state(backend)["ledger_entries"] == 1
    assert reconcile_counters(context) == []


def _requests_after_a_swipe(terminal: SignedClient, authorisation_id: str) -> dict[str, Any]:
    return {
        "reversal": lambda: terminal.post(f"/v1/authorisations/{authorisation_id}/reversal", {"request_id": "adj-1"}),
        "refund": lambda: terminal.post(f"/v1/authorisations/{authorisation_id}/refunds", {"request_id": "adj-1", "amount_fen": 1_000}),
        "void by request id": lambda: terminal.post("/v1/reversals", {"request_id": "adj-1", "original_request_id": "req-1"}),
        "lookup": lambda: terminal.get(f"/v1/authorisations/{authorisation_id}"),
    }


@pytest.mark.parametrize("backend", ["pg_redis", "pg_sql"], indirect=True)
@pytest.mark.parametrize("operation", ["reversal", "refund", "void by request id", "lookup"])
def test_a_terminal_request_stuck_behind_a_lock_is_a_503_in_about_a_second_and_changes_nothing(
    terminal: SignedClient, context: EngineContext, backend: Backend, operation: str
) -> None:
    """Another session holds the authorisation (a row lock: an operator's psql, a job) or the whole ledger (a table
    lock, which even reads wait for): PostgreSQL cancels the request's statement, and the terminal may retry."""
    import psycopg

    from pos_engine.service.counters import reconcile_counters

    authorisation_id = terminal.authorise(CARD, 10_000, "req-1").get_json()["id"]
    request = _requests_after_a_swipe(terminal, authorisation_id)[operation]
    before = state(backend)
    with psycopg.connect(psycopg_url(backend.url)) as holder:
        if operation == "lookup":
            holder.execute("LOCK TABLE ledger_entries IN ACCESS EXCLUSIVE MODE")
        else:
            holder.execute("SELECT 1 FROM ledger_entries WHERE entry_id = %s FOR UPDATE", (authorisation_id,))
        # Without the statement limit the request waits as long as the lock is held.
        outcome = finishes_within(30, request)
        assert outcome[:1] == ["returned"], "the request is still waiting for the lock"
        assert outcome[1].status_code == 503
        assert outcome[1].get_json()["code"] == "unavailable"
        holder.rollback()
    assert state(backend) == before
    retried = request()
    assert retried.status_code == 200
    assert state(backend)["ledger_entries"] == before["ledger_entries"] + (operation != "lookup")
    assert reconcile_counters(context) == []


@pytest.mark.parametrize("backend", ["pg_redis"], indirect=True)  # SQLite runs one write transaction at a time
@pytest.mark.parametrize("operation", ["reversal", "refund"])
def test_a_retry_queued_behind_its_own_first_attempt_gets_the_first_attempt_s_answer(
    terminal: SignedClient,
    context: EngineContext,
    backend: Backend,
    operation: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A till resends a reversal (or a full refund) it has no answer to yet: both wait on the authorisation's lock."""
    import threading
    import time

    import psycopg

    from pos_engine.service.counters import reconcile_counters
    from pos_engine.store import db

    # Adjustments under a statement limit long enough to see both attempts queue, however slow the machine.
    patient = db.Database(backend.url, statement_timeout_ms=60_000)
    request.addfinalizer(patient.dispose)
    monkeypatch.setattr(context, "unit_of_work", patient.unit_of_work)
    authorisation_id = terminal.authorise(CARD, 10_000, "req-1").get_json()["id"]
    path, body = {
        "reversal": (f"/v1/authorisations/{authorisation_id}/reversal", {"request_id": "adj-1"}),
        "refund": (f"/v1/authorisations/{authorisation_id}/refunds", {"request_id": "adj-1", "amount_fen": 10_000}),
    }[operation]
    answers: list[Any] = []
    with psycopg.connect(psycopg_url(backend.url)) as holder, psycopg.connect(psycopg_url(backend.url), autocommit=True) as watcher:
        holder.execute("SELECT 1 FROM ledger_entries WHERE entry_id = %s FOR UPDATE", (authorisation_id,))
        attempts = [threading.Thread(target=lambda: answers.append(terminal.post(path, body))) for _ in range(2)]
        for attempt in attempts:
            attempt.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            if waiting is not None and waiting[0] == 2:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the two attempts did not both wait on the lock")
        holder.rollback()
        for attempt in attempts:
            attempt.join(30)
    assert [answer.status_code for answer in answers] == [200, 200], [answer.get_json() for answer in answers]
    assert answers[0].data == answers[1].data
    assert state(backend)["ledger_entries"] == 2  # the authorisation and one reversal or refund
    assert reconcile_counters(context) == []


@pytest.mark.parametrize("backend", ["pg_sql"], indirect=True)
def test_a_swipe_on_the_sql_counter_store_stuck_behind_a_counter_lock_is_a_503_and_changes_nothing(
    terminal: SignedClient, context: EngineContext, backend: Backend
) -> None:
    """PostgreSQL with the SQL counter store reserves caps in the swipe's transaction: a session holding the
    counters' rows holds the swipe, until PostgreSQL cancels it."""
    import psycopg

    from pos_engine.service.counters import reconcile_counters

    terminal.authorise(CARD, 10_000, "req-0")  # the counters' rows exist
    before = state(backend)
    with psycopg.connect(psycopg_url(backend.url)) as holder:
        holder.execute("SELECT 1 FROM counters FOR UPDATE")
        response = authorise_in_time(terminal, "req-1", "the counters' locks")
        assert response.status_code == 503
        assert response.get_json()["code"] == "unavailable"
        holder.rollback()
    assert state(backend) == before
    assert terminal.authorise(CARD, 10_000, "req-1").get_json()["status"] == "approved"
    assert reconcile_counters(context) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_sqlite_database_locked_past_its_timeout_is_a_503_and_records_nothing(
    terminal: SignedClient, backend: Backend, monkeypatch: Any
) -> None:
    import sqlite3

    from pos_engine.store.db import SqliteDirectRepository

    before = state(backend)

    def locked(*_args: Any, **_kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteDirectRepository, "record", locked)
    response = terminal.authorise(CARD, 10_000, "req-1")
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable"
    assert state(backend) == before  # the counters' reservation rolled back with the transaction
    monkeypatch.undo()
    assert terminal.authorise(CARD, 10_000, "req-1").get_json()["status"] == "approved"
