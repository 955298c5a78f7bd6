"""Client for the pos-engine terminal API, for merchant cash-register software.

    from merchant_sdk import PosClient

    with PosClient("https://pos.example.com", "t-0001", "secret") as client:
        result = client.authorise("6200001234567890", "m-0001", amount_fen=10000)
        charge(result.charge_fen)

Amounts are integer fen; `format_yuan` only prints them. A declined swipe is a
returned `Authorisation`; errors are the `PosError` tree drawn in
`merchant_sdk._exceptions`. This package never imports `pos_engine`.
"""

from ._async_client import AsyncPosClient
from ._client import PosClient, new_request_id
from ._constants import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    INITIAL_RETRY_DELAY_S,
    MAX_RETRIES_LIMIT,
    MAX_RETRY_AFTER_S,
    MAX_RETRY_DELAY_S,
)
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    AuthorisationUnknown,
    BadRequestError,
    ConflictError,
    FieldError,
    NotFoundError,
    PermissionDeniedError,
    PosError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
    ValidationError,
)
from ._models import (
    DECLINE_CODES,
    Adjustment,
    Authorisation,
    AuthorisationDetails,
    Benefit,
    Explanation,
    RequestReversal,
)
from ._money import fen_to_yuan, format_yuan
from ._signing import compute_signature
from ._version import __version__

__all__ = [
    "DECLINE_CODES",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "INITIAL_RETRY_DELAY_S",
    "MAX_RETRIES_LIMIT",
    "MAX_RETRY_AFTER_S",
    "MAX_RETRY_DELAY_S",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Adjustment",
    "AsyncPosClient",
    "AuthenticationError",
    "Authorisation",
    "AuthorisationDetails",
    "AuthorisationUnknown",
    "BadRequestError",
    "Benefit",
    "ConflictError",
    "Explanation",
    "FieldError",
    "NotFoundError",
    "PermissionDeniedError",
    "PosClient",
    "PosError",
    "RateLimitError",
    "RequestReversal",
    "ServerError",
    "UnexpectedResponseError",
    "ValidationError",
    "__version__",
    "compute_signature",
    "fen_to_yuan",
    "format_yuan",
    "new_request_id",
]
