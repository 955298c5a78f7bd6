"""The swipe lane: `POST /v1/authorisations` answered in WSGI, in front of Flask, when the swipe is plainly well formed.

The engine's hottest request is a till's swipe. Flask's request context, URL
map, blueprint hooks, view dispatch and response object cost more CPU than
everything the engine does for a swipe besides its two round trips
(docs/performance.md), so a swipe that needs no error message of Flask's
takes this lane:

- `POST` to `/v1/authorisations`, a JSON content type, a `Content-Length` of
  at most the body limit, a query string `fastparse.explain_flag` reads, and
  the path as sent (`RAW_URI`, `REQUEST_URI`);
- a body that `fastparse.authorisation_request` loads (exactly what the
  schema would load).

Anything else goes to Flask untouched (the body read here is put back), and
Flask owns every refusal of a malformed request. Once a swipe is taken, the
lane does what the Flask view does, with the same functions: `signing.verify`,
`signing.request_hash`, `swipes.authorise`; what they raise is answered by
`errors.engine_problem`, the function Flask's error handlers call. Status
lines and headers are the ones werkzeug writes for the same response
(tests/api/test_lane.py compares the two paths byte for byte).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from webargs.core import is_json
from werkzeug.http import HTTP_STATUS_CODES

from pos_engine.api import fastparse, signing
from pos_engine.api.errors import PROBLEM_MIMETYPE, engine_problem
from pos_engine.limits import REQUEST_BODY_BYTES_MAX
from pos_engine.service import swipes
from pos_engine.service.context import EngineContext

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

PATH = "/v1/authorisations"
_JSON = "application/json"


class SwipeLane:
    """WSGI middleware: takes the swipes it is sure of, hands every other request to `app` (Flask's wsgi_app)."""

    def __init__(self, app: WsgiApp, ctx: EngineContext) -> None:
        self.app = app
        self.ctx = ctx

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        taken = self._take(environ)
        if taken is None:
            return self.app(environ, start_response)
        path, raw, body, explain = taken
        try:
            terminal = signing.verify(
                self.ctx,
                environ.get("HTTP_X_TERMINAL_ID"),
                environ.get("HTTP_X_TIMESTAMP"),
                environ.get("HTTP_X_SIGNATURE"),
                "POST",
                path,
                raw,
            )
            answer = swipes.authorise(
                self.ctx, terminal, swipes.AuthorisationRequest(**body), signing.request_hash("POST", path, raw), explain=explain
            )
        except Exception as error:  # answered as Flask's error handlers answer it
            status, problem = engine_problem(error, "POST", PATH, environ.get("HTTP_X_REQUEST_ID"))
            return _respond(start_response, status, PROBLEM_MIMETYPE, problem)
        return _respond(start_response, answer.status_code, _JSON, answer.body)

    def _take(self, environ: dict[str, Any]) -> tuple[str, bytes, dict[str, Any], bool] | None:
        """The path as sent, the raw body, the parsed body and the explain flag; or None to leave the request to Flask.

        Whatever the request, a body read here is put back for Flask to read.
        """
        # The media type as werkzeug reads it (Request.mimetype): only space and tab are stripped.
        if not is_json(environ.get("CONTENT_TYPE", "").partition(";")[0].strip(" \t").lower()):
            return None
        explain = fastparse.explain_flag(environ.get("QUERY_STRING", "").encode("latin-1"))
        path = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        declared = environ.get("CONTENT_LENGTH", "")
        # Digits only, and few enough to read (Python refuses over 4,300); anything longer is over the limit anyway.
        length = int(declared) if declared.isascii() and declared.isdigit() and len(declared) <= 12 else None
        if explain is None or not path or length is None or length > REQUEST_BODY_BYTES_MAX:
            return None
        if environ.get("HTTP_TRANSFER_ENCODING"):  # Flask would read a chunked body, not Content-Length bytes
            return None
        try:
            raw = environ["wsgi.input"].read(length)
        except (OSError, ValueError):  # the server lost the connection mid-body (gunicorn's NoMoreData is an OSError)
            raw = b""
        environ["wsgi.input"] = io.BytesIO(raw)
        if len(raw) != length:  # the till hung up mid-body: Flask refuses what arrived
            return None
        body = fastparse.authorisation_request(raw)
        if body is None:
            return None
        return str(path), raw, body, explain


def _respond(start_response: Callable[..., Any], status: int, mimetype: str, body: bytes) -> list[bytes]:
    """The status line and headers werkzeug writes for the same response ('200 OK', '401 UNAUTHORIZED')."""
    start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", [("Content-Type", mimetype), ("Content-Length", str(len(body)))])
    return [body]
