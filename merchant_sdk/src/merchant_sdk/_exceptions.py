"""The one error tree of the merchant SDK.

Every exception the SDK raises on purpose derives from `PosError` and carries
`status` (the HTTP status, or None when no answer came), `code` (the problem
document's stable `code`, or None) and `request_id` (the request id of the
call, when it had one, so a call can be repeated safely with it)::

    PosError
    ├── APIConnectionError        no HTTP answer (connection refused, dropped, ...)
    │   └── APITimeoutError       no HTTP answer in time
    ├── AuthorisationUnknown      authorise() ended without a usable answer; the
    │                             SDK voided the request: charge the full price
    ├── UnexpectedResponseError   a 2xx answer the SDK cannot read
    └── APIStatusError            the server answered with an RFC 9457 problem
        ├── BadRequestError       400 malformed_json, 413 body_too_large, 415 unsupported_media_type
        ├── AuthenticationError   401 signature_missing, signature_invalid,
        │                             timestamp_out_of_window, terminal_unknown
        ├── PermissionDeniedError 403 terminal_inactive, merchant_mismatch
        ├── NotFoundError         404 not_found
        ├── ConflictError         409 idempotency_conflict, request_in_progress,
        │                             already_reversed, fully_refunded,
        │                             authorisation_declined
        ├── ValidationError       422 validation_failed (with field `errors`),
        │                             occurred_at_out_of_window,
        │                             refund_exceeds_remaining
        ├── RateLimitError        429 rate_limited (with `retry_after_s`)
        └── ServerError           5xx internal_error, unavailable, ...

A declined swipe is not an error: `authorise()` returns an `Authorisation`
whose `status` is `"declined"`. A status with no class of its own above (408,
or any other 4xx) raises `APIStatusError` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._models import RequestReversal


@dataclass(frozen=True)
class FieldError:
    """One bad field named by a `validation_failed` problem."""

    field: str
    message: str


class PosError(Exception):
    """Base of every error the SDK raises."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id


class APIConnectionError(PosError):
    """No HTTP answer came: the connection failed, or dropped before the answer."""

    def __init__(self, message: str, *, request_id: str | None = None, may_have_reached_server: bool = True) -> None:
        super().__init__(message, request_id=request_id)
        self.may_have_reached_server = may_have_reached_server
        """False only when the request certainly never left (the connection was never made)."""


class APITimeoutError(APIConnectionError):
    """No HTTP answer came within the timeout."""


class UnexpectedResponseError(PosError):
    """The server answered 2xx with a body the SDK cannot read."""


class AuthorisationUnknown(PosError):
    """`authorise()` ended without a usable answer, so the swipe must be charged in full.

    The request may or may not have been authorised on the server. The SDK has
    already sent `POST /v1/reversals` for `request_id`: if an authorisation was
    made it is voided, and if the request arrives late it is declined. When the
    server acknowledged that reversal, `reversal` holds its answer; otherwise the
    reversal is queued and sent again at the start of the client's next call
    (`PosClient.pending_reversals` lists what is still queued).
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        status: int | None = None,
        code: str | None = None,
        reversal: RequestReversal | None = None,
        reversal_pending: bool = False,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.reversal = reversal
        """The server's answer to the reversal, when it acknowledged it at once."""
        self.reversal_pending = reversal_pending
        """Whether the reversal is queued, to be sent again at the start of the next call."""


class APIStatusError(PosError):
    """The server answered with an error status and, usually, a problem document."""

    status: int

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None,
        request_id: str | None,
        title: str | None = None,
        detail: str | None = None,
        errors: tuple[FieldError, ...] = (),
        retry_after_s: float | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.title = title
        self.detail = detail
        self.errors = errors
        self.retry_after_s = retry_after_s
        self.problem: Mapping[str, Any] = MappingProxyType(dict(problem or {}))


class BadRequestError(APIStatusError):
    """400, 413 or 415: the request could not be read (malformed JSON, body too large, not sent as JSON)."""


class AuthenticationError(APIStatusError):
    """401: the signature, timestamp or terminal id was refused."""


class PermissionDeniedError(APIStatusError):
    """403: the terminal is inactive or not bound to that merchant."""


class NotFoundError(APIStatusError):
    """404: no such authorisation for this terminal."""


class ConflictError(APIStatusError):
    """409: the request conflicts with one made before (see `code`)."""


class ValidationError(APIStatusError):
    """422: the request was understood but refused; `errors` names bad fields."""


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after_s` says when to come back, if known."""


class ServerError(APIStatusError):
    """5xx: the server failed or is unavailable."""


_STATUS_ERRORS: Mapping[int, type[APIStatusError]] = MappingProxyType(
    {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
        413: BadRequestError,
        415: BadRequestError,
        422: ValidationError,
        429: RateLimitError,
    }
)


def error_class_for_status(status: int) -> type[APIStatusError]:
    """Return the exception class for an HTTP error status: the one place statuses map to classes."""
    if status >= 500:
        return ServerError
    return _STATUS_ERRORS.get(status, APIStatusError)


def make_status_error(status: int, problem: Mapping[str, Any], *, request_id: str | None, retry_after_s: float | None) -> APIStatusError:
    """Build the exception for an error answer from its status and problem document."""
    code = _optional_str(problem.get("code"))
    title = _optional_str(problem.get("title"))
    detail = _optional_str(problem.get("detail"))
    # The problem's own `request_id` is the X-Request-Id trace header a proxy may have set, not the
    # idempotency key: `error.request_id` stays the call's, to repeat the call with.
    trace_id = _optional_str(problem.get("request_id"))
    listed = problem.get("errors")  # a list of {field, message} from the engine; anything else (a proxy's) is no list
    errors = tuple(
        FieldError(field=str(item.get("field", "")), message=str(item.get("message", "")))
        for item in (listed if isinstance(listed, list) else ())
        if isinstance(item, Mapping)
    )
    parts = [str(status), code or title or "error"]
    if detail:
        parts.append(f"- {detail}")
    if errors:
        parts.append("(" + "; ".join(f"{e.field}: {e.message}" for e in errors) + ")")
    if request_id:
        parts.append(f"[request {request_id}]")
    if trace_id and trace_id != request_id:
        parts.append(f"[trace {trace_id}]")
    return error_class_for_status(status)(
        " ".join(parts),
        status=status,
        code=code,
        request_id=request_id,
        title=title,
        detail=detail,
        errors=errors,
        retry_after_s=retry_after_s,
        problem=problem,
    )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
