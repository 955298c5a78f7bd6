#!/usr/bin/env python3
"""Swipe one union card at a till: authorise, print the receipt, then refund or reverse if asked.

Against the demo world of a local engine (`pos-engine demo --out demo.json`):

    python till.py --credentials demo.json
    python till.py --credentials demo.json --card-kind lost
    python till.py --credentials demo.json --amount-fen 2500 --explain --refund-fen 1000

Or with every value given:

    python till.py --base-url https://pos.example.com --terminal-id T --secret S \\
        --card 6200001234567890 --merchant m-0001 --amount-fen 10000

Exit status: 0 when the engine answered (approved or declined), 2 when the
answer is unknown (charge the full price; the SDK voided the request), 1 on
any other error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from merchant_sdk import (
    Authorisation,
    AuthorisationUnknown,
    PosClient,
    PosError,
    ValidationError,
    format_yuan,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEMO_MERCHANT_ID = "m-wujin-dining-001"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, swipe once, and return the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        print(f"till: {exc}", file=sys.stderr)
        return 1
    with PosClient(settings["base_url"], settings["terminal_id"], settings["secret"], timeout=args.timeout_s) as client:
        return run_till(
            client,
            card_number=settings["card"],
            merchant_id=settings["merchant"],
            amount_fen=args.amount_fen,
            explain=args.explain,
            refund_fen=args.refund_fen,
            reverse=args.reverse,
        )


def run_till(
    client: PosClient,
    *,
    card_number: str,
    merchant_id: str,
    amount_fen: int,
    explain: bool = False,
    refund_fen: int | None = None,
    reverse: bool = False,
    out: TextIO | None = None,
) -> int:
    """Authorise one swipe with `client` and print what the till does; return the exit status."""
    out = out or sys.stdout
    try:
        authorisation = client.authorise(card_number, merchant_id, amount_fen, explain=explain)
    except AuthorisationUnknown as error:
        # The SDK has already voided the request: no discount, no subsidy.
        print(f"No answer from the engine: charge the full price {format_yuan(amount_fen)}.", file=out)
        print(f"  ({error})", file=out)
        return 2
    except ValidationError as error:
        print(f"Refused: {error.code}", file=out)
        for field_error in error.errors:
            print(f"  {field_error.field}: {field_error.message}", file=out)
        print(f"Charge the full price {format_yuan(amount_fen)}.", file=out)
        return 1
    except PosError as error:
        print(f"Engine error ({error.code or error.status or type(error).__name__}): {error}", file=out)
        print(f"Charge the full price {format_yuan(amount_fen)}.", file=out)
        return 1

    _print_receipt(authorisation, out)
    if not authorisation.approved or not (refund_fen or reverse):
        return 0
    try:
        if refund_fen:
            refund = client.refund(authorisation.id, refund_fen)
            print(f"Refunded {format_yuan(refund.amount_fen)}: give back {format_yuan(refund.payable_fen)} ({refund.id})", file=out)
        if reverse:
            reversal = client.reverse(authorisation.id)
            print(f"Reversed: give back {format_yuan(reversal.payable_fen)} ({reversal.id})", file=out)
        details = client.get(authorisation.id)
    except PosError as error:
        # Safe to repeat: the same request_id makes the server answer as before.
        print(f"Engine error ({error.code or error.status}): {error}; repeat with request_id={error.request_id}", file=out)
        return 1
    print(f"Now: reversed={details.reversed}, refunded {format_yuan(details.refunded_fen)}", file=out)
    return 0


def _print_receipt(authorisation: Authorisation, out: TextIO) -> None:
    print(f"Card ****{authorisation.card_last4} at {authorisation.merchant_id}", file=out)
    print(f"  Amount     {format_yuan(authorisation.amount_fen):>12}", file=out)
    for benefit in authorisation.benefits:
        label = "Discount" if benefit.kind == "discount" else "Subsidy"
        print(f"  {label:<10} {format_yuan(-benefit.amount_fen):>12}  {benefit.campaign_id}/{benefit.rule_id}", file=out)
    print(f"  To pay     {format_yuan(authorisation.charge_fen):>12}", file=out)
    if authorisation.approved:
        print(f"Approved {authorisation.id} (rules {authorisation.rules_version})", file=out)
    else:
        print(f"Declined ({authorisation.decline_code}): charge the full price", file=out)
    for explanation in authorisation.explanations or ():
        reason = f": {explanation.reason}" if explanation.reason else ""
        given = format_yuan(explanation.given_fen)
        print(f"  why: {explanation.campaign_id}/{explanation.rule_id} {explanation.outcome} {given}{reason}", file=out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Swipe one union card at a till through the merchant SDK.")
    parser.add_argument("--credentials", type=Path, help="a demo credentials JSON file (pos-engine demo --out FILE)")
    parser.add_argument("--base-url", help=f"the engine's address (default {DEFAULT_BASE_URL})")
    parser.add_argument("--terminal-id", help="the terminal id (default: from --credentials)")
    parser.add_argument("--secret", help="the terminal secret (default: from --credentials)")
    parser.add_argument("--card", help="the card number (default: a demo card of --card-kind)")
    parser.add_argument("--card-kind", default="usable", choices=("usable", "lost", "review_due", "not_in_service"))
    parser.add_argument("--merchant", help=f"the merchant id (default: the terminal's, preferring {DEMO_MERCHANT_ID})")
    parser.add_argument("--amount-fen", type=int, default=10000, help="the purchase amount in fen (default 10000)")
    parser.add_argument("--explain", action="store_true", help="ask why each rule applied or not")
    parser.add_argument("--refund-fen", type=int, help="after approval, refund this many fen")
    parser.add_argument("--reverse", action="store_true", help="after approval, reverse the authorisation")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="seconds per attempt (default 5)")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, str]:
    credentials: dict[str, Any] = {}
    if args.credentials is not None:
        credentials = json.loads(args.credentials.read_text(encoding="utf-8"))
    terminal = _pick_terminal(credentials.get("terminals", []), args.terminal_id, args.merchant)
    settings = {
        "base_url": args.base_url or DEFAULT_BASE_URL,
        "terminal_id": args.terminal_id or terminal.get("terminal_id"),
        "secret": args.secret or terminal.get("secret"),
        "merchant": args.merchant or terminal.get("merchant_id"),
        "card": args.card or (credentials.get("cards", {}).get(args.card_kind) or [None])[0],
    }
    missing = [name for name, value in settings.items() if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: give them as options or with --credentials")
    return settings


def _pick_terminal(terminals: list[dict[str, Any]], terminal_id: str | None, merchant_id: str | None) -> dict[str, Any]:
    for wanted_key, wanted in (("terminal_id", terminal_id), ("merchant_id", merchant_id), ("merchant_id", DEMO_MERCHANT_ID)):
        for terminal in terminals:
            if wanted and terminal.get(wanted_key) == wanted:
                return terminal
    return terminals[0] if terminals else {}


if __name__ == "__main__":
    sys.exit(main())
