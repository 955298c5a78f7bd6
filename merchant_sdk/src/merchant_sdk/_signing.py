"""Sign terminal requests exactly as the engine checks them."""

from __future__ import annotations

import hashlib
import hmac

TERMINAL_ID_HEADER = "X-Terminal-Id"
TIMESTAMP_HEADER = "X-Timestamp"
SIGNATURE_HEADER = "X-Signature"


def compute_signature(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    """Return the lowercase hex HMAC-SHA256 the engine expects in `X-Signature`.

    Args:
        secret: The terminal's secret; its UTF-8 bytes are the HMAC key.
        method: The HTTP method, upper case (`POST`, `GET`).
        path: The path with its query string exactly as sent
            (`/v1/authorisations?explain=true`).
        timestamp: Unix seconds as a decimal string, the value of `X-Timestamp`.
        body: The raw bytes sent; empty for `GET`.

    Returns:
        The signature of `METHOD\\nPATH\\nTIMESTAMP\\nSHA256_HEX(BODY)`.
    """
    message = "\n".join((method.upper(), path, timestamp, hashlib.sha256(body).hexdigest()))
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def signed_headers(terminal_id: str, secret: str, method: str, path: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """Return the three authentication headers for one attempt of one request."""
    timestamp = str(timestamp_s)
    return {
        TERMINAL_ID_HEADER: terminal_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: compute_signature(secret, method, path, timestamp, body),
    }
