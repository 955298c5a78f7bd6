"""A call keeps to its deadline even when the answer comes a few bytes at a time.

httpx's timeouts restart with every read: a server that sends a byte now and
then never trips one. The server here does exactly that, on a loopback socket,
for far longer than any deadline in these tests; each test checks that the SDK
gave up within its bound, and said why.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator

import httpcore
import pytest

from merchant_sdk import APITimeoutError, AsyncPosClient, AuthorisationUnknown, PosClient, _deadline

DRIP_FOR_S = 30.0  # how long the server goes on dripping: far past every bound below
DRIP_EVERY_S = 0.05  # well inside every read timeout below
# A status line, then a header that never ends: h11 waits for its end up to 16 KiB, 800 s of dripping.
ANSWER_START = b"HTTP/1.1 200 OK\r\nX-Drip: "
SLACK_S = 1.5  # scheduling on a busy 2-core machine; the unbounded SDK took DRIP_FOR_S


class DrippingServer:
    """Answers every request one byte at a time, a byte every DRIP_EVERY_S, for DRIP_FOR_S."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:  # the accept timeout (socket.timeout before Python 3.10), or the listener closed
                continue
            thread = threading.Thread(target=self._drip, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _drip(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(1.0)
            try:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                self.requests += 1
                started = time.monotonic()
                dripped = ANSWER_START + b"a" * int(DRIP_FOR_S / DRIP_EVERY_S)
                for byte in dripped:
                    if self._stop.is_set() or time.monotonic() - started > DRIP_FOR_S:
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(DRIP_EVERY_S)
            except OSError:
                return  # the client gave up and closed: what the tests want

    def close(self) -> None:
        self._stop.set()
        self._accepting.join()
        self._listener.close()
        for thread in self._threads:
            thread.join()


@pytest.fixture(autouse=True)
def no_lookup_left_running(monkeypatch):
    """A lookup an earlier test left hanging (its resolver stand-in still asleep) is not this test's to share."""
    monkeypatch.setattr(_deadline._Lookup, "_running", {})


@pytest.fixture
def dripping() -> Iterator[DrippingServer]:
    server = DrippingServer()
    try:
        yield server
    finally:
        server.close()


def test_a_dripped_answer_is_cut_off_at_the_call_s_deadline(dripping):
    with PosClient(dripping.base_url, "t-1", "secret", timeout=1.0, deadline=2.0, max_retries=0) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as raised:
            client.get("au-1")
        took_s = time.monotonic() - started

    assert 2.0 <= took_s < 2.0 + SLACK_S, f"the call took {took_s:.1f} s against a 2 s deadline"
    assert dripping.requests == 1
    assert raised.value.may_have_reached_server
    assert "no answer in time" in str(raised.value)


def test_without_a_deadline_each_attempt_is_cut_off_at_the_sum_of_its_timeouts(dripping):
    # 0.4 s each for waiting on the pool, connecting, sending and reading: 1.6 s an attempt.
    with PosClient(dripping.base_url, "t-1", "secret", timeout=0.4, deadline=None, max_retries=1) as client:
        client._rand = lambda: 0.0  # no jitter: the one retry waits INITIAL_RETRY_DELAY_S
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            client.get("au-1")
        took_s = time.monotonic() - started

    assert dripping.requests == 2  # the first attempt and its retry, each cut off
    assert 2 * 1.6 + 0.25 <= took_s < 2 * 1.6 + 0.25 + SLACK_S, f"two attempts took {took_s:.1f} s"


def test_an_authorisation_dripped_past_its_deadline_is_unknown_and_its_void_is_bounded_too(dripping):
    # The void after it is one attempt more, itself dripped to: cut at its own 4 x 0.5 s.
    with PosClient(dripping.base_url, "t-1", "secret", timeout=0.5, deadline=1.5, max_retries=0) as client:
        started = time.monotonic()
        with pytest.raises(AuthorisationUnknown) as raised:
            client.authorise("6200000000000001", "m-1", 10000, request_id="till-7-0001")
        took_s = time.monotonic() - started
        assert client.pending_reversals == ("till-7-0001",)
        client._pending.clear()  # nothing to flush into the dripping server on close

    assert 1.5 + 2.0 <= took_s < 1.5 + 2.0 + SLACK_S, f"the authorisation and its void took {took_s:.1f} s"
    assert dripping.requests == 2  # the authorisation, then its void
    assert raised.value.reversal_pending


def test_the_async_client_cuts_a_dripped_answer_off_at_the_deadline(dripping):
    async def call() -> float:
        async with AsyncPosClient(dripping.base_url, "t-1", "secret", timeout=1.0, deadline=2.0, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                await client.get("au-1")
            return time.monotonic() - started

    took_s = asyncio.run(call())

    assert 2.0 <= took_s < 2.0 + SLACK_S, f"the call took {took_s:.1f} s against a 2 s deadline"
    assert dripping.requests == 1


@pytest.mark.parametrize("client_class", [PosClient, AsyncPosClient])
def test_a_proxy_named_in_the_environment_is_still_used_and_bounded_too(dripping, monkeypatch, client_class):
    # The engine's name resolves nowhere: only through the proxy (the dripping server) does a request go out.
    monkeypatch.setenv("HTTP_PROXY", dripping.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def call() -> float:
        async with AsyncPosClient("http://pos.invalid", "t-1", "secret", timeout=1.0, deadline=1.5, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                await client.get("au-1")
            return time.monotonic() - started

    if client_class is AsyncPosClient:
        took_s = asyncio.run(call())
    else:
        with PosClient("http://pos.invalid", "t-1", "secret", timeout=1.0, deadline=1.5, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                client.get("au-1")
            took_s = time.monotonic() - started

    assert dripping.requests == 1  # it reached the proxy
    assert 1.5 <= took_s < 1.5 + SLACK_S, f"the call took {took_s:.1f} s against a 1.5 s deadline"


class _Refusing(httpcore.NetworkBackend):
    """Stands in for httpcore's sync backend: each address fails as told, and the fake clock moves on by its timeout."""

    def __init__(self, clock: list[float], timing_out: set[str]) -> None:
        self.clock = clock
        self.timing_out = timing_out
        self.tried: list[tuple[str, float | None]] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.tried.append((host, timeout))
        if host in self.timing_out:
            self.clock[0] += timeout
            raise httpcore.ConnectTimeout("timed out")
        raise httpcore.ConnectError("refused")


def _resolving_to(addresses, looked_up=None, hang_s=0.0):
    """A stand-in for socket.getaddrinfo: a name (not a written address) resolves to `addresses`, after `hang_s`."""

    def getaddrinfo(host, port, *args, flags=0, **kwargs):
        if flags & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if looked_up is not None:
            looked_up.append(host)
        time.sleep(hang_s)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    return getaddrinfo


ADDRESSES = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


@pytest.mark.parametrize("backend_class", [_deadline._Backend, _deadline._AsyncBackend])
def test_each_address_of_a_name_gets_an_even_share_of_what_is_left_not_the_whole_connect_timeout(monkeypatch, backend_class):
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(ADDRESSES))
    clock = [100.0]

    def connect(inner):
        backend = backend_class(inner if backend_class is _deadline._Backend else _AsyncRefusing(inner))
        with _deadline.attempt_ends_at(101.5, lambda: clock[0]):
            if backend_class is _deadline._Backend:
                return backend.connect_tcp("engine.example", 443, timeout=2.0)
            return asyncio.run(backend.connect_tcp("engine.example", 443, timeout=2.0))

    # None answers: each gets an even share of what is left; then the time is up.
    inner = _Refusing(clock, timing_out=set(ADDRESSES))
    with pytest.raises(httpcore.ConnectTimeout):
        connect(inner)
    assert inner.tried == [("192.0.2.1", 0.5), ("192.0.2.2", 0.5), ("192.0.2.3", 0.5)]
    assert clock[0] == 101.5

    # Refused at once: each tried in turn, none past the attempt's end, none given the 2 s connect timeout.
    inner = _Refusing(clock, timing_out=set())
    clock[0] = 100.0
    with pytest.raises(httpcore.ConnectError, match="refused"):
        connect(inner)
    assert inner.tried == [("192.0.2.1", 0.5), ("192.0.2.2", 0.75), ("192.0.2.3", 1.5)]


class _AsyncRefusing(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: _Refusing) -> None:
        self.inner = inner

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)


def test_attempts_that_want_a_name_meanwhile_share_its_one_lookup(monkeypatch):
    looked_up = []
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], looked_up, hang_s=1.0))
    inner = _Refusing([0.0], timing_out=set())
    backend = _deadline._Backend(inner)
    errors = []

    def attempt():
        with _deadline.attempt_ends_at(time.monotonic() + 3.0, time.monotonic):
            try:
                backend.connect_tcp("engine.example", 443, timeout=2.0)
            except httpcore.ConnectError as error:
                errors.append(error)

    attempts = [threading.Thread(target=attempt) for _ in range(5)]
    for thread in attempts:
        thread.start()
    for thread in attempts:
        thread.join()

    assert looked_up == ["engine.example"]  # one lookup (one thread) for the five attempts
    assert len(errors) == 5 and [host for host, _timeout in inner.tried] == ["192.0.2.1"] * 5
    attempt()  # once it is done, the next attempt looks the name up again: nothing is cached
    assert looked_up == ["engine.example"] * 2


def test_without_an_attempt_end_the_async_lookup_still_keeps_to_the_connect_timeout(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], hang_s=DRIP_FOR_S / 6))
    backend = _deadline._AsyncBackend(_AsyncRefusing(_Refusing([0.0], timing_out=set())))
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout, match="time to connect"):
        asyncio.run(backend.connect_tcp("engine.example", 443, timeout=1.0))  # no attempt_ends_at around it
    took_s = time.monotonic() - started
    assert 1.0 <= took_s < 1.0 + SLACK_S


def test_a_lookup_that_cannot_start_its_thread_looks_the_name_up_on_the_caller_s(monkeypatch):
    looked_up = []
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], looked_up))

    def no_new_threads(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", no_new_threads)
    inner = _Refusing([0.0], timing_out=set())
    with _deadline.attempt_ends_at(time.monotonic() + 3.0, time.monotonic), pytest.raises(httpcore.ConnectError, match="refused"):
        _deadline._Backend(inner).connect_tcp("engine.example", 443, timeout=2.0)
    [(address, given_s)] = inner.tried
    assert looked_up == ["engine.example"] and address == "192.0.2.1" and 1.9 < given_s <= 2.0
    assert _deadline._Lookup._running == {}


@pytest.mark.parametrize("client_class", [PosClient, AsyncPosClient])
def test_a_name_whose_lookup_hangs_is_cut_off_at_the_deadline(monkeypatch, client_class):
    real_getaddrinfo = socket.getaddrinfo
    looked_up = []

    def hanging(host, port, *args, **kwargs):
        if host not in ("engine.example", b"engine.example"):  # anyio (the async client) passes bytes
            return real_getaddrinfo(host, port, *args, **kwargs)
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        looked_up.append("engine.example")
        time.sleep(DRIP_FOR_S / 6)  # a resolver whose server does not answer: 5 s, past the 1 s deadline
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    started = time.monotonic()
    if client_class is PosClient:
        client = PosClient("http://engine.example:8080", "t-1", "secret", timeout=3.0, deadline=1.0, max_retries=0)
        with client, pytest.raises(APITimeoutError) as raised:
            client.get("au-1")
    else:

        async def call():
            async with AsyncPosClient("http://engine.example:8080", "t-1", "secret", timeout=3.0, deadline=1.0, max_retries=0) as client:
                await client.get("au-1")

        with pytest.raises(APITimeoutError) as raised:
            asyncio.run(call())
    took_s = time.monotonic() - started

    assert 1.0 <= took_s < 1.0 + SLACK_S, f"the call took {took_s:.1f} s against a 1 s deadline"
    assert looked_up == ["engine.example"]
    assert not raised.value.may_have_reached_server


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_looks_a_name_up_itself_not_waiting_on_its_parent_s_lookup(monkeypatch):
    looked_up = []
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], looked_up, hang_s=2.0))
    parent_s = _deadline._Lookup.of("engine.example", 443)  # running on a thread the child will not have
    reading, writing = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process with threads (Python 3.12+)
        child = os.fork()
    if child == 0:  # the child: its own lookup, done within the parent's 2 s
        try:
            lookup = _deadline._Lookup.of("engine.example", 443)
            lookup.wait(5.0)
            os.write(writing, f"{lookup is not parent_s} {lookup.done} {lookup.addresses()[0][4][0]}".encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as answer:
        said = answer.read()
    os.waitpid(child, 0)
    parent_s.wait(5.0)
    assert said == "True True 192.0.2.1"


def test_the_lookup_s_time_counts_against_the_connect_timeout(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], hang_s=0.6))
    inner = _Refusing([0.0], timing_out=set())
    with _deadline.attempt_ends_at(time.monotonic() + 10.0, time.monotonic), pytest.raises(httpcore.ConnectError):
        _deadline._Backend(inner).connect_tcp("engine.example", 443, timeout=1.0)
    [(_address, given_s)] = inner.tried
    assert given_s <= 0.4 + 0.01  # what the 0.6 s lookup left of the 1 s, not another whole second


def test_a_lookup_left_hanging_since_before_the_connect_timeout_is_not_joined_but_started_again(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], hang_s=DRIP_FOR_S / 6))  # the network was down
    stale = _deadline._Lookup.of("engine.example", 443, fresh_s=0.3)
    assert _deadline._Lookup.of("engine.example", 443, fresh_s=0.3) is stale  # young: joined
    time.sleep(0.4)
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.2"]))  # the network is back
    fresh = _deadline._Lookup.of("engine.example", 443, fresh_s=0.3)
    fresh.wait(2.0)
    assert fresh is not stale and not stale.done
    assert [entry[4][0] for entry in fresh.addresses()] == ["192.0.2.2"]


def test_an_interrupt_while_a_lookup_starts_leaves_no_lookup_for_others_to_wait_on(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"]))

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _deadline._Lookup.of("engine.example", 443)
    assert _deadline._Lookup._running == {}


def test_an_ipv6_link_local_address_keeps_its_zone(monkeypatch):
    loopback = socket.if_nameindex()[0]  # (index, name) of an interface this machine has
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *args, flags=0, **kwargs: [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, loopback[0]))],
    )
    inner = _Refusing([0.0], timing_out=set())
    with _deadline.attempt_ends_at(time.monotonic() + 3.0, time.monotonic), pytest.raises(httpcore.ConnectError):
        _deadline._Backend(inner).connect_tcp("engine.example", 443, timeout=2.0)
    assert [host for host, _timeout in inner.tried] == [f"fe80::1%{loopback[1]}"]
    assert _deadline._host_of(("192.0.2.1", 443)) == "192.0.2.1"


def test_the_async_client_with_no_thread_to_look_up_fails_at_once_rather_than_block_its_event_loop(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to(["192.0.2.1"], hang_s=1.0))

    def no_new_threads(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_new_threads)
    backend = _deadline._AsyncBackend(_AsyncRefusing(_Refusing([0.0], timing_out=set())))
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectError, match="can't start new thread"):
        asyncio.run(backend.connect_tcp("engine.example", 443, timeout=2.0))
    assert time.monotonic() - started < 0.5  # the resolver's 1 s was not waited for
    assert _deadline._Lookup._running == {}
