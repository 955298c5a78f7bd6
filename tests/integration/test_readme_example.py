"""The README's example swipe, against the demo world served by gunicorn, gets a discount and a subsidy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.live import live_engine

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_swipe_is_approved_with_a_discount_and_a_subsidy(tmp_path: Path) -> None:
    with live_engine(tmp_path, workers=2) as engine:
        credentials_path = tmp_path / "demo.json"
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "swipe.py"), str(credentials_path), "--url", engine.base_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["status"] == "approved"
        # The 5 % partner discount and the city's 10 % on the 9,500 fen left; on a weekend (in Changzhou)
        # the Wujin campaign's 15 % of the 8,550 fen left then stacks on top (docs/rules.md).
        assert answer["discount_fen"] == 500
        assert answer["subsidy_fen"] in (950, 950 + 1_282)
        assert answer["discount_fen"] + answer["subsidy_fen"] + answer["payable_fen"] == answer["amount_fen"] == 10_000
        health = httpx.get(engine.base_url + "/healthz").json()
        assert health["rules_version"] == answer["rules_version"]
        spec = httpx.get(engine.base_url + "/openapi.json").json()
        assert "/v1/authorisations" in spec["paths"]


def test_demo_cards_of_each_kind_get_their_decline_code(tmp_path: Path) -> None:
    with live_engine(tmp_path, workers=1) as engine:
        terminal = engine.terminal(0)
        expected = {"lost": "card_inactive", "review_due": "annual_review_due", "not_in_service": "member_not_in_service"}
        from datetime import datetime, timezone

        with httpx.Client(timeout=10) as client:
            for kind, code in expected.items():
                body = {
                    "request_id": f"demo-{kind}",
                    "card_number": engine.credentials["cards"][kind][0],
                    "merchant_id": terminal["merchant_id"],
                    "amount_fen": 10_000,
                    "occurred_at": datetime.now(timezone.utc).isoformat(),
                }
                answer = engine.signed_post(client, terminal, "/v1/authorisations", body).json()
                assert (answer["status"], answer["decline_code"]) == ("declined", code)
