"""The fast parse of an authorisation either declines or loads exactly what the webargs/marshmallow path loads."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from hypothesis import example, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException

from pos_engine.api import fastparse, schemas
from pos_engine.api import terminal as terminal_api
from pos_engine.limits import AMOUNT_FEN_MAX, CARD_NUMBER_DIGITS_MAX, CARD_NUMBER_DIGITS_MIN, ID_CHARS_MAX, REQUEST_ID_CHARS_MAX
from tests.api.conftest import CARD
from tests.helpers import SignedClient

FIELDS = ("request_id", "card_number", "merchant_id", "amount_fen", "occurred_at")
VALID = {"request_id": "req-1", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 10_000, "occurred_at": "2026-11-25T12:00:00+08:00"}
PARSER = terminal_api.blp.ARGUMENTS_PARSER
BARE_APP = Flask(__name__)


def full_path_load(raw: bytes, content_type: str = "application/json") -> dict[str, Any] | None:
    """What the documented view's webargs parser loads from `raw`, or None where it answers 400 or 422."""
    with BARE_APP.test_request_context("/v1/authorisations", method="POST", data=raw, content_type=content_type):
        try:
            loaded: dict[str, Any] = PARSER.parse(schemas.AuthorisationRequestSchema(), location="json")
        except HTTPException as error:
            assert error.code in (400, 422)
            return None
    return loaded


def assert_identical(fast: dict[str, Any], full: dict[str, Any]) -> None:
    # repr tells 1 from True and 1.0, and a datetime's offset, which == alone would not.
    assert fast == full
    assert repr(fast) == repr(full)
    assert [type(value) for value in fast.values()] == [type(value) for value in full.values()]


def orjson_can_read(body: Any) -> bool:
    """False where the body holds a string with a lone surrogate: the json module reads it, orjson refuses."""
    if isinstance(body, dict):
        return all(orjson_can_read(key) and orjson_can_read(value) for key, value in body.items())
    if isinstance(body, str):
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


# Values of each field that the schema accepts.
offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)).map(timezone)
moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9998, 12, 30), timezones=offsets | st.just(timezone.utc))
TIMESPECS = ("auto", "hours", "minutes", "seconds", "milliseconds", "microseconds")


@st.composite
def aware_timestamps(draw: st.DrawFn) -> str:
    moment = draw(moments)
    text = moment.isoformat(sep=draw(st.sampled_from("T t")), timespec=draw(st.sampled_from(TIMESPECS)))
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text.removesuffix("+00:00") + "Z"
    return text


@st.composite
def near_miss_timestamps(draw: st.DrawFn) -> str:
    moment = draw(moments)
    return draw(
        st.sampled_from(
            [
                moment.date().isoformat(),  # a date only
                moment.replace(tzinfo=None).isoformat(),  # no offset
                moment.strftime("%Y%m%dT%H%M%S%z"),  # ISO basic format
                moment.isoformat().translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),  # Arabic-Indic digits
                moment.isoformat().translate(str.maketrans("0123456789", "０１２３４５６７８９")),  # full-width digits
                moment.isoformat() + "\n",
                " " + moment.isoformat(),
                moment.isoformat().replace("+", " +"),
                moment.isoformat().replace(":", ""),
                moment.isoformat()[:-1],
                moment.isoformat(timespec="microseconds").replace(".", ","),
                moment.ctime(),
            ]
        )
    )


VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    # fullmatch, as the schema's WholeMatch: no final newline.
    "request_id": st.from_regex(schemas.REQUEST_ID_PATTERN, fullmatch=True).filter(lambda text: len(text) <= REQUEST_ID_CHARS_MAX),
    "card_number": st.from_regex(schemas.CARD_NUMBER_PATTERN, fullmatch=True),
    "merchant_id": st.text(min_size=1, max_size=ID_CHARS_MAX),
    "amount_fen": st.integers(1, AMOUNT_FEN_MAX) | st.sampled_from([1, AMOUNT_FEN_MAX]),
    "occurred_at": aware_timestamps(),
}

# Values of any field that the schema may well refuse, or that the json module and orjson read differently.
ODD_VALUES = (
    st.none()
    | st.booleans()
    | st.floats()
    | st.sampled_from([10_000.0, 1e400, 0.5, -0.0])
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, AMOUNT_FEN_MAX + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30])
    | st.text(max_size=80)
    | st.sampled_from(["", "\ud800", "\ud83d\ude00", "\x00", "req-1\n", "x" * (REQUEST_ID_CHARS_MAX + 1), "10000"])
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
# Each field's values at and just beyond its limits, drawn often so that an off-by-one shows.
BOUNDARIES: dict[str, list[Any]] = {
    "request_id": ["", "r", "r" * REQUEST_ID_CHARS_MAX, "r" * (REQUEST_ID_CHARS_MAX + 1), "req-1\n", "req-1\n\n", "req 1", "req/1", "réq"],
    "card_number": [
        *("6" * digits for digits in range(CARD_NUMBER_DIGITS_MIN - 1, CARD_NUMBER_DIGITS_MAX + 2)),
        "١٢٣٤٥٦٧٨٩٠١٢٣",  # Arabic-Indic digits: str.isdigit and \d take them, [0-9] does not
        "６２１７０００００００００００００１",  # full-width digits
        CARD + "\n",
        " " + CARD,
        CARD + " ",
        "+" + CARD[1:],
    ],
    "merchant_id": ["", "m", "m" * ID_CHARS_MAX, "m" * (ID_CHARS_MAX + 1), "\ud800", "\x00", " "],
    "amount_fen": [0, 1, AMOUNT_FEN_MAX, AMOUNT_FEN_MAX + 1, -1, True, False, 1.0, 10_000.0, "10000", 2**63, 2**64, 10**30],
    "occurred_at": ["", "2026-11-25", "2026-11-25T12:00:00", "2026-11-25T12:00:00Z", "2026-11-25T12:00:00+08:00", "2026-W48-3T12:00Z"],
}
FIELD_NEAR_MISSES: dict[str, st.SearchStrategy[Any]] = {
    "request_id": st.text(max_size=REQUEST_ID_CHARS_MAX + 2) | st.from_regex(schemas.REQUEST_ID_PATTERN),
    "card_number": st.text(
        alphabet=st.characters(categories=["Nd"]), min_size=CARD_NUMBER_DIGITS_MIN - 2, max_size=CARD_NUMBER_DIGITS_MAX + 2
    )
    | st.text(alphabet="0123456789", min_size=CARD_NUMBER_DIGITS_MIN - 2, max_size=CARD_NUMBER_DIGITS_MAX + 2)
    | st.integers(10**11, 10**19),
    "merchant_id": st.text(min_size=ID_CHARS_MAX - 1, max_size=ID_CHARS_MAX + 2),
    "amount_fen": st.integers(-3, 3) | st.integers(AMOUNT_FEN_MAX - 2, AMOUNT_FEN_MAX + 2) | st.text("0123456789", min_size=1),
    "occurred_at": near_miss_timestamps() | aware_timestamps(),
}


def near_miss(draw: st.DrawFn, field: str) -> Any:
    """A third of the time a boundary of the field, else an odd value of any type or one made for the field."""
    kind = draw(st.integers(0, 2))
    return draw(st.sampled_from(BOUNDARIES[field]) if kind == 0 else ODD_VALUES if kind == 1 else FIELD_NEAR_MISSES[field])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A JSON body: mostly an authorisation with a few fields off, sometimes keys missing or extra, sometimes no object at all."""
    if draw(st.integers(0, 19)) == 0:
        return json.dumps(draw(ODD_VALUES)).encode()
    perturbed = draw(st.sets(st.sampled_from(FIELDS), max_size=3))
    body = {field: near_miss(draw, field) if field in perturbed else draw(VALID_VALUES[field]) for field in FIELDS}
    if draw(st.integers(0, 9)) == 0:
        for field in draw(st.sets(st.sampled_from(FIELDS), min_size=1, max_size=2)):
            del body[field]
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["extra", "explain", "Request_id", "amount_fen ", ""]))] = draw(ODD_VALUES)
    keys = draw(st.permutations(list(body)))
    raw = json.dumps(
        {key: body[key] for key in keys}, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    )
    if draw(st.integers(0, 9)) == 0 and len(raw) > 2:  # a repeated key: both parsers keep the last
        raw = raw[:-1] + f', "{draw(st.sampled_from(FIELDS))}": {json.dumps(draw(ODD_VALUES))}}}'
    text = draw(st.sampled_from(["", " ", "\n", "\ufeff"])) + raw + draw(st.sampled_from(["", " ", "\r\n", "x"]))
    # A lone surrogate written unescaped makes bytes that are not UTF-8: both parsers refuse them.
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=1000, deadline=None)
@given(bodies())
@example(json.dumps(VALID).encode())
@example(json.dumps({**VALID, "amount_fen": True}).encode())
@example(json.dumps({**VALID, "amount_fen": 10_000.0}).encode())
@example(json.dumps({**VALID, "amount_fen": 2**64}).encode())
@example(json.dumps({**VALID, "card_number": "١٢٣٤٥٦٧٨٩٠١٢٣"}).encode())
@example(json.dumps({**VALID, "card_number": CARD + "\n"}).encode())
@example(json.dumps({**VALID, "request_id": "req-1\n"}).encode())
@example(json.dumps({**VALID, "occurred_at": "2026-11-25T04:00:00Z"}).encode())
@example(json.dumps({**VALID, "occurred_at": "2026-11-25T12:00:00.123+08:00"}).encode())
@example(json.dumps({**VALID, "occurred_at": "2026-11-25"}).encode())
@example(json.dumps({**VALID, "occurred_at": "2026-11-25T12:00:00"}).encode())
@example(json.dumps({**VALID, "merchant_id": "\ud800"}).encode())
@example(json.dumps({**VALID, "extra": 1}).encode())
@example(json.dumps([VALID]).encode())
@example(b'{"request_id": "req-1", "request_id": "req-2", ' + json.dumps(VALID).encode()[1:])
@example("\ufeff".encode() + json.dumps(VALID).encode())
@example(b"")
@example(b"null")
def test_the_fast_parse_declines_or_loads_exactly_what_the_schema_loads(raw: bytes) -> None:
    fast = fastparse.authorisation_request(raw)
    full = full_path_load(raw)
    if fast is not None:
        assert full is not None, "the fast parse accepted what the schema refuses"
        assert_identical(fast, full)
    elif full is not None:
        # It declines only what orjson cannot read; anything else would be a needless trip down the slow path.
        assert not orjson_can_read(json.loads(raw))


@pytest.mark.parametrize(("field", "value"), [(field, value) for field, values in BOUNDARIES.items() for value in values])
def test_at_each_limit_the_fast_parse_takes_what_the_schema_takes(field: str, value: Any) -> None:
    raw = json.dumps({**VALID, field: value}).encode()
    fast = fastparse.authorisation_request(raw)
    full = full_path_load(raw)
    if value == "\ud800":
        assert (fast, full is not None) == (None, True)  # a lone surrogate: the json module reads it, orjson does not
    else:
        assert (fast is not None) == (full is not None)
    if fast is not None and full is not None:
        assert_identical(fast, full)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(VALID_VALUES))
def test_the_fast_parse_takes_every_valid_authorisation(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    fast = fastparse.authorisation_request(raw)
    full = full_path_load(raw)
    assert fast is not None
    assert full is not None
    assert_identical(fast, full)


@pytest.mark.parametrize("query", sorted(fastparse.EXPLAIN_QUERIES))
def test_the_explain_flag_is_what_the_query_schema_loads(query: bytes) -> None:
    with BARE_APP.test_request_context(f"/v1/authorisations?{query.decode()}" if query else "/v1/authorisations"):
        loaded = PARSER.parse(schemas.ExplainQuerySchema(), location="query")
    assert fastparse.explain_flag(query) is loaded["explain"]


@pytest.mark.parametrize(
    "query",
    [b"explain=TRUE", b"explain=yes", b"explain=", b"explain", b"explain=true&explain=false", b"explain=1&x=2", b"x=1", b"explain=true&"],
)
def test_any_other_query_string_is_left_to_the_full_path(query: bytes) -> None:
    assert fastparse.explain_flag(query) is None


def test_a_well_formed_authorisation_skips_webargs_and_a_malformed_one_does_not(
    terminal: SignedClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    parse = PARSER.parse

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        parsed.append(kwargs["location"])
        return parse(*args, **kwargs)

    monkeypatch.setattr(PARSER, "parse", counting_parse)
    assert terminal.authorise(CARD, 10_000, "req-1").status_code == 200
    assert parsed == []
    assert terminal.post("/v1/authorisations", {**VALID, "request_id": "req-2", "amount_fen": "10000"}).status_code == 422
    assert parsed == ["query", "json"]


def test_a_well_formed_body_sent_as_text_is_still_refused(terminal: SignedClient) -> None:
    raw = json.dumps(VALID).encode()
    headers = {**terminal.headers("POST", "/v1/authorisations", raw), "Content-Type": "text/plain"}
    response = terminal.client.post("/v1/authorisations", data=raw, headers=headers)
    assert response.status_code == 415
    problem = response.get_json()
    assert problem["code"] == "unsupported_media_type"
    assert "application/json" in problem["detail"]
    assert "text/plain" in problem["detail"]


def test_the_fast_and_the_full_path_answer_the_same_swipe_alike(terminal: SignedClient) -> None:
    fast = terminal.authorise(CARD, 10_000, "req-1", explain=True)
    # A percent-encoded query is beyond the fast path, which takes only the exact bytes `explain=true`.
    path = "/v1/authorisations?explain=%74rue"
    raw = json.dumps({**VALID, "request_id": "req-2", "occurred_at": terminal.clock.now().isoformat()}).encode()
    full = terminal.client.post(path, data=raw, headers=terminal.headers("POST", path, raw))
    assert (fast.status_code, full.status_code) == (200, 200)
    fast_body, full_body = fast.get_json(), full.get_json()
    assert (fast_body.pop("request_id"), full_body.pop("request_id")) == ("req-1", "req-2")
    assert fast_body.pop("id") != full_body.pop("id")
    assert fast_body["status"] == "approved"
    assert fast_body["explanations"]
    assert fast_body == full_body
