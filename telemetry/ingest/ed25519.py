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
`bad_signature`) is the only change of answer.
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


def openssl_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """`cryptography`'s verify (the fallback, and the reference the tests compare against)."""
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
