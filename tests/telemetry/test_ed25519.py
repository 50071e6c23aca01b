"""The ingest's Ed25519 verify (telemetry/ingest/ed25519.py): libsodium, installed by the suite,
answers as `cryptography` (OpenSSL) does for every signature made with a private key, refuses
what either refuses, and refuses the forgeries under small-order keys that OpenSSL lets through."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from telemetry.ingest import ed25519
from telemetry.services import RegistryError, device_provision
from tests import factories

# The order of the base point: S + L is the non-canonical twin of a signature's S.
L = 2**252 + 27742317777372353535851937790883648493


def _raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_the_ingest_verifies_with_libsodium() -> None:
    assert ed25519.sodium_verify is not None and ed25519.BACKEND == "libsodium"
    assert ed25519.verify is ed25519.sodium_verify


def test_libsodium_and_openssl_agree_on_signed_tampered_and_malformed_input() -> None:
    sodium = ed25519.sodium_verify
    assert sodium is not None
    rng = random.Random(5)
    for n in range(100):
        private = Ed25519PrivateKey.generate()
        public = _raw(private)
        message = rng.randbytes(rng.randrange(0, 600))
        signature = private.sign(message)
        flipped = bytearray(signature)
        flipped[rng.randrange(64)] ^= 1 << rng.randrange(8)
        s = int.from_bytes(signature[32:], "little")
        cases = [
            (public, signature, message, True),
            (public, signature, message + b"x", False),
            (public, bytes(flipped), message, False),
            (_raw(Ed25519PrivateKey.generate()), signature, message, False),  # another device's key
            (public, signature[:32] + (s + L).to_bytes(32, "little"), message, False),  # S not reduced
            (public, signature[:63], message, False),
            (public[:31], signature, message, False),
        ]
        for key, sig, body, expected in cases:
            assert sodium(key, sig, body) is expected, n
            assert ed25519.openssl_verify(key, sig, body) is expected, n


def test_a_small_order_key_verifies_nothing() -> None:
    identity = bytes([1]) + bytes(31)  # the neutral point as a public key
    forged = identity + bytes(32)  # R = identity, S = 0: "signs" every message under it
    Ed25519PublicKey.from_public_bytes(identity).verify(forged, b"any body")  # what OpenSSL lets through
    assert ed25519.sodium_verify is not None and not ed25519.sodium_verify(identity, forged, b"any body")
    assert not ed25519.openssl_verify(identity, forged, b"any body")  # the fallback refuses it too


def test_every_small_order_encoding_is_recognised_and_real_keys_are_not() -> None:
    order_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    for point in (bytes(32), bytes([1]) + bytes(31), order_8, bytes(b"\xec" + b"\xff" * 30 + b"\x7f")):
        assert ed25519.small_order(point)
        assert ed25519.small_order(point[:31] + bytes([point[31] | 0x80]))  # x's sign bit set
    assert not any(ed25519.small_order(_raw(Ed25519PrivateKey.generate())) for _ in range(200))


@pytest.mark.django_db
def test_provisioning_refuses_a_small_order_public_key() -> None:
    pem = Ed25519PublicKey.from_public_bytes(bytes([1]) + bytes(31)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ward = factories.ward()
    with pytest.raises(RegistryError, match="small-order") as refused:
        device_provision(device_id="lumee-weak", ward_code=ward.code, public_key_pem=pem)
    assert refused.value.code == "weak_key"
