"""The audit hash chain.

Each event's hash covers the previous event's hash and a canonical JSON rendering of this event's
content (sorted keys, UTC ISO times). Since hash version 2 it is an HMAC-SHA256 whose key is
derived from PERFUSE_AUDIT_CHECKPOINT_KEY: the key lives with the application, never in the
database, so someone who can write the table cannot append or rewrite an event that verifies.
The hash is computed here, in Python, under the chain lock — never by SQL, which would need the
key inside the database; the database's triggers only keep the table append-only and in order.

Version 1 (plain SHA-256, before the key) is still verified for rows written before migration
0005, and only before the first version-2 row: the first keyed row covers the last legacy hash,
so the legacy rows cannot be rewritten either once it exists (docs/security.md).

Appends are serialized by a transaction-level advisory lock, so the chain is a single line even
with many writers; the lock is held until the surrounding transaction commits, which makes the
audit row part of the audited action.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from django.conf import settings

GENESIS = "0" * 64
CHAIN_LOCK_KEY = 0x70657266  # "perf"
LEGACY_HASH_VERSION = 1  # SHA-256, unkeyed
HASH_VERSION = 2  # HMAC-SHA256 with the chain key
_KEY_LABEL = b"perfuse audit event chain v2"

HASHED_FIELDS = (
    "occurred_at",
    "actor_id",
    "actor_username",
    "role",
    "action",
    "subject",
    "purpose",
    "outcome",
    "source_address",
    "user_agent",
    "break_glass",
    "detail",
)


def canonical(content: dict[str, Any]) -> bytes:
    data = {name: content[name] for name in HASHED_FIELDS}
    data["occurred_at"] = content["occurred_at"].isoformat(timespec="microseconds")
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def chain_key() -> bytes:
    """The event key, derived from the checkpoint key so that one secret guards the trail and a
    signature of one kind can never pass for the other."""
    return hmac.new(settings.PERFUSE_AUDIT_CHECKPOINT_KEY.encode(), _KEY_LABEL, hashlib.sha256).digest()


def event_hash(prev_hash: str, content: dict[str, Any], *, version: int = HASH_VERSION) -> str:
    message = prev_hash.encode() + b"\n" + canonical(content)
    if version == LEGACY_HASH_VERSION:
        return hashlib.sha256(message).hexdigest()
    if version == HASH_VERSION:
        return hmac.new(chain_key(), b"v2\n" + message, hashlib.sha256).hexdigest()
    raise ValueError(f"unknown audit hash version {version}")
