"""The audit-trail writer: who did something (Actor), and `audit_record`, which appends one event
to the keyed hash chain (audit/chain.py: HMAC, the key never enters the database) and signs —
and anchors outside the database — a checkpoint every PERFUSE_AUDIT_CHECKPOINT_EVERY events.

Every layer audits its own acts, so this module sits just above the plumbing and imports nothing
of the apps but the audit tables, the chain and its checkpoints. `audit_record` is called inside the transaction
of the action being audited, so the event and the action commit or roll back together.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from audit.chain import CHAIN_LOCK_KEY, GENESIS, HASH_VERSION, event_hash
from audit.checkpoints import checkpoint_create
from audit.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where: built from a request or a WebSocket scope."""

    user_id: int | None
    username: str
    role: str
    source_address: str = ""
    user_agent: str = ""


SYSTEM = Actor(user_id=None, username="system", role="system")

_INT64 = 2**63


def _storable(value: Any) -> Any:
    """`value` as PostgreSQL and the canonical hash can hold it, whatever a request carried: NUL
    characters (text and jsonb refuse them) become U+FFFD, integers outside 64 bits (orjson
    refuses them) become their decimal text. The writer must not fail on what it records: a
    refusal of odd content would otherwise become a 500 with no audit event at all."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return str(value)
    if isinstance(value, dict):
        return {str(_storable(key)): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


@transaction.atomic
def audit_record(
    *,
    actor: Actor,
    action: str,
    outcome: str = AuditEvent.Outcome.ALLOWED,
    subject: str = "",
    purpose: str = "",
    break_glass: bool = False,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
    last = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    content: dict[str, Any] = {
        "occurred_at": dt.datetime.now(dt.UTC),
        "actor_id": actor.user_id,
        "actor_username": actor.username[:150],
        "role": actor.role,
        "action": action,
        "subject": subject[:80],
        "purpose": purpose[:500],
        "outcome": str(outcome),
        "source_address": actor.source_address[:64],
        "user_agent": actor.user_agent[:300],
        "break_glass": break_glass,
        "detail": detail or {},
    }
    content = {name: _storable(value) for name, value in content.items()}
    prev = last[1] if last else GENESIS
    # Hashed here with the key the database never sees; the insert trigger checks the link.
    event = AuditEvent.objects.create(
        **content, prev_hash=prev, hash=event_hash(prev, content), hash_version=HASH_VERSION
    )
    every = settings.PERFUSE_AUDIT_CHECKPOINT_EVERY
    if every and event.id // every != (last[0] if last else 0) // every:
        checkpoint_create(event_id=event.id, event_hash=event.hash)
    return event
