"""Raw requests, as gunicorn hands them on from whatever bytes a till sends: never a 500, never a change.

The test client normalises what it sends (it percent-encodes the path and
query, it refuses some header bytes); gunicorn passes raw bytes on as latin-1
text. So these requests are WSGI environs built by hand, each signed over the
very bytes it carries, so that the odd bytes get past the signature check to
whatever reads them next. Both backends run: PostgreSQL refuses text that
SQLite stores (a NUL, for one).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from tests.api.conftest import CARD
from tests.api.test_terminal_api import state
from tests.conftest import Backend
from tests.helpers import SignedClient

EXAMPLES = itertools.count()
TARGETS = ["/v1/authorisations", "/v1/authorisations/au_x", "/v1/authorisations/au_x/reversal", "/v1/authorisations/au_x/refunds"]
# Bytes a request line or a header may carry through gunicorn: any but CR, LF (and NUL, which gunicorn
# refuses in headers but other servers pass on).
raw_text = st.binary(max_size=12).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1"))
odd_values = st.one_of(raw_text, st.sampled_from(["\x00", "t-m-1\x00", "\ud800", "é", "9" * 70, "", " t-m-1"]))


@st.composite
def raw_requests(draw: st.DrawFn) -> dict[str, Any]:
    # A request id of its own, so that each well-formed swipe is recorded afresh rather than replayed.
    body: dict[str, Any] = {"request_id": f"raw-{next(EXAMPLES)}", "card_number": CARD, "merchant_id": "m-1", "amount_fen": 1_000}
    body["occurred_at"] = "2026-11-25T12:00:00+08:00"
    field = draw(st.sampled_from([None, "request_id", "card_number", "merchant_id", "occurred_at"]))
    if field is not None:
        body[field] = draw(odd_values)
    return {
        "method": draw(st.sampled_from(["POST", "POST", "GET"])),
        "path": draw(st.sampled_from(TARGETS)),
        "query": draw(st.one_of(st.just(""), st.just("explain=true"), raw_text)),
        "terminal_id": draw(st.one_of(st.just("t-m-1"), st.just("t-m-1"), odd_values)),
        "content_type": draw(st.sampled_from(["application/json", "application/json; charset=\xff", "\x00"])),
        "body": json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass"),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=raw_requests())
def test_a_raw_request_of_any_bytes_gets_an_answer_below_500_and_changes_nothing_unless_approved(
    case: dict[str, Any], terminal: SignedClient, backend: Backend
) -> None:
    before = state(backend)
    target = case["path"] + (f"?{case['query']}" if case["query"] else "")
    timestamp = str(int(terminal.clock.now().timestamp()))
    sent = target.encode("latin-1")  # the bytes on the wire, as WSGI gives them back
    message = f"{case['method']}\n".encode() + sent + f"\n{timestamp}\n".encode() + hashlib.sha256(case["body"]).hexdigest().encode()
    environ = EnvironBuilder(path=case["path"], method=case["method"], data=case["body"]).get_environ()
    environ.update(
        RAW_URI=target,
        QUERY_STRING=case["query"],
        CONTENT_TYPE=case["content_type"],
        HTTP_X_TERMINAL_ID=case["terminal_id"],
        HTTP_X_TIMESTAMP=timestamp,
        HTTP_X_SIGNATURE=hmac.new(terminal.secret.encode(), message, hashlib.sha256).hexdigest(),
    )
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    answer = b"".join(terminal.client.application(environ, lambda status, headers, exc_info=None: seen.append((status, headers))))

    status = int(seen[0][0].split()[0])
    assert status < 500, (status, answer)
    assert b"Traceback" not in answer
    if status >= 400:
        assert dict(seen[0][1])["Content-Type"] == "application/problem+json", answer
        assert json.loads(answer)["code"]
        assert state(backend) == before
