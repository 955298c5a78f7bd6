"""Bound a whole attempt, not only each read: httpx's timeouts restart with every read and write.

A server (or a proxy in front of it) that sends its answer a few bytes at a time
never trips a read timeout, and would hold the till for as long as it likes.
The client's connection pool reads and writes through the network backend
below instead; each read, write and connect is cut to what is left before the
current attempt's end, and one that starts after it fails at once with
httpcore's timeout error, which httpx raises as its own (`httpx.ReadTimeout`,
`httpx.WriteTimeout`, `httpx.ConnectTimeout`).

The end is a context variable that each attempt sets around its send: threads
and asyncio tasks each see their own, so one client can serve several at once.
"""

from __future__ import annotations

import contextvars
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import httpcore
import httpx

# (the attempt's end, the monotonic clock it is measured on)
_ATTEMPT_END: contextvars.ContextVar[tuple[float, Callable[[], float]] | None] = contextvars.ContextVar(
    "merchant_sdk_attempt_end", default=None
)


LOOKUP_POLL_FIRST_S = 0.0002  # the async client looks for a name's addresses after this, then twice as long each time,
LOOKUP_POLL_MAX_S = 0.002  # up to this: a lookup's answer waits at most this long for its reader


@contextmanager
def attempt_ends_at(end: float | None, monotonic: Callable[[], float]) -> Iterator[None]:
    """Run the block's network I/O so that none of it goes on past `end` (monotonic seconds; None: no bound)."""
    token = _ATTEMPT_END.set(None if end is None else (end, monotonic))
    try:
        yield
    finally:
        _ATTEMPT_END.reset(token)


def _cut(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to what is left of the current attempt; `error` when nothing is left."""
    current = _ATTEMPT_END.get()
    if current is None:
        return timeout
    end, monotonic = current
    left_s = end - monotonic()
    if left_s <= 0:
        raise error("the attempt's time is up")
    return left_s if timeout is None else min(timeout, left_s)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            timeout = _cut(timeout, httpcore.ConnectTimeout)
        except httpcore.ConnectTimeout:
            self._inner.close()  # httpcore closes only the stream it was given back
            raise
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Lookup:
    """A name's addresses, looked up on a thread of its own so that an attempt can stop waiting for them.

    The C library's lookup cannot be interrupted: one that takes too long runs
    on, its answer dropped, while the attempt fails with a connect timeout.
    Attempts that want the same name meanwhile wait on the same lookup, so a
    resolver that hangs holds one thread per name, not one per attempt.
    """

    _running: ClassVar[dict[tuple[str, int], _Lookup]] = {}
    _running_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def of(cls, host: str, port: int, fresh_s: float | None = None, *, inline: bool = True) -> _Lookup:
        """The lookup of `host`: done at once for an address written as one, else one running or a new one.

        A running lookup older than `fresh_s` is not joined but replaced: asked while the network was
        down, it may hang for the resolver's whole timeout (tens of seconds) after the network is back.
        When no thread can be started, the name is looked up on the caller's thread if `inline`, else
        the lookup fails (an event loop must not wait on the resolver).
        """
        try:
            numeric = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except (OSError, UnicodeError):  # a name
            pass
        else:
            return cls(host, numeric)
        with cls._running_lock:
            running = cls._running.get((host, port))
            if running is not None and (fresh_s is None or time.monotonic() - running.started < fresh_s):
                return running
            lookup = cls._running[(host, port)] = cls(host)
        thread = threading.Thread(target=lookup._look_up, args=(port,), name=f"merchant_sdk lookup {host}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no new threads (out of them, or the interpreter is shutting down)
            if inline:
                lookup._look_up(port)  # as httpcore would; the caller's connect budget is checked after it
            else:
                lookup._answer.append(exc)
                lookup._finish(port)
        except BaseException as exc:  # an interrupt: no lookup is left for others to wait on
            lookup._answer.append(exc)
            lookup._finish(port)
            raise
        return lookup

    @classmethod
    def _forget_running(cls) -> None:
        """In a forked child: the parent's lookup threads are not here, and its lock may have been held."""
        cls._running = {}
        cls._running_lock = threading.Lock()

    def __init__(self, host: str, addresses: list[Any] | None = None) -> None:
        self.host = host
        self.started = time.monotonic()
        self._answer: list[Any] = [] if addresses is None else [addresses]
        self._done = threading.Event()
        if addresses is not None:
            self._done.set()

    def _look_up(self, port: int) -> None:
        try:
            self._answer.append(socket.getaddrinfo(self.host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the waiting attempts
            self._answer.append(exc)
        finally:
            self._finish(port)

    def _finish(self, port: int) -> None:
        with self._running_lock:
            if self._running.get((self.host, port)) is self:
                del self._running[(self.host, port)]
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None) -> None:
        self._done.wait(timeout)

    def addresses(self) -> list[Any]:
        """The addresses; httpcore's connect errors for a lookup that failed or is not done."""
        if not self._done.is_set():
            raise httpcore.ConnectTimeout(f"looking up {self.host} took longer than the time to connect")
        if not self._answer:  # the lookup's thread ended by something other than an Exception
            raise httpcore.ConnectError(f"looking up {self.host} failed")
        found = self._answer[0]
        if isinstance(found, OSError):
            raise httpcore.ConnectError(str(found)) from found
        if isinstance(found, BaseException):
            raise httpcore.ConnectError(f"looking up {self.host}: {found!r}") from found
        return list(found)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_Lookup._forget_running)


def _host_of(address: Any) -> str:
    """An address from getaddrinfo as a host to connect to: an IPv6 link-local one keeps its zone (`fe80::1%eth0`)."""
    host = str(address[0])
    if len(address) >= 4 and address[3]:
        try:
            return f"{host}%{socket.if_indextoname(address[3])}"
        except (OSError, AttributeError):
            return f"{host}%{address[3]}"
    return host


class _ConnectBudget:
    """What is left to open a connection: the connect timeout from the start, lookup included, and the attempt's end."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        left_s = _cut(self._timeout, httpcore.ConnectTimeout)  # the attempt's time is up: raised here
        if self._end is not None:
            own_s = self._end - time.monotonic()
            if own_s <= 0:
                raise httpcore.ConnectTimeout("the time to connect is up")
            left_s = own_s if left_s is None else min(left_s, own_s)
        return left_s

    def attempts(self, lookup: _Lookup) -> Iterator[tuple[str, float | None]]:
        """Each of the lookup's addresses to connect to, with an even share of what is left among those
        still to try, so that one that never answers (an IPv6 route that goes nowhere, a server that is
        down) leaves the others time. When the time is up, ConnectTimeout: no other address is tried."""
        addresses = lookup.addresses()
        for index, (_family, _type, _proto, _canonname, address) in enumerate(addresses):
            left_s = self.left()
            yield _host_of(address), None if left_s is None else left_s / (len(addresses) - index)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # The sync backend's socket.create_connection gives each of a name's
        # addresses the whole timeout in turn, and waits on the name's lookup as
        # long as the resolver takes: look up and try them here, within what is
        # left (and the connect timeout).
        budget = _ConnectBudget(timeout)
        lookup = _Lookup.of(host, port, fresh_s=timeout)
        if not lookup.done:
            lookup.wait(budget.left())
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address, share_s in budget.attempts(lookup):
            try:
                return _Stream(self._inner.connect_tcp(address, port, share_s, local_address, socket_options))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _cut(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            timeout = _cut(timeout, httpcore.ConnectTimeout)
        except httpcore.ConnectTimeout:
            await self._inner.aclose()  # httpcore closes only the stream it was given back
            raise
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # As in the sync backend, and more so: httpcore's async backends look the
        # name up on a worker thread that their own timeout does not cut short.
        budget = _ConnectBudget(timeout)
        lookup = _Lookup.of(host, port, fresh_s=timeout, inline=False)
        pause_s = LOOKUP_POLL_FIRST_S
        while not lookup.done:
            left_s = budget.left()
            # The event loop may not wait on a thread: look again, soon at first, then a little less often.
            await self._inner.sleep(pause_s if left_s is None else min(pause_s, left_s))
            pause_s = min(pause_s * 2, LOOKUP_POLL_MAX_S)
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address, share_s in budget.attempts(lookup):
            try:
                return _AsyncStream(await self._inner.connect_tcp(address, port, share_s, local_address, socket_options))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._inner.connect_unix_socket(path, _cut(timeout, httpcore.ConnectTimeout), socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def bound_attempts(client: httpx.Client) -> None:
    """Make `client`'s own transports (direct, and proxies from the environment) read through the bounding backend.

    httpx takes no backend of ours: it builds each transport's httpcore pool
    itself, and honours the environment's proxies only when it builds the
    transports. So the client is built as usual, and then each pool's backend is
    wrapped (httpcore keeps it as `_network_backend`; the SDK's tests fail if that
    ever changes).
    """
    for transport in (client._transport, *client._mounts.values()):
        if isinstance(transport, httpx.HTTPTransport):
            pool = transport._pool
            pool._network_backend = _Backend(pool._network_backend)


def bound_async_attempts(client: httpx.AsyncClient) -> None:
    """The async twin of `bound_attempts`."""
    for transport in (client._transport, *client._mounts.values()):
        if isinstance(transport, httpx.AsyncHTTPTransport):
            pool = transport._pool
            pool._network_backend = _AsyncBackend(pool._network_backend)
