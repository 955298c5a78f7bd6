"""The one place that turns exceptions into RFC 9457 problem+json responses."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

import psycopg
import redis
from flask import Flask, Response, request
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from pos_engine.service.errors import (
    Conflict,
    Forbidden,
    NotFound,
    OutcomeUnknown,
    ServiceError,
    Unauthenticated,
    Unavailable,
    Unprocessable,
)

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"
SERVICE_STATUS = {
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unprocessable: 422,
    Unavailable: 503,
}
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def problem_body(
    status: int,
    code: str,
    detail: str,
    field_errors: dict[str, list[str]] | None = None,
    title: str | None = None,
    request_id: str | None = None,
) -> bytes:
    """The problem+json document of an error response; every error body is made here."""
    body: dict[str, Any] = {
        "type": f"urn:pos-engine:problem:{code}",
        "title": title or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field_errors:
        body["errors"] = [{"field": field, "message": message} for field, messages in field_errors.items() for message in messages]
    if request_id:
        body["request_id"] = request_id[:64]
    return json.dumps(body).encode()


def problem(status: int, code: str, detail: str, field_errors: dict[str, list[str]] | None = None, title: str | None = None) -> Response:
    """A problem+json response to the request in hand, echoing its X-Request-Id."""
    request_id = request.headers.get("X-Request-Id") if request else None
    return Response(problem_body(status, code, detail, field_errors, title, request_id), status=status, mimetype=PROBLEM_MIMETYPE)


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error messages into {'field.path': [message, …]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = "" if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            for field, texts in flatten_messages(value, name).items():
                flat.setdefault(field, []).extend(texts)
    elif isinstance(messages, list) and all(isinstance(item, str) for item in messages):
        flat[prefix or "body"] = list(messages)
    elif isinstance(messages, list):
        for index, item in enumerate(messages):
            for field, texts in flatten_messages(item, f"{prefix}[{index}]").items():
                flat.setdefault(field, []).extend(texts)
    else:
        flat[prefix or "body"] = [str(messages)]
    return flat


def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    if status == 400 and messages is not None:
        return problem(400, "malformed_json", "the request body is not valid JSON")
    if status == 422 and messages is not None:
        # webargs nests the errors under the location ('json', 'query'); drop that level.
        inner: dict[str, Any] = {}
        for location_messages in messages.values():
            if isinstance(location_messages, dict):
                inner.update(location_messages)
        return problem(422, "validation_failed", "the request has invalid fields", flatten_messages(inner))
    code = HTTP_CODES.get(status, "http_error")
    answer = problem(status, code, error.description or code)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        answer.headers["Allow"] = ", ".join(error.valid_methods)  # RFC 9110: a 405 says what is allowed
    return answer


DEPENDENCY_ERRORS = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,  # the swipe path's driver-level statements (pos_engine.store.db)
    psycopg.InterfaceError,
    sqlite3.OperationalError,  # ditto on SQLite: locked past the busy timeout, disk I/O
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OutcomeUnknown,  # a swipe record sent and its answer lost, and pos_engine.store.db could not tell whether it committed
)


def engine_problem(error: Exception, method: str, path: str, request_id: str | None = None) -> tuple[int, bytes]:
    """Status and problem+json body for what the engine raised while answering `method path`, logged as it deserves.

    A ServiceError is the engine refusing the request; a dependency error is a
    503 the terminal may retry with the same request_id; anything else is a bug,
    logged with its traceback (call this inside the `except`).
    """
    if isinstance(error, ServiceError):
        status = next(status for cls, status in SERVICE_STATUS.items() if isinstance(error, cls))
        return status, problem_body(status, error.code, error.detail, error.field_errors, request_id=request_id)
    if isinstance(error, DEPENDENCY_ERRORS):
        log.error("a dependency failed on %s %s: %s", method, path, error)
        detail = "the engine cannot reach its database or counter store; retry with the same request_id"
        return 503, problem_body(503, "unavailable", detail, request_id=request_id)
    log.exception("unhandled error on %s %s", method, path)
    return 500, problem_body(
        500, "internal_error", "the engine failed; the request changed nothing that can be seen", request_id=request_id
    )


def _engine_error(error: Exception) -> Response:
    status, body = engine_problem(error, request.method, request.path, request.headers.get("X-Request-Id"))
    return Response(body, status=status, mimetype=PROBLEM_MIMETYPE)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_exception)  # werkzeug's: routing, body limit, webargs
    app.register_error_handler(Exception, _engine_error)  # the engine's: engine_problem tells them apart
