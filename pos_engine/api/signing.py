"""Terminal request signatures: HMAC-SHA256 of METHOD, PATH, TIMESTAMP and the body's SHA-256."""

from __future__ import annotations

import hashlib
import hmac

from pos_engine.domain.registry import Terminal, is_registry_id
from pos_engine.limits import SIGNATURE_CLOCK_SKEW_S_MAX
from pos_engine.service.context import EngineContext
from pos_engine.service.errors import Forbidden, Unauthenticated


def signing_message(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    """The bytes a terminal signs: METHOD\\nPATH\\nTIMESTAMP\\nSHA256_HEX(BODY).

    `path` (and the header values) as WSGI gives them: the bytes sent, one
    character per byte (latin-1), so the message holds exactly the bytes the
    terminal sent and signed. Plain ASCII, what clients send (percent-encoding
    the rest), reads the same either way.
    """
    return f"{method}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode("latin-1", "replace")


def request_hash(method: str, path: str, body: bytes) -> str:
    """What makes two requests 'the same' for idempotency: method, path (as sent) and body."""
    digest = hashlib.sha256(f"{method}\n{path}\n".encode("latin-1", "replace"))
    digest.update(body)
    return digest.hexdigest()


def sign(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the signing message, keyed with the secret's UTF-8 bytes."""
    return hmac.digest(secret.encode("utf-8"), signing_message(method, path, timestamp, body), "sha256").hex()


def verify(
    ctx: EngineContext,
    terminal_id: str | None,
    timestamp: str | None,
    signature: str | None,
    method: str,
    path: str,
    body: bytes,
) -> Terminal:
    """Return the terminal that signed this request, or raise.

    Raises:
        Unauthenticated: a header is missing, the terminal is unknown, the clock is off, or the signature is wrong.
        Forbidden: the terminal is not active.
    """
    if not terminal_id or not timestamp or not signature:
        raise Unauthenticated("signature_missing", "X-Terminal-Id, X-Timestamp and X-Signature are required")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:  # isdigit alone takes '²'; int() does not
        raise Unauthenticated("timestamp_out_of_window", "X-Timestamp must be unix seconds")
    skew_s = abs(ctx.clock.now().timestamp() - int(timestamp))
    if skew_s > SIGNATURE_CLOCK_SKEW_S_MAX:
        raise Unauthenticated(
            "timestamp_out_of_window", f"X-Timestamp is {int(skew_s)} s from the engine's clock (at most {SIGNATURE_CLOCK_SKEW_S_MAX})"
        )
    # An id no terminal can have (a NUL, over 64 characters) is unknown without asking the database,
    # which would refuse some of them (PostgreSQL takes no NUL in text) rather than find nothing.
    terminal = ctx.terminal(terminal_id) if is_registry_id(terminal_id) else None
    if terminal is None:
        raise Unauthenticated("terminal_unknown", "no such terminal")
    expected = sign(terminal.secret, method, path, timestamp, body)
    if not signature.isascii() or not hmac.compare_digest(expected, signature.lower()):
        raise Unauthenticated("signature_invalid", "the signature does not match the request")
    if terminal.status != "active":
        raise Forbidden("terminal_inactive", "this terminal is not active")
    return terminal
