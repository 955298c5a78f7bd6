"""Make one signed swipe against a running engine, with the standard library only.

    python examples/swipe.py demo.json [--url http://127.0.0.1:8080] [--amount-fen 10000]

It takes the first terminal and the first usable card of the demo credentials.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone


def sign(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    message = f"{method}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("credentials", help="the JSON written by `pos-engine demo --out`")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--amount-fen", type=int, default=10_000)
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()

    with open(args.credentials) as file:
        credentials = json.load(file)
    terminal = credentials["terminals"][0]
    card = credentials["cards"]["usable"][0]
    path = "/v1/authorisations" + ("?explain=true" if args.explain else "")
    body = json.dumps(
        {
            "request_id": uuid.uuid4().hex,
            "card_number": card,
            "merchant_id": terminal["merchant_id"],
            "amount_fen": args.amount_fen,
            "occurred_at": datetime.now(timezone.utc).isoformat(),
        }
    ).encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        args.url + path,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Terminal-Id": terminal["terminal_id"],
            "X-Timestamp": timestamp,
            "X-Signature": sign(terminal["secret"], "POST", path, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(json.dumps(json.load(response), indent=2, ensure_ascii=False))
            return 0
    except urllib.error.HTTPError as error:
        print(f"HTTP {error.code}: {error.read().decode()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
