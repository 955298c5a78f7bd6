"""The synchronous terminal client, and what it shares with the async one."""

from __future__ import annotations

import json
import logging
import platform
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._constants import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_RETRIES_LIMIT,
    MAX_REVERSALS_PER_FLUSH,
    MIN_ATTEMPT_S,
    VOIDED_REQUEST_IDS_REMEMBERED,
)
from ._deadline import attempt_ends_at, bound_attempts
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    AuthorisationUnknown,
    PermissionDeniedError,
    PosError,
    UnexpectedResponseError,
    make_status_error,
)
from ._models import (
    Adjustment,
    Authorisation,
    AuthorisationDetails,
    RequestReversal,
    parse_adjustment,
    parse_authorisation,
    parse_authorisation_details,
    parse_request_reversal,
)
from ._retry import backoff_delay_s, may_have_been_processed, parse_retry_after_s, should_retry
from ._signing import signed_headers
from ._version import __version__

logger = logging.getLogger("merchant_sdk")

T = TypeVar("T")

# The request never left the machine for these: no connection was made.
_NEVER_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def new_request_id() -> str:
    """Return a fresh request id: made once per logical call, reused on its retries."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One logical call: what every attempt of it sends, and how its answer is read."""

    method: str
    path: str
    """Relative to the base URL, with its query string."""
    content: bytes
    """The exact bytes sent and signed on every attempt."""
    request_id: str | None
    parse: Callable[[Mapping[str, Any]], T]


class _Attempts:
    """What the failed attempts of one call tell about it."""

    def __init__(self) -> None:
        self.may_have_been_processed = False

    def record(self, error: PosError) -> None:
        self.may_have_been_processed = self.may_have_been_processed or may_have_been_processed(error)


class _BaseClient:
    """Build, sign and read requests; keep the queue of unacknowledged timeout reversals."""

    def __init__(
        self,
        base_url: str,
        terminal_id: str,
        secret: str,
        *,
        timeout: float | httpx.Timeout,
        max_retries: int,
        deadline: float | None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        _require_text("terminal_id", terminal_id)
        _require_text("secret", secret)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES_LIMIT:
            raise ValueError(f"max_retries must be an integer from 0 to {MAX_RETRIES_LIMIT}")
        if isinstance(timeout, httpx.Timeout):
            self._timeout = timeout
        else:
            if timeout <= 0:
                raise ValueError("timeout must be positive seconds")
            self._timeout = httpx.Timeout(timeout, connect=min(timeout, DEFAULT_CONNECT_TIMEOUT_S))
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0):
            raise ValueError("deadline must be positive seconds, or None")
        self._deadline_s = deadline
        self._base_url = url
        self._terminal_id = terminal_id
        self._secret = secret
        self._max_retries = max_retries
        self._headers = {
            "Accept": "application/json, application/problem+json",
            "User-Agent": f"merchant-sdk/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}",
        }
        # Seams for tests: the clock signs and dates requests, sleep waits between attempts.
        self._clock: Callable[[], float] = time.time
        self._monotonic: Callable[[], float] = time.monotonic  # measures each call against its deadline
        self._rand: Callable[[], float] = random.random
        self._pending: dict[str, _Call[RequestReversal]] = {}
        self._voided: OrderedDict[str, None] = OrderedDict()
        self._pending_lock = threading.Lock()

    @property
    def terminal_id(self) -> str:
        """The terminal this client signs for."""
        return self._terminal_id

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt of each call."""
        return self._max_retries

    @property
    def pending_reversals(self) -> tuple[str, ...]:
        """Request ids of timed-out authorisations whose reversal the server has not acknowledged yet."""
        with self._pending_lock:
            return tuple(self._pending)

    # Requests ----------------------------------------------------------------

    def _authorise_call(
        self,
        card_number: str,
        merchant_id: str,
        amount_fen: int,
        occurred_at: datetime | None,
        request_id: str | None,
        explain: bool,
    ) -> _Call[Authorisation]:
        _require_text("card_number", card_number)
        _require_text("merchant_id", merchant_id)
        _require_fen("amount_fen", amount_fen)
        if occurred_at is None:
            occurred_at = datetime.fromtimestamp(self._clock(), timezone.utc)
        elif occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")
        if request_id is not None and self._was_voided(request_id):
            # The engine answers a repeated request id with its first answer,
            # even an approval that the void has since reversed: the till
            # would then give a discount nobody pays for.
            raise ValueError(f"request {request_id} was voided after it got no answer: swipe again with a new request id")
        request_id = _request_id(request_id)
        body = {
            "request_id": request_id,
            "card_number": card_number,
            "merchant_id": merchant_id,
            "amount_fen": amount_fen,
            "occurred_at": occurred_at.isoformat(),
        }
        path = "/v1/authorisations?explain=true" if explain else "/v1/authorisations"
        return _Call("POST", path, _encode(body), request_id, parse_authorisation)

    def _reverse_call(self, authorisation_id: str, request_id: str | None) -> _Call[Adjustment]:
        request_id = _request_id(request_id)
        path = f"/v1/authorisations/{_path_segment('authorisation_id', authorisation_id)}/reversal"
        return _Call("POST", path, _encode({"request_id": request_id}), request_id, parse_adjustment)

    def _refund_call(self, authorisation_id: str, amount_fen: int, request_id: str | None) -> _Call[Adjustment]:
        _require_fen("amount_fen", amount_fen)
        request_id = _request_id(request_id)
        path = f"/v1/authorisations/{_path_segment('authorisation_id', authorisation_id)}/refunds"
        return _Call("POST", path, _encode({"request_id": request_id, "amount_fen": amount_fen}), request_id, parse_adjustment)

    def _get_call(self, authorisation_id: str) -> _Call[AuthorisationDetails]:
        path = f"/v1/authorisations/{_path_segment('authorisation_id', authorisation_id)}"
        return _Call("GET", path, b"", None, parse_authorisation_details)

    def _reverse_request_call(self, original_request_id: str, request_id: str | None) -> _Call[RequestReversal]:
        _require_text("original_request_id", original_request_id)
        self._remember_voided(original_request_id)
        if request_id is None:
            # Voiding a request whose timeout reversal is still queued: send
            # the queued one, so the server sees one reversal request, not two.
            with self._pending_lock:
                queued = self._pending.get(original_request_id)
            if queued is not None:
                return queued
        request_id = _request_id(request_id)
        body = {"request_id": request_id, "original_request_id": original_request_id}
        return _Call("POST", "/v1/reversals", _encode(body), request_id, parse_request_reversal)

    def _until(self) -> float | None:
        """When a call started now must be over (monotonic seconds), or None without a deadline."""
        return None if self._deadline_s is None else self._monotonic() + self._deadline_s

    def _flush_until(self, until: float | None) -> float | None:
        """Queued reversals sent before a call may take half of what is left of it."""
        if until is None:
            return None
        now = self._monotonic()
        return now + (until - now) / 2

    def _no_time_for(self, until: float | None, wait_s: float = 0.0) -> bool:
        """Whether an attempt after `wait_s` more seconds would start too late for the call's deadline."""
        return until is not None and self._monotonic() + wait_s + MIN_ATTEMPT_S > until

    def _attempt_end(self, until: float | None) -> float | None:
        """When an attempt starting now must be over: by `until`, and within the sum of the timeout's parts.

        That sum (waiting for a pooled connection, connecting, sending, reading)
        is the longest a server that answers in one piece can take; one that
        sends its answer a few bytes at a time is cut off there, not each time a
        read times out (`_deadline`). None: a part of the timeout is unbounded.
        """
        parts = (self._timeout.pool, self._timeout.connect, self._timeout.write, self._timeout.read)
        own_end = None if any(part is None for part in parts) else self._monotonic() + sum(part or 0.0 for part in parts)
        if until is None or own_end is None:
            return until if own_end is None else own_end
        return min(until, own_end)

    def _attempt_timeout(self, until: float | None) -> httpx.Timeout:
        """The client's timeout for one attempt, each part cut to what is left before `until`."""
        if until is None:
            return self._timeout
        left_s = max(until - self._monotonic(), 0.001)
        base = self._timeout
        return httpx.Timeout(
            connect=left_s if base.connect is None else min(base.connect, left_s),
            read=left_s if base.read is None else min(base.read, left_s),
            write=left_s if base.write is None else min(base.write, left_s),
            pool=left_s if base.pool is None else min(base.pool, left_s),
        )

    def _build_request(self, http: httpx.Client | httpx.AsyncClient, call: _Call[Any], until: float | None = None) -> httpx.Request:
        headers = dict(self._headers)
        if call.content:
            headers["Content-Type"] = "application/json"
        request = http.build_request(
            call.method, call.path, content=call.content or None, headers=headers, timeout=self._attempt_timeout(until)
        )
        # Sign what goes on the wire: the path as the URL encodes it, the body
        # bytes as built once for the call, and a fresh timestamp per attempt.
        path = request.url.raw_path.decode("ascii")
        request.headers.update(signed_headers(self._terminal_id, self._secret, call.method, path, int(self._clock()), call.content))
        return request

    def _read_response(self, response: httpx.Response, call: _Call[T]) -> T:
        if not response.is_success:
            raise make_status_error(
                response.status_code,
                _problem(response),
                request_id=call.request_id,
                retry_after_s=parse_retry_after_s(response.headers, now=datetime.fromtimestamp(self._clock(), timezone.utc)),
            )
        try:
            data = json.loads(response.content)
            if not isinstance(data, dict):
                raise TypeError("the answer is not a JSON object")
            return call.parse(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponseError(
                f"{response.status_code} answer to {call.method} {call.path} is not as the contract says: {exc!r}",
                status=response.status_code,
                request_id=call.request_id,
            ) from exc

    def _connection_error(self, exc: httpx.RequestError, call: _Call[Any]) -> APIConnectionError:
        error_class = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        what = "no answer in time" if error_class is APITimeoutError else "no answer"
        suffix = f" [request {call.request_id}]" if call.request_id else ""
        return error_class(
            f"{what} to {call.method} {call.path}: {type(exc).__name__}: {exc}{suffix}",
            request_id=call.request_id,
            may_have_reached_server=not isinstance(exc, _NEVER_SENT_ERRORS),
        )

    def _retry_delay_s(self, retries_taken: int, error: PosError) -> float:
        """Return the backoff before the next attempt: exponential, capped, jittered, never before Retry-After."""
        return backoff_delay_s(retries_taken, getattr(error, "retry_after_s", None), rand=self._rand)

    # Timeout reversals -----------------------------------------------------------

    def _remember_voided(self, original_request_id: str) -> None:
        with self._pending_lock:
            self._voided[original_request_id] = None
            self._voided.move_to_end(original_request_id)
            while len(self._voided) > VOIDED_REQUEST_IDS_REMEMBERED:
                self._voided.popitem(last=False)

    def _was_voided(self, request_id: str) -> bool:
        with self._pending_lock:
            return request_id in self._voided

    def _queue_reversal(self, original_request_id: str) -> _Call[RequestReversal]:
        self._remember_voided(original_request_id)
        with self._pending_lock:
            call = self._pending.get(original_request_id)
            if call is None:
                # The reversal's own request id is made once too, so its
                # retries on later calls are idempotent on the server.
                request_id = new_request_id()
                body = {"request_id": request_id, "original_request_id": original_request_id}
                call = _Call("POST", "/v1/reversals", _encode(body), request_id, parse_request_reversal)
                self._pending[original_request_id] = call
            return call

    def _reversals_to_flush(self) -> list[tuple[str, _Call[RequestReversal]]]:
        with self._pending_lock:
            return list(self._pending.items())[:MAX_REVERSALS_PER_FLUSH]

    def _reversal_acknowledged(self, result: RequestReversal) -> None:
        with self._pending_lock:
            self._pending.pop(result.original_request_id, None)
        logger.info("reversal of request %s acknowledged: %s", result.original_request_id, result.outcome)

    def _reversal_failed(self, original_request_id: str, error: PosError) -> bool:
        """Keep or drop a queued reversal after a failed attempt; return whether to stop flushing."""
        # A void is idempotent, so it is only dropped when the engine refuses it outright (a 4xx other than
        # 401/403: credentials and clocks can be fixed). An answer that cannot be read (a proxy's page
        # with a 200, a body cut short) says nothing: it is sent again.
        refused = isinstance(error, APIStatusError) and 400 <= error.status < 500
        if should_retry(error) or isinstance(error, (AuthenticationError, PermissionDeniedError)) or not refused:
            logger.warning("reversal of request %s not acknowledged yet, kept queued: %s", original_request_id, error)
            return True
        with self._pending_lock:
            self._pending.pop(original_request_id, None)
        logger.error("reversal of request %s refused, dropped from the queue: %s", original_request_id, error)
        return False

    @staticmethod
    def _as_sent(result: Authorisation, amount_fen: int) -> Authorisation:
        """The answer to an authorisation, with the amount the till sent if the engine never saw it.

        A request id voided before its request arrived (by `reverse_request`, or by another client's
        timeout void) is declined `voided_by_terminal` with the void's own amounts, 0 fen: the till
        charges the full price it asked for, not 0.
        """
        if result.decline_code == "voided_by_terminal" and result.amount_fen != amount_fen:
            return replace(result, amount_fen=amount_fen, payable_fen=amount_fen, discount_fen=0, subsidy_fen=0)
        return result

    def _authorisation_unknown(self, call: _Call[Authorisation], cause: PosError, reversal: RequestReversal | None) -> AuthorisationUnknown:
        assert call.request_id is not None
        with self._pending_lock:
            pending = call.request_id in self._pending
        if reversal is not None:
            then = f"The request was voided on the server (outcome: {reversal.outcome})."
        elif pending:
            then = "Its reversal is queued and will be sent again at the start of the next call."
        else:
            then = "Its reversal was refused: void the request by hand with reverse_request()."
        return AuthorisationUnknown(
            f"no usable answer to authorisation request {call.request_id}; charge the full price. {then} Cause: {cause}",
            request_id=call.request_id,
            status=cause.status,
            code=cause.code,
            reversal=reversal,
            reversal_pending=pending,
        )


class PosClient(_BaseClient):
    """Talk to the pos-engine terminal API as one terminal.

    Use it as a context manager, or call `close()`. Safe to share between threads.
    """

    def __init__(
        self,
        base_url: str,
        terminal_id: str,
        secret: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        deadline: float | None = DEFAULT_DEADLINE_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Create a client.

        Args:
            base_url: The engine's address, e.g. `https://pos.example.com`.
            terminal_id: This terminal's id, sent as `X-Terminal-Id`.
            secret: This terminal's secret, the key of every signature.
            timeout: Seconds each read, write and wait for a pooled
                connection may take (connecting at most
                `DEFAULT_CONNECT_TIMEOUT_S`), or an `httpx.Timeout`. A whole
                attempt takes at most the sum of these parts.
            max_retries: Retries after the first attempt, 0 to `MAX_RETRIES_LIMIT`.
            deadline: Seconds a call may take in all (queued reversals sent
                first, attempts, waits between them); each attempt's timeout is
                cut to what is left, and no retry starts too late. The void
                after an authorisation with no usable answer takes one attempt
                more. None: only `timeout` and `max_retries` bound a call.
                Each attempt ends within the sum of the timeout's parts, and
                by the deadline: an answer sent a few bytes at a time is cut
                off there, not only each read.
            transport: An httpx transport to send through instead of the
                network, e.g. `httpx.MockTransport` in tests. Its own
                timeouts bound it; the whole-attempt bound is the default
                transport's.

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(base_url, terminal_id, secret, timeout=timeout, max_retries=max_retries, deadline=deadline)
        self._http = httpx.Client(base_url=self._base_url, timeout=self._timeout, transport=transport, follow_redirects=False)
        if transport is None:
            bound_attempts(self._http)
        self._sleep: Callable[[float], None] = time.sleep
        self._closed = False

    def __enter__(self) -> PosClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Send queued timeout reversals once more, then close the connections."""
        if self._closed:
            return
        try:
            self._flush_pending_reversals()
        finally:
            self._closed = True
            self._http.close()
        pending = self.pending_reversals  # under the lock: another thread may still be calling
        if pending:
            logger.warning("client closed with unacknowledged reversals for requests %s", ", ".join(pending))

    def authorise(
        self,
        card_number: str,
        merchant_id: str,
        amount_fen: int,
        occurred_at: datetime | None = None,
        request_id: str | None = None,
        *,
        explain: bool = False,
    ) -> Authorisation:
        """Ask the engine for the discount and subsidy of one swipe.

        Args:
            card_number: The union card number as read by the terminal.
            merchant_id: The merchant this terminal sells for.
            amount_fen: The purchase amount in integer fen.
            occurred_at: When the swipe happened, timezone-aware; now if None.
            request_id: The idempotency key; a fresh one if None. Pass the same
                one again only to repeat the very same swipe, with the same
                arguments and the same `occurred_at` (None means now, so a
                repeat without it is another swipe: 409 `idempotency_conflict`).
            explain: Ask the engine why each rule applied or did not.

        Returns:
            The authorisation: approved, or declined with a `decline_code`.
            A decline is a result, not an error.

        Raises:
            AuthorisationUnknown: No usable answer came (timeout, dropped
                connection, server error after sending). The SDK has voided
                the request; charge the full price.
            APIStatusError: The server refused the request (a subclass says why).
            APIConnectionError: The request never reached the server.
            TypeError, ValueError: An argument is malformed; nothing was sent.
        """
        call = self._authorise_call(card_number, merchant_id, amount_fen, occurred_at, request_id, explain)
        attempts = _Attempts()
        try:
            return self._as_sent(self._call(call, attempts), amount_fen)
        except PosError as error:
            if not attempts.may_have_been_processed:
                raise
            raise self._void_unanswered(call, error) from error
        except BaseException:
            # Interrupted (a watchdog, KeyboardInterrupt) with the request perhaps on its way: the engine
            # may approve it, so its reversal is queued for the next call, and the interruption goes on.
            assert call.request_id is not None
            self._queue_reversal(call.request_id)
            raise

    def reverse(self, authorisation_id: str, *, request_id: str | None = None) -> Adjustment:
        """Void an authorisation in full, giving back its discount and subsidy.

        Args:
            authorisation_id: The `id` of the authorisation (`au_…`).
            request_id: The idempotency key; a fresh one if None.

        Returns:
            The reversal, its amounts being what is given back.

        Raises:
            ConflictError: `already_reversed` with another request id.
            NotFoundError: No such authorisation.
            PermissionDeniedError: `merchant_mismatch`: it is another merchant's.
            APIStatusError, APIConnectionError: As for any call; repeat it with
                `request_id=error.request_id` to be safe.
        """
        call = self._reverse_call(authorisation_id, request_id)
        return self._call(call)

    def refund(self, authorisation_id: str, amount_fen: int, *, request_id: str | None = None) -> Adjustment:
        """Refund part or all of an authorisation; discount and subsidy are clawed back pro rata.

        Args:
            authorisation_id: The `id` of the authorisation (`au_…`).
            amount_fen: How much of the purchase amount is refunded, in fen.
            request_id: The idempotency key; a fresh one if None.

        Returns:
            The refund, its amounts being what is given back.

        Raises:
            ValidationError: `refund_exceeds_remaining`, or a bad amount.
            ConflictError: `already_reversed`, `fully_refunded` or `authorisation_declined`.
            NotFoundError: No such authorisation.
            PermissionDeniedError: `merchant_mismatch`: it is another merchant's.
            APIStatusError, APIConnectionError: As for any call; repeat it with
                `request_id=error.request_id` to be safe.
        """
        call = self._refund_call(authorisation_id, amount_fen, request_id)
        return self._call(call)

    def get(self, authorisation_id: str) -> AuthorisationDetails:
        """Look up an authorisation as it stands now, with its reversal and refunds.

        Raises:
            NotFoundError: No such authorisation.
            PermissionDeniedError: `merchant_mismatch`: it is another merchant's.
        """
        call = self._get_call(authorisation_id)
        return self._call(call)

    def reverse_request(self, original_request_id: str, *, request_id: str | None = None) -> RequestReversal:
        """Void whatever the authorisation request `original_request_id` did, if anything.

        The SDK calls this by itself after a timeout; call it to void a request
        whose answer your till lost in some other way.

        Args:
            original_request_id: The `request_id` of the authorisation request.
            request_id: This reversal's idempotency key; a fresh one if None.

        Returns:
            The outcome: `reversed`, `already_reversed` or `nothing_to_reverse`.
        """
        call = self._reverse_request_call(original_request_id, request_id)
        result = self._call(call)
        self._reversal_acknowledged(result)
        return result

    def flush_pending_reversals(self) -> tuple[str, ...]:
        """Send queued timeout reversals now; return the request ids still unacknowledged."""
        self._flush_pending_reversals()
        return self.pending_reversals

    def _flush_pending_reversals(self, until: float | None = None) -> None:
        for original_request_id, call in self._reversals_to_flush():
            if self._no_time_for(until):
                return
            try:
                result = self._send_once(call, until)
            except PosError as error:
                if self._reversal_failed(original_request_id, error):
                    return
            else:
                self._reversal_acknowledged(result)

    def _void_unanswered(self, call: _Call[Authorisation], cause: PosError) -> AuthorisationUnknown:
        # One immediate attempt keeps the till's wait bounded; the queue
        # carries the reversal on to later calls if it fails.
        assert call.request_id is not None
        reversal_call = self._queue_reversal(call.request_id)
        reversal: RequestReversal | None = None
        try:
            reversal = self._send_once(reversal_call)
        except PosError as error:
            self._reversal_failed(call.request_id, error)
        else:
            self._reversal_acknowledged(reversal)
        return self._authorisation_unknown(call, cause, reversal)

    def _call(self, call: _Call[T], attempts: _Attempts | None = None) -> T:
        """One call within its deadline: the queued reversals first (half of it at most), then `call`."""
        until = self._until()
        self._flush_pending_reversals(self._flush_until(until))
        return self._send(call, attempts, until)

    def _send(self, call: _Call[T], attempts: _Attempts | None = None, until: float | None = None) -> T:
        retries_taken = 0
        while True:
            try:
                return self._send_once(call, until)
            except PosError as error:
                if attempts is not None:
                    attempts.record(error)
                if retries_taken >= self._max_retries or not should_retry(error):
                    raise
                delay_s = self._retry_delay_s(retries_taken, error)
                if self._no_time_for(until, delay_s):
                    raise  # no time left for another attempt within the call's deadline
                logger.info("retrying %s %s in %.2f s after: %s", call.method, call.path, delay_s, error)
            self._sleep(delay_s)
            retries_taken += 1

    def _send_once(self, call: _Call[T], until: float | None = None) -> T:
        end = self._attempt_end(until)
        request = self._build_request(self._http, call, end)
        try:
            with attempt_ends_at(end, self._monotonic):
                response = self._http.send(request)
        except httpx.RequestError as exc:
            raise self._connection_error(exc, call) from exc
        return self._read_response(response, call)


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _problem(response: httpx.Response) -> Mapping[str, Any]:
    try:
        problem = json.loads(response.content)
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _request_id(request_id: str | None) -> str:
    if request_id is None:
        return new_request_id()
    _require_text("request_id", request_id)
    return request_id


def _path_segment(name: str, value: str) -> str:
    _require_text(name, value)
    return quote(value, safe="")


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")


def _require_fen(name: str, value: object) -> None:
    # bool is an int subclass, and floats never carry money.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer number of fen, got {type(value).__name__}")
