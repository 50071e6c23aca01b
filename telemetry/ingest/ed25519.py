"""Ed25519 signature verification for the ingest doors: libsodium when the system has it.

Every device message, and every part of a gateway message, is verified on its own (telemetry/
ingest/auth.py). Measured on the 2-core benchmark machine, `cryptography`'s verify (OpenSSL)
takes ~200 µs of CPU and libsodium's `crypto_sign_verify_detached` ~100 µs, for the same
signatures: with the other per-part costs cut, verification was the largest single item of the
door's CPU per reading (docs/benchmarks.md, Fleet). libsodium is the system library of Debian's
`libsodium23`, called through ctypes (which releases the GIL for the call, as `cryptography`
does); without it, `cryptography` verifies, as before.

The two agree on every signature made with a private key (what a device holds, what
provision_device issues). libsodium is the stricter one: it also refuses signatures under a
small-order or non-canonical public key and with a small-order R, which OpenSSL accepts. Under
such a key (the identity point, say) OpenSSL verifies the signature (R = identity, S = 0) for
every message: such "signatures" are forgeries by construction, and refusing them (401
`bad_signature`) is the only change of answer. Small-order keys are refused on both paths
(`small_order`, libsodium's blocklist): provision_device will not register one (`weak_key`), and
the OpenSSL fallback and verify_batch never verify against one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

Verify = Callable[[bytes, bytes, bytes], bool]  # public key, signature, message


def _sodium() -> Verify | None:
    """libsodium's verify, or None when the library is missing or does not initialise."""
    name = ctypes.util.find_library("sodium")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        if lib.sodium_init() < 0:
            return None
        function = lib.crypto_sign_verify_detached
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
    function.restype = ctypes.c_int

    def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
        # Lengths checked here: the C function reads exactly 32 and 64 bytes from its pointers.
        if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            return False
        return int(function(signature, message, len(message), public_key)) == 0

    return verify


# The encodings of Ed25519's eight small-order points (libsodium's blocklist, the sign bit of x in
# the last byte's top bit left out): the identity, the point of order 2, the two of order 4 and
# the four of order 8, and the non-canonical encodings of 0 and 1 as p and p + 1. Under such a
# public key, R = identity and S = 0 verify for every message.
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def small_order(public_key: bytes) -> bool:
    """Whether `public_key` encodes a point of small order (one no private key has): refused at
    provisioning, and never verified against, whichever library verifies."""
    return len(public_key) == PUBLIC_KEY_BYTES and public_key[:31] + bytes([public_key[31] & 0x7F]) in _SMALL_ORDER


def openssl_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """`cryptography`'s verify (the fallback, and the reference the tests compare against), with
    small-order public keys refused as libsodium refuses them."""
    if small_order(public_key):
        return False
    try:
        _public_key(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


sodium_verify = _sodium()
BACKEND = "libsodium" if sodium_verify is not None else "openssl"
verify: Verify = sodium_verify if sodium_verify is not None else openssl_verify
