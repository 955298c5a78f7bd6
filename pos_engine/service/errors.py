"""Errors the use cases raise; pos_engine.api.errors maps each to one HTTP status.

    ServiceError
     ├── Unauthenticated        who is calling cannot be established (401)
     ├── Forbidden              the caller may not do this (403)
     ├── NotFound               no such resource (404)
     ├── Conflict               the resource's state forbids it (409)
     ├── Unprocessable          well-formed but invalid input (422), with field errors
     └── Unavailable            a dependency is down (503)

    DuplicateKey                raised by a unit of work when a unique key already exists;
                                the use cases catch it and replay the stored answer.
    AlreadyClaimed              raised by a counter store that saw the same request already;
                                the use cases then wait for and replay its stored answer.
    CountersBusy                raised by `counters rebuild` on a store outside the ledger's
                                database (Redis) when swipes change counters while it runs.
    HoldExpired                 raised by a give-back that came after its note had expired: it
                                gave nothing back (counters stay above the ledger, the safe side).

Each error carries a stable `code` that clients match on.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the use-case errors."""

    def __init__(self, code: str, detail: str, field_errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field_errors = field_errors or {}


class Unauthenticated(ServiceError):
    """The request's signature, timestamp or terminal did not check out."""


class Forbidden(ServiceError):
    """The caller is known but may not do this."""


class NotFound(ServiceError):
    """No such resource, or not one this caller may see."""


class Conflict(ServiceError):
    """The resource's state forbids the request."""


class Unprocessable(ServiceError):
    """Well-formed input that cannot be acted on."""


class Unavailable(ServiceError):
    """A dependency (database, Redis) is down."""


class DuplicateKey(Exception):
    """A unique key (an idempotency record) was already taken by a concurrent request."""


class OutcomeUnknown(Exception):
    """A write was sent and its answer lost with the connection: it may or may not have committed (a 503)."""


class AlreadyClaimed(Exception):
    """The counter store has seen this request already: its answer is being, or has been, recorded."""


class CountersBusy(Exception):
    """Swipes changed counters while a rebuild needed them still: the rebuild wrote nothing it could not stand by.

    The message says what was written, if anything; every counter is then either rebuilt or as it was.
    """


class CountersMisconfigured(Exception):
    """The counter store is set up so that it may lose counters (Redis evicting keys to make room): a cap could be passed."""


class HoldExpired(Exception):
    """A give-back came after the note its adjustment made before committing had expired, so it gave nothing back.

    A rebuild may have counted the adjustment from the ledger meanwhile; giving back as well would count it
    twice. Counters stay above the ledger (the safe side) until `counters rebuild`.
    """
