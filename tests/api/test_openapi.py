"""The OpenAPI document of the authorisation operation, pinned: the fast path must not change what it says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pos_engine.api import create_app, schemas
from pos_engine.config import Settings
from pos_engine.domain.clock import FixedClock
from pos_engine.limits import AMOUNT_FEN_MAX, ID_CHARS_MAX, REQUEST_ID_CHARS_MAX
from tests.conftest import open_backend
from tests.helpers import make_context


def problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


AUTHORISATION_OPERATION = {
    "parameters": [{"in": "query", "name": "explain", "schema": {"type": "boolean", "default": False}, "required": False}],
    "responses": {
        "422": problem(
            "validation_failed (a body field, or a query parameter the operation does not take or that is given twice) "
            "and business validation"
        ),
        "400": problem("malformed_json, bad_request (a query string that is not UTF-8)"),
        "401": problem("signature_missing, signature_invalid, timestamp_out_of_window, terminal_unknown"),
        "403": problem("terminal_inactive, merchant_mismatch"),
        "409": problem("idempotency_conflict, request_in_progress, and state conflicts"),
        "413": problem("body_too_large"),
        "503": problem("unavailable: the database or the counter store did not answer in time; retry with the same request_id"),
        "415": problem("unsupported_media_type"),
        "200": {
            "description": "approved or declined (a business decline is 200)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Authorisation"}}},
        },
        "default": {"$ref": "#/components/responses/DEFAULT_ERROR"},
    },
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AuthorisationRequest"}}}},
    "summary": "Authorise a swipe: decide its discount and subsidy and record it.",
    "tags": ["terminal"],
}


@pytest.fixture
def openapi(request: pytest.FixtureRequest, tmp_path: Any, rulebook: Any, clock: FixedClock) -> Iterator[dict[str, Any]]:
    with open_backend("sqlite", request, tmp_path) as backend:
        app = create_app(Settings(), make_context(backend.database, backend.counters, rulebook, clock))
        response = app.test_client().get("/openapi.json")
        assert response.status_code == 200
        yield response.get_json()


def test_the_authorisation_operation_is_documented_as_before_the_fast_path(openapi: dict[str, Any]) -> None:
    operation = openapi["paths"]["/v1/authorisations"]["post"]
    assert operation == AUTHORISATION_OPERATION
    assert list(operation) == list(AUTHORISATION_OPERATION)
    assert list(operation["responses"]) == list(AUTHORISATION_OPERATION["responses"])  # type: ignore[call-overload]
    assert list(openapi["paths"]["/v1/authorisations"]) == ["post"]


def test_the_authorisation_request_schema_is_documented_with_its_limits(openapi: dict[str, Any]) -> None:
    assert openapi["components"]["schemas"]["AuthorisationRequest"] == {
        "type": "object",
        "properties": {
            "request_id": {"type": "string", "minLength": 1, "maxLength": REQUEST_ID_CHARS_MAX, "pattern": schemas.REQUEST_ID_PATTERN},
            "card_number": {"type": "string", "pattern": schemas.CARD_NUMBER_PATTERN},
            "merchant_id": {"type": "string", "minLength": 1, "maxLength": ID_CHARS_MAX},
            "amount_fen": {"type": "integer", "minimum": 1, "maximum": AMOUNT_FEN_MAX},
            "occurred_at": {"type": "string", "format": "date-time"},
        },
        "required": ["amount_fen", "card_number", "merchant_id", "occurred_at", "request_id"],
        "additionalProperties": False,
    }


def test_every_error_the_document_describes_is_a_problem_and_every_operation_asks_for_the_signature(openapi: dict[str, Any]) -> None:
    assert openapi["components"]["responses"]["DEFAULT_ERROR"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    schemes = openapi["components"]["securitySchemes"].values()
    assert {scheme["name"] for scheme in schemes} == {"X-Terminal-Id", "X-Timestamp", "X-Signature"}
    assert openapi["security"] == [{name: [] for name in openapi["components"]["securitySchemes"]}]
    for path, method in (
        ("/v1/authorisations/{authorisation_id}", "get"),
        ("/v1/authorisations/{authorisation_id}/reversal", "post"),
        ("/v1/authorisations/{authorisation_id}/refunds", "post"),
    ):
        assert openapi["paths"][path][method]["responses"]["404"] == problem("not_found"), path
