"""The ceiling: a bare Flask app whose one endpoint parses and answers JSON the size of a swipe's.

`loadtests/bench.py` serves it under the same gunicorn configuration as the
engine, so the ratio engine/ceiling shows what the engine's own work costs.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, request

app = Flask(__name__)

# An answer shaped and sized like an approved authorisation.
ANSWER_TEMPLATE: dict[str, Any] = {
    "id": "au_00000000000000000000000000",
    "status": "approved",
    "decline_code": None,
    "terminal_id": "t-wujin-dining-001",
    "merchant_id": "m-wujin-dining-001",
    "card_last4": "0000",
    "amount_fen": 0,
    "discount_fen": 500,
    "subsidy_fen": 950,
    "payable_fen": 8550,
    "benefits": [
        {"campaign_id": "partner-discounts-2026", "rule_id": "dining-5pct", "kind": "discount", "amount_fen": 500},
        {"campaign_id": "city-dining-2026", "rule_id": "dining-10pct", "kind": "subsidy", "amount_fen": 950},
    ],
    "rules_version": "000000000000",
    "occurred_at": "2026-11-25T04:00:00+00:00",
    "recorded_at": "2026-11-25T04:00:00.000000+00:00",
}


@app.post("/v1/authorisations")
def authorise() -> Response:
    body = json.loads(request.get_data())
    answer = dict(ANSWER_TEMPLATE, request_id=body["request_id"], amount_fen=body["amount_fen"])
    return Response(json.dumps(answer, separators=(",", ":")), mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")
