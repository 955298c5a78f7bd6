"""The asyncio twin of `PosClient`: the same calls, retries and timeout reversals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType

import httpx

from ._client import T, _Attempts, _BaseClient, _Call
from ._constants import DEFAULT_DEADLINE_S, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from ._deadline import attempt_ends_at, bound_async_attempts
from ._exceptions import AuthorisationUnknown, PosError
from ._models import Adjustment, Authorisation, AuthorisationDetails, RequestReversal
from ._retry import should_retry

logger = logging.getLogger("merchant_sdk")


class AsyncPosClient(_BaseClient):
    """Talk to the pos-engine terminal API as one terminal, with `await`.

    Every method behaves as its `PosClient` namesake; see there for arguments
    and errors. Use it as an async context manager, or `await close()`.
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Create a client; the arguments are those of `PosClient`."""
        super().__init__(base_url, terminal_id, secret, timeout=timeout, max_retries=max_retries, deadline=deadline)
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=self._timeout, transport=transport, follow_redirects=False)
        if transport is None:
            bound_async_attempts(self._http)
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._closed = False

    async def __aenter__(self) -> AsyncPosClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Send queued timeout reversals once more, then close the connections."""
        if self._closed:
            return
        try:
            await self._flush_pending_reversals()
        finally:
            self._closed = True
            await self._http.aclose()
        pending = self.pending_reversals  # under the lock: another thread may still be calling
        if pending:
            logger.warning("client closed with unacknowledged reversals for requests %s", ", ".join(pending))

    async def authorise(
        self,
        card_number: str,
        merchant_id: str,
        amount_fen: int,
        occurred_at: datetime | None = None,
        request_id: str | None = None,
        *,
        explain: bool = False,
    ) -> Authorisation:
        """Ask the engine for the discount and subsidy of one swipe (see `PosClient.authorise`)."""
        call = self._authorise_call(card_number, merchant_id, amount_fen, occurred_at, request_id, explain)
        attempts = _Attempts()
        try:
            return self._as_sent(await self._call(call, attempts), amount_fen)
        except PosError as error:
            if not attempts.may_have_been_processed:
                raise
            raise await self._void_unanswered(call, error) from error
        except BaseException:
            # Cancelled (asyncio.wait_for, a task group) with the request perhaps on its way: queue its
            # reversal for the next call (sending it now would block the cancellation), then let it go on.
            assert call.request_id is not None
            self._queue_reversal(call.request_id)
            raise

    async def reverse(self, authorisation_id: str, *, request_id: str | None = None) -> Adjustment:
        """Void an authorisation in full (see `PosClient.reverse`)."""
        call = self._reverse_call(authorisation_id, request_id)
        return await self._call(call)

    async def refund(self, authorisation_id: str, amount_fen: int, *, request_id: str | None = None) -> Adjustment:
        """Refund part or all of an authorisation (see `PosClient.refund`)."""
        call = self._refund_call(authorisation_id, amount_fen, request_id)
        return await self._call(call)

    async def get(self, authorisation_id: str) -> AuthorisationDetails:
        """Look up an authorisation as it stands now (see `PosClient.get`)."""
        call = self._get_call(authorisation_id)
        return await self._call(call)

    async def reverse_request(self, original_request_id: str, *, request_id: str | None = None) -> RequestReversal:
        """Void whatever an authorisation request did, if anything (see `PosClient.reverse_request`)."""
        call = self._reverse_request_call(original_request_id, request_id)
        result = await self._call(call)
        self._reversal_acknowledged(result)
        return result

    async def flush_pending_reversals(self) -> tuple[str, ...]:
        """Send queued timeout reversals now; return the request ids still unacknowledged."""
        await self._flush_pending_reversals()
        return self.pending_reversals

    async def _flush_pending_reversals(self, until: float | None = None) -> None:
        for original_request_id, call in self._reversals_to_flush():
            if self._no_time_for(until):
                return
            try:
                result = await self._send_once(call, until)
            except PosError as error:
                if self._reversal_failed(original_request_id, error):
                    return
            else:
                self._reversal_acknowledged(result)

    async def _void_unanswered(self, call: _Call[Authorisation], cause: PosError) -> AuthorisationUnknown:
        assert call.request_id is not None
        reversal_call = self._queue_reversal(call.request_id)
        reversal: RequestReversal | None = None
        try:
            reversal = await self._send_once(reversal_call)
        except PosError as error:
            self._reversal_failed(call.request_id, error)
        else:
            self._reversal_acknowledged(reversal)
        return self._authorisation_unknown(call, cause, reversal)

    async def _call(self, call: _Call[T], attempts: _Attempts | None = None) -> T:
        """One call within its deadline: the queued reversals first (half of it at most), then `call`."""
        until = self._until()
        await self._flush_pending_reversals(self._flush_until(until))
        return await self._send(call, attempts, until)

    async def _send(self, call: _Call[T], attempts: _Attempts | None = None, until: float | None = None) -> T:
        retries_taken = 0
        while True:
            try:
                return await self._send_once(call, until)
            except PosError as error:
                if attempts is not None:
                    attempts.record(error)
                if retries_taken >= self._max_retries or not should_retry(error):
                    raise
                delay_s = self._retry_delay_s(retries_taken, error)
                if self._no_time_for(until, delay_s):
                    raise  # no time left for another attempt within the call's deadline
                logger.info("retrying %s %s in %.2f s after: %s", call.method, call.path, delay_s, error)
            await self._sleep(delay_s)
            retries_taken += 1

    async def _send_once(self, call: _Call[T], until: float | None = None) -> T:
        end = self._attempt_end(until)
        request = self._build_request(self._http, call, end)
        try:
            with attempt_ends_at(end, self._monotonic):
                response = await self._http.send(request)
        except httpx.RequestError as exc:
            raise self._connection_error(exc, call) from exc
        return self._read_response(response, call)
