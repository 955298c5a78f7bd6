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
from werkzeug.exceptions import HTTPException

from pos_engine.service.errors import (
    Conflict,
    Forbidden,
    NotFound,
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


def problem(status: int, code: str, detail: str, field_errors: dict[str, list[str]] | None = None, title: str | None = None) -> Response:
    """Build a problem+json response; the only function that makes an error response."""
    body: dict[str, Any] = {
        "type": f"urn:pos-engine:problem:{code}",
        "title": title or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field_errors:
        body["errors"] = [{"field": field, "message": message} for field, messages in field_errors.items() for message in messages]
    request_id = request.headers.get("X-Request-Id") if request else None
    if request_id:
        body["request_id"] = request_id[:64]
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)


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
    return problem(status, code, error.description or code)


def _service_error(error: ServiceError) -> Response:
    status = next(status for cls, status in SERVICE_STATUS.items() if isinstance(error, cls))
    return problem(status, error.code, error.detail, error.field_errors)


def _dependency_down(error: Exception) -> Response:
    log.error("a dependency failed on %s %s: %s", request.method, request.path, error)
    return problem(503, "unavailable", "the engine cannot reach its database or counter store; retry with the same request_id")


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "internal_error", "the engine failed; the request changed nothing that can be seen")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(ServiceError, _service_error)
    dependency_errors = (
        OperationalError,
        InterfaceError,
        psycopg.OperationalError,  # the swipe path's driver-level statements (pos_engine.store.db)
        psycopg.InterfaceError,
        sqlite3.OperationalError,  # ditto on SQLite: locked past the busy timeout, disk I/O
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )
    for dependency_error in dependency_errors:
        app.register_error_handler(dependency_error, _dependency_down)
    app.register_error_handler(Exception, _unexpected)
