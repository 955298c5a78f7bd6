"""Marshmallow schemas of the terminal API: they parse requests and document answers in OpenAPI."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from pos_engine.domain.evaluation import DECLINE_CODES
from pos_engine.limits import (
    AMOUNT_FEN_MAX,
    CARD_NUMBER_DIGITS_MAX,
    CARD_NUMBER_DIGITS_MIN,
    ID_CHARS_MAX,
    REQUEST_ID_CHARS_MAX,
)

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]+$"
CARD_NUMBER_PATTERN = rf"^[0-9]{{{CARD_NUMBER_DIGITS_MIN},{CARD_NUMBER_DIGITS_MAX}}}$"


class Fen(fields.Integer):
    """An amount in integer fen: a JSON integer, never a float, a string or a boolean."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("must be an integer number of fen")
        return int(super()._deserialize(value, attr, data, **kwargs))


class WholeMatch(validate.Regexp):
    """marshmallow's Regexp, but the pattern must match the whole value.

    Python's `$` also matches before a final newline, so `re.match` took
    "req-1\n" for a request id; JSON Schema's `$` (the OpenAPI document shows
    the same pattern) does not. `fullmatch` reads the pattern as JSON Schema does.
    """

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def request_id_field(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=[validate.Length(1, REQUEST_ID_CHARS_MAX), WholeMatch(REQUEST_ID_PATTERN, error="letters, digits and ._:- only")],
        **kwargs,
    )


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class AuthorisationRequestSchema(StrictSchema):
    request_id = request_id_field(required=True)
    card_number = fields.String(
        required=True,
        validate=WholeMatch(CARD_NUMBER_PATTERN, error=f"must be {CARD_NUMBER_DIGITS_MIN} to {CARD_NUMBER_DIGITS_MAX} digits"),
    )
    merchant_id = fields.String(required=True, validate=validate.Length(1, ID_CHARS_MAX))
    amount_fen = Fen(required=True, validate=validate.Range(1, AMOUNT_FEN_MAX))
    occurred_at = fields.AwareDateTime(required=True, format="iso")


class ReversalRequestSchema(StrictSchema):
    request_id = request_id_field(required=True)


class RefundRequestSchema(StrictSchema):
    request_id = request_id_field(required=True)
    amount_fen = Fen(required=True, validate=validate.Range(1, AMOUNT_FEN_MAX))


class VoidRequestSchema(StrictSchema):
    request_id = request_id_field(required=True)
    original_request_id = request_id_field(
        required=True, metadata={"description": "the request id of the authorisation to void; not this void's own request_id"}
    )

    @validates_schema
    def _not_its_own_original(self, data: dict[str, Any], **_kwargs: Any) -> None:
        # A void is a request of its own: under its original's id it would be both the void and what it voids.
        if data["request_id"] == data["original_request_id"]:
            raise ValidationError("must differ from request_id", field_name="original_request_id")


class ExplainQuerySchema(StrictSchema):
    explain = fields.Boolean(load_default=False, truthy={"true", "1"}, falsy={"false", "0"})


class BenefitSchema(StrictSchema):
    campaign_id = fields.String(required=True)
    rule_id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["discount", "subsidy"]))
    amount_fen = fields.Integer(required=True)


class ExplanationSchema(StrictSchema):
    campaign_id = fields.String(required=True)
    rule_id = fields.String(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(["applied", "partly_applied", "not_applied"]))
    reason = fields.String(
        allow_none=True,
        required=True,
        metadata={
            "description": "what stopped the rule, or null: a cap named with whose it is (rule/card/month/fen, "
            "campaign/card/week/uses, campaign/budget/fen), exclusive:<campaign>/<rule> (an earlier exclusive rule), "
            "condition:<name>, or zero_benefit"
        },
    )
    wanted_fen = fields.Integer(required=True)
    given_fen = fields.Integer(required=True)


class AuthorisationSchema(StrictSchema):
    id = fields.String(required=True)
    request_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["approved", "declined"]))
    decline_code = fields.String(allow_none=True, required=True, validate=validate.OneOf(DECLINE_CODES))
    terminal_id = fields.String(required=True)
    merchant_id = fields.String(required=True)
    card_last4 = fields.String(required=True)
    amount_fen = fields.Integer(required=True)
    discount_fen = fields.Integer(required=True)
    subsidy_fen = fields.Integer(required=True)
    payable_fen = fields.Integer(required=True)
    benefits = fields.List(fields.Nested(BenefitSchema), required=True)
    rules_version = fields.String(required=True)
    occurred_at = fields.String(required=True, metadata={"format": "date-time"})
    recorded_at = fields.String(required=True, metadata={"format": "date-time"})
    explanations = fields.List(fields.Nested(ExplanationSchema), metadata={"description": "only with ?explain=true"})


class AdjustmentSchema(StrictSchema):
    id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["reversal", "refund"]))
    authorisation_id = fields.String(required=True)
    request_id = fields.String(required=True)
    amount_fen = fields.Integer(required=True, metadata={"description": "given back, positive"})
    discount_fen = fields.Integer(required=True)
    subsidy_fen = fields.Integer(required=True)
    payable_fen = fields.Integer(required=True)
    benefits = fields.List(fields.Nested(BenefitSchema), required=True)
    recorded_at = fields.String(required=True, metadata={"format": "date-time"})


class AuthorisationStateSchema(AuthorisationSchema):
    reversed = fields.Boolean(required=True)
    refunded_fen = fields.Integer(required=True)
    adjustments = fields.List(fields.Nested(AdjustmentSchema), required=True)


class VoidResultSchema(StrictSchema):
    original_request_id = fields.String(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(["reversed", "already_reversed", "nothing_to_reverse"]))
    authorisation_id = fields.String(allow_none=True, required=True)
    reversal = fields.Nested(AdjustmentSchema, allow_none=True, required=True)


class HealthSchema(StrictSchema):
    """GET /healthz: 200 with status ok while the worker can serve swipes, 503 with status unavailable."""

    status = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))
    rules_version = fields.String(required=True)
    database_error = fields.String(metadata={"description": "present when the database cannot be reached (503)"})
    counters_error = fields.String(
        metadata={"description": "present when Redis cannot be reached, or may evict counters to make room (503)"}
    )
    rules_reload_error = fields.String(
        metadata={
            "description": "the rulebook on disk is broken or cannot be read, or its reload was put off (a build over "
            "its time limit, tried again at the next poll); the one in use stays (200)"
        }
    )
    card_directory = fields.String(validate=validate.OneOf(["ready", "loading"]))
    card_directory_error = fields.String()


class ProblemSchema(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    code = fields.String(required=True, metadata={"description": "stable machine-readable code"})
    errors = fields.List(fields.Dict(), metadata={"description": "[{field, message}] for invalid fields"})
    request_id = fields.String()
