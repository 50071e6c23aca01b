"""Writes to the audit trail. Call inside the transaction of the action being audited."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from audit.chain import CHAIN_LOCK_KEY, GENESIS, event_hash
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
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    content: dict[str, Any] = {
        "occurred_at": dt.datetime.now(dt.UTC),
        "actor_id": actor.user_id,
        "actor_username": actor.username[:150],
        "role": actor.role,
        "action": action,
        "subject": subject,
        "purpose": purpose[:500],
        "outcome": str(outcome),
        "source_address": actor.source_address[:64],
        "user_agent": actor.user_agent[:300],
        "break_glass": break_glass,
        "detail": detail or {},
    }
    prev = last or GENESIS
    return AuditEvent.objects.create(**content, prev_hash=prev, hash=event_hash(prev, content))
