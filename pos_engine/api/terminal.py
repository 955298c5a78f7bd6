"""The terminal API: signed requests from merchant tills. Views parse, call one use case, answer."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from pos_engine.api import schemas, signing
from pos_engine.service import swipes
from pos_engine.service.context import EngineContext
from pos_engine.service.errors import Unprocessable
from pos_engine.service.responses import encode


class _JsonParser(FlaskParser):
    """webargs' parser, refusing as malformed JSON what the json module raises beyond decode errors.

    Integers longer than Python's digit limit raise ValueError and very deep
    nesting raises RecursionError: both are bad input, not engine failures.
    """

    def _raw_load_json(self, req: Any) -> Any:
        try:
            return super()._raw_load_json(req)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise
        except (ValueError, RecursionError) as error:
            self._handle_invalid_json_error(json.JSONDecodeError(str(error), "", 0), req)


class _Blueprint(Blueprint):  # type: ignore[misc]
    ARGUMENTS_PARSER = _JsonParser()


blp = _Blueprint(
    "terminal",
    __name__,
    url_prefix="/v1",
    description="Signed terminal requests: headers X-Terminal-Id, X-Timestamp (unix s), "
    "X-Signature = hex HMAC-SHA256 of METHOD\\nPATH\\nTIMESTAMP\\nSHA256_HEX(BODY) keyed with the terminal's secret.",
)
ERRORS = {
    400: "malformed_json, bad_request (a query string that is not UTF-8)",
    401: "signature_missing, signature_invalid, timestamp_out_of_window, terminal_unknown",
    403: "terminal_inactive, merchant_mismatch",
    409: "idempotency_conflict, request_in_progress, and state conflicts",
    413: "body_too_large",
    422: "validation_failed (a body field, or a query parameter the operation does not take or that is given twice) "
    "and business validation",
    503: "unavailable: the database or the counter store did not answer in time; retry with the same request_id",
}


# The query parameters each operation takes, by endpoint; every other operation takes none. webargs would let
# any other parameter through (its default for the query is to leave unknown names out), and the first of a
# repeated one win: a till that misspells `explain` would get no explanation and no word why.
QUERY_PARAMETERS = {"terminal.Authorisations": frozenset(schemas.ExplainQuerySchema().fields)}


def check_query_parameters() -> None:
    """Refuse (422 validation_failed, naming each) a query parameter the operation does not take, or one given twice."""
    known = QUERY_PARAMETERS.get(request.endpoint or "", frozenset())
    takes = ", ".join(sorted(known)) or "none"
    errors: dict[str, list[str]] = {}
    for name in request.args:
        if name not in known:
            errors[name or "query"] = [f"unknown query parameter (this operation takes: {takes})"]
        elif len(request.args.getlist(name)) > 1:
            errors[name] = ["given more than once"]
    if errors:
        raise Unprocessable("validation_failed", "the request has invalid fields", errors)


def engine() -> EngineContext:
    ctx: EngineContext = current_app.extensions["pos_engine"]
    return ctx


def raw_path() -> str:
    """The path and query string exactly as the terminal sent them (what it signed)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    query = request.query_string.decode("latin-1")
    return quote(request.path) + (f"?{query}" if query else "")


def request_hash() -> str:
    return signing.request_hash(request.method, g.raw_path, request.get_data(cache=True))


@blp.before_request
def authenticate() -> None:
    g.raw_path = raw_path()
    g.terminal = signing.verify(
        engine(),
        request.headers.get("X-Terminal-Id"),
        request.headers.get("X-Timestamp"),
        request.headers.get("X-Signature"),
        request.method,
        g.raw_path,
        request.get_data(cache=True),
    )
    try:
        request.query_string.decode("utf-8")  # what werkzeug decodes the arguments with, raising if it cannot
    except UnicodeDecodeError as error:
        raise BadRequest(f"the query string is not UTF-8 (byte {error.start + 1}); percent-encode other bytes") from None
    check_query_parameters()
    if request.method == "POST" and not is_json_request(request):
        # Read as JSON anyway, the body would only say every field is missing.
        raise UnsupportedMediaType(f"the body must be sent as Content-Type: application/json, not {request.mimetype or 'none'}")


def stored(response: swipes.StoredResponse) -> Response:
    return Response(response.body, status=response.status_code, mimetype="application/json")


def error_responses(view: Any) -> Any:
    for status in ERRORS:
        view = blp.alt_response(status, schema=schemas.ProblemSchema, description=ERRORS[status], content_type="application/problem+json")(
            view
        )
    return view


def not_found_response(view: Any) -> Any:
    """An operation on an authorisation id: 404 when this terminal's merchant has no such authorisation."""
    return blp.alt_response(404, schema=schemas.ProblemSchema, description="not_found", content_type="application/problem+json")(view)


def body_error_responses(view: Any) -> Any:
    """The errors of an operation with a JSON body: those of every operation, and 415."""
    view = error_responses(view)
    return blp.alt_response(
        415, schema=schemas.ProblemSchema, description="unsupported_media_type", content_type="application/problem+json"
    )(view)


def answer_authorisation(body: dict[str, Any], explain: bool) -> Response:
    """Authorise a parsed swipe and answer the stored response."""
    request_ = swipes.AuthorisationRequest(**body)
    return stored(swipes.authorise(engine(), g.terminal, request_, request_hash(), explain=explain))


@blp.route("/authorisations")
class Authorisations(MethodView):
    # What reaches this view is what pos_engine.api.lane left to Flask: webargs parses it and owns every refusal.
    @blp.arguments(schemas.ExplainQuerySchema(), location="query", as_kwargs=True)
    @blp.arguments(schemas.AuthorisationRequestSchema())
    @blp.response(200, schemas.AuthorisationSchema, description="approved or declined (a business decline is 200)")
    @body_error_responses
    def post(self, body: dict[str, Any], explain: bool) -> Response:
        """Authorise a swipe: decide its discount and subsidy and record it."""
        return answer_authorisation(body, explain)


@blp.route("/authorisations/<string:authorisation_id>")
class AuthorisationById(MethodView):
    @blp.response(200, schemas.AuthorisationStateSchema)
    @error_responses
    @not_found_response
    def get(self, authorisation_id: str) -> Response:
        """An authorisation as it stands, with its reversals and refunds."""
        body = swipes.get_authorisation(engine(), g.terminal, authorisation_id)
        return Response(encode(body), status=200, mimetype="application/json")


@blp.route("/authorisations/<string:authorisation_id>/reversal")
class Reversal(MethodView):
    @blp.arguments(schemas.ReversalRequestSchema())
    @blp.response(200, schemas.AdjustmentSchema)
    @body_error_responses
    @not_found_response
    def post(self, body: dict[str, Any], authorisation_id: str) -> Response:
        """Void an authorisation in full (what is not yet refunded)."""
        return stored(swipes.adjust(engine(), g.terminal, authorisation_id, "reversal", body["request_id"], request_hash()))


@blp.route("/authorisations/<string:authorisation_id>/refunds")
class Refunds(MethodView):
    @blp.arguments(schemas.RefundRequestSchema())
    @blp.response(200, schemas.AdjustmentSchema)
    @body_error_responses
    @not_found_response
    def post(self, body: dict[str, Any], authorisation_id: str) -> Response:
        """Refund part or all of an authorisation; discount and subsidy are clawed back pro rata."""
        return stored(
            swipes.adjust(engine(), g.terminal, authorisation_id, "refund", body["request_id"], request_hash(), body["amount_fen"])
        )


@blp.route("/reversals")
class Voids(MethodView):
    @blp.arguments(schemas.VoidRequestSchema())
    @blp.response(200, schemas.VoidResultSchema)
    @body_error_responses
    def post(self, body: dict[str, Any]) -> Response:
        """Void whatever a request the terminal got no answer to did (after a timeout); harmless if nothing."""
        return stored(swipes.reverse_request(engine(), g.terminal, body["request_id"], body["original_request_id"], request_hash()))
