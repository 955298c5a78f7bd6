"""The hot request parsed without webargs: orjson and plain checks that accept a subset of what the schemas accept.

Every function here answers either exactly what the marshmallow schema (through
webargs) would load, or None: "not sure, take the full path". The full path owns
every refusal, so an error response never depends on this module. The checks use
the schema's own patterns and limits and marshmallow's own ISO parser, and
tests/api/test_fastparse.py compares them with the schema property by property.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from marshmallow import fields
from marshmallow.utils import is_aware

from pos_engine.api.schemas import CARD_NUMBER_PATTERN, REQUEST_ID_PATTERN
from pos_engine.limits import AMOUNT_FEN_MAX, ID_CHARS_MAX, REQUEST_ID_CHARS_MAX

AUTHORISATION_FIELDS = frozenset({"request_id", "card_number", "merchant_id", "amount_fen", "occurred_at"})

# The query strings of POST /v1/authorisations that ExplainQuerySchema loads without
# question; anything else (other spellings, repeats, extra parameters) takes the full path.
EXPLAIN_QUERIES = {b"": False, b"explain=false": False, b"explain=0": False, b"explain=true": True, b"explain=1": True}

# Compiled from the schema's own patterns and used as its WholeMatch validator uses
# them (`fullmatch`: a final newline is refused, as JSON Schema's `$` refuses it).
_request_id_match = re.compile(REQUEST_ID_PATTERN).fullmatch
_card_number_match = re.compile(CARD_NUMBER_PATTERN).fullmatch
# The function AwareDateTime(format="iso") parses with: datetime.fromisoformat in
# marshmallow 4, its own regex parser in marshmallow 3. Taking it from marshmallow's
# table keeps occurred_at the very same datetime whichever version is installed.
_parse_iso_datetime = fields.AwareDateTime.DESERIALIZATION_FUNCS["iso"]


def explain_flag(query_string: bytes) -> bool | None:
    """The `explain` flag of an authorisation's query string, or None to take the full path."""
    return EXPLAIN_QUERIES.get(query_string)


def authorisation_request(raw: bytes) -> dict[str, Any] | None:
    """The body as AuthorisationRequestSchema loads it, or None to take the full path.

    orjson accepts less than the json module (no NaN, no lone surrogates) and
    reads what both accept the same way, except integers beyond 64 bits, which it
    reads as floats: floats are refused here, so those fall back too.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or body.keys() != AUTHORISATION_FIELDS:
        return None
    request_id = body["request_id"]
    card_number = body["card_number"]
    merchant_id = body["merchant_id"]
    amount_fen = body["amount_fen"]
    occurred_at = body["occurred_at"]
    if type(request_id) is not str or not 1 <= len(request_id) <= REQUEST_ID_CHARS_MAX or _request_id_match(request_id) is None:
        return None
    if type(card_number) is not str or _card_number_match(card_number) is None:
        return None
    if type(merchant_id) is not str or not 1 <= len(merchant_id) <= ID_CHARS_MAX:
        return None
    # `type(...) is int` refuses booleans and floats, as Fen does.
    if type(amount_fen) is not int or not 1 <= amount_fen <= AMOUNT_FEN_MAX:
        return None
    if type(occurred_at) is not str:
        return None
    try:
        occurred = _parse_iso_datetime(occurred_at)
    except (TypeError, AttributeError, ValueError):  # what marshmallow turns into "Not a valid datetime."
        return None
    if not is_aware(occurred):
        return None
    return {
        "request_id": request_id,
        "card_number": card_number,
        "merchant_id": merchant_id,
        "amount_fen": amount_fen,
        "occurred_at": occurred,
    }
