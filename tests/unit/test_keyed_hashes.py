"""The two keyed hashes that outlive a release: card hashes are stored, terminal signatures are made by tills.

The expected values were computed with openssl (`openssl dgst -sha256 -hmac KEY`),
not with the engine, so a change of implementation that changes a value fails here.
"""

from __future__ import annotations

from pos_engine.api.signing import sign
from pos_engine.domain.registry import card_hash


def test_a_card_hash_is_the_hex_hmac_sha256_of_the_card_number() -> None:
    assert card_hash(b"card-key-1", "6217000000000001") == "ff678c0dcb89d52c1ff2dbdcfadc7f4eb0ed78518b6e6689b62c7eb1b756fee8"


def test_a_signature_is_the_hex_hmac_sha256_of_method_path_timestamp_and_the_body_digest() -> None:
    signature = sign("secret-t-1", "POST", "/v1/authorisations", "1764400000", b'{"a":1}')
    assert signature == "8910b236fe47f07ef106b39e49064501f29cf35f5b5629b541cd95c6aa584dbb"
