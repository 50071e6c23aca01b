"""The audit hash chain.

Each event's hash is SHA-256 over the previous event's hash and a canonical JSON rendering of
this event's content (sorted keys, UTC ISO times). Appends are serialized by a transaction-level
advisory lock, so the chain is a single line even with many writers; the lock is held until the
surrounding transaction commits, which makes the audit row part of the audited action.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = "0" * 64
CHAIN_LOCK_KEY = 0x70657266  # "perf"

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


def event_hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(content)).hexdigest()
