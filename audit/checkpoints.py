"""Signed checkpoints of the audit chain head, kept outside the audit table.

A database superuser can rewrite every audit row and recompute every hash, leaving a chain that
verifies. A checkpoint is an HMAC (key PERFUSE_AUDIT_CHECKPOINT_KEY, held by the application,
not the database, and distinct from SECRET_KEY) over (seq, event id, event hash, event count,
time, previous checkpoint's signature). audit_verify checks each checkpoint's signature, that
the checkpoints form an unbroken sequence, and that the chain still holds the signed hash at the
signed position — so a rewrite, or a deletion, before the last checkpoint is detected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from django.conf import settings

from audit.chain import GENESIS
from audit.models import AuditCheckpoint, AuditEvent


def _message(*, seq: int, event_id: int, event_hash: str, events: int, created_at: dt.datetime, prev: str) -> bytes:
    return f"{seq}|{event_id}|{event_hash}|{events}|{created_at.isoformat(timespec='microseconds')}|{prev}".encode()


def checkpoint_signature(cp: AuditCheckpoint) -> str:
    message = _message(
        seq=cp.seq,
        event_id=cp.event_id,
        event_hash=cp.event_hash,
        events=cp.events,
        created_at=cp.created_at,
        prev=cp.prev_signature,
    )
    return hmac.new(settings.PERFUSE_AUDIT_CHECKPOINT_KEY.encode(), message, hashlib.sha256).hexdigest()


def checkpoint_create(*, event_id: int, event_hash: str, at: dt.datetime | None = None) -> AuditCheckpoint:
    """Call with the chain lock held (audit_record / audit_checkpoint)."""
    last = AuditCheckpoint.objects.order_by("-seq").first()
    if last is not None and last.event_id >= event_id:
        return last
    since = last.event_id if last else 0
    added = AuditEvent.objects.filter(id__gt=since, id__lte=event_id).count()
    cp = AuditCheckpoint(
        seq=(last.seq + 1) if last else 1,
        event_id=event_id,
        event_hash=event_hash,
        events=(last.events if last else 0) + added,
        created_at=at or dt.datetime.now(dt.UTC),
        prev_signature=last.signature if last else GENESIS,
    )
    cp.signature = checkpoint_signature(cp)
    cp.save()
    return cp
