"""Step 1, authenticate: which device key signed this body, and is the signature good.

The credentials are three strings (HTTP headers, or MQTT 5 user properties of the same names):
key id, Unix timestamp and an Ed25519 signature of `TIMESTAMP + "\\n" + BODY`. They are checked
for shape and clock skew before any I/O, so junk costs no database round trip; then the key is
looked up (one query that also brings the device's ward and site) and the signature verified.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from django.conf import settings
from psycopg import AsyncConnection

from telemetry.ingest import ed25519
from telemetry.ingest.answers import IngestError

# Key ids are issued by us (`k_` + URL-safe base64); anything else cannot be one, and a NUL or a
# non-ASCII character must never reach PostgreSQL as a query parameter.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

_KEY_COLUMNS = """
SELECT k.revoked_at IS NOT NULL, k.public_key, d.id, d.device_id, w.site, w.code, k.key_id
FROM telemetry_devicekey k
JOIN telemetry_device d ON d.id = k.device_id
JOIN telemetry_ward w ON w.id = d.ward_id
"""
_KEY_SQL = _KEY_COLUMNS + "WHERE k.key_id = %s"
# A group of messages (telemetry/ingest/group.py) looks all its keys up in one round trip.
_KEYS_SQL = _KEY_COLUMNS + "WHERE k.key_id = ANY(%s)"


@dataclass(frozen=True)
class Credentials:
    key_id: str
    stamp: int
    signature: bytes


@dataclass(frozen=True)
class DeviceKeyRow:
    revoked: bool
    public_key: bytes
    device_pk: int
    device_id: str
    site: str
    ward: str


class SigningKey(Protocol):
    """What a signature is checked against: a device key, or a gateway key (ingest/gateway.py)."""

    @property
    def revoked(self) -> bool: ...
    @property
    def public_key(self) -> bytes: ...


Key = TypeVar("Key", bound=SigningKey)


def credentials_check(headers: Mapping[str, str], *, now: float, max_age: int | None = None) -> Credentials:
    """The credentials, well-formed and within the clock window, or a 401. `max_age` widens the
    window into the past (a gateway's buffered inner batches); the future keeps the skew."""
    # Lower-case names: Django's request.headers and the raw ASGI entry's dict both answer them.
    key_id = headers.get("x-perfuse-key", "")
    stamp = headers.get("x-perfuse-timestamp", "")
    signature = headers.get("x-perfuse-signature", "")
    if not key_id or not stamp or not signature:
        raise IngestError(
            "missing_credentials", "X-Perfuse-Key, X-Perfuse-Timestamp and X-Perfuse-Signature are required"
        )
    if not _KEY_ID.fullmatch(key_id) or not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise IngestError("malformed_credentials", "key id or timestamp is malformed")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IngestError("malformed_signature", "signature is not padded standard base64") from exc
    if len(raw_signature) != 64:
        raise IngestError("malformed_signature", "an Ed25519 signature is 64 bytes")
    skew = settings.PERFUSE_INGEST_CLOCK_SKEW_SECONDS
    if max_age is None and abs(int(stamp) - now) > skew:
        raise IngestError("stale_timestamp", "X-Perfuse-Timestamp is more than 300 s from server time")
    if max_age is not None and not -skew <= now - int(stamp) <= max_age:
        raise IngestError("stale_timestamp", f"timestamp is more than {max_age} s old or {skew} s ahead")
    return Credentials(key_id, int(stamp), raw_signature)


async def device_authenticate(conn: AsyncConnection[Any], *, credentials: Credentials, body: bytes) -> DeviceKeyRow:
    """The key that signed `body`, with its device, ward and site; 401 when unknown, revoked or forged."""
    row = await (await conn.execute(_KEY_SQL, [credentials.key_id])).fetchone()
    return signature_verify(None if row is None else _key_row(row), credentials=credentials, body=body)


async def keys_lookup(conn: AsyncConnection[Any], key_ids: list[str]) -> dict[str, DeviceKeyRow]:
    """The keys of these ids that exist (revoked ones included: `signature_verify` refuses them)."""
    rows = await (await conn.execute(_KEYS_SQL, [key_ids])).fetchall()
    return {row[6]: _key_row(row) for row in rows}


def _key_row(row: tuple[Any, ...]) -> DeviceKeyRow:
    return DeviceKeyRow(row[0], bytes(row[1]), row[2], row[3], row[4], row[5])


def signature_verify(key: Key | None, *, credentials: Credentials, body: bytes) -> Key:
    """`key`, if it is live and signed `body`; else 401 (None: no key has the credentials' id)."""
    if key is None:
        raise IngestError("unknown_key", "no device key with this id")
    if key.revoked:
        raise IngestError("revoked_key", "this key has been revoked")
    if not ed25519.verify(key.public_key, credentials.signature, str(credentials.stamp).encode() + b"\n" + body):
        raise IngestError("bad_signature", "signature does not match the body and timestamp")
    return key
