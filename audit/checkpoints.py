"""Signed checkpoints of the audit chain head, kept outside the audit table and anchored outside
the database.

A database superuser can rewrite every audit row. A checkpoint is an HMAC (key
PERFUSE_AUDIT_CHECKPOINT_KEY, held by the application, not the database, and distinct from
SECRET_KEY) over (seq, event id, event hash, event count, time, previous checkpoint's
signature). audit_verify checks each checkpoint's signature, that the checkpoints form an
unbroken sequence, and that the chain still holds the signed hash at the signed position — so a
rewrite, or a deletion, before the last checkpoint is detected. Each checkpoint is also appended
to the external anchor (audit/anchor.py) once its transaction commits, so deleting the newest
checkpoints together with the events they covered is detected too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min

from audit.anchor import AnchorEntry, configured_anchor
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


def anchor_entry(cp: AuditCheckpoint, *, first_event_id: int) -> AnchorEntry:
    return AnchorEntry(
        seq=cp.seq,
        event_id=cp.event_id,
        event_hash=cp.event_hash,
        events=cp.events,
        first_event_id=first_event_id,
        created_at=cp.created_at.isoformat(timespec="microseconds"),
        signature=cp.signature,
    )


def _anchor_after_commit(entry: AnchorEntry) -> None:
    """Append once the checkpoint is committed: an anchored checkpoint that then rolled back
    would read as a deletion forever. robust: a failed append must not fail the audited act
    after it committed; verify notices a lagging anchor (PERFUSE_AUDIT_CHECKPOINT_MAX_AGE)."""
    anchor = configured_anchor()
    if anchor is not None:
        transaction.on_commit(lambda: anchor.append(entry), robust=True)


def _reanchor_if_lagging(cp: AuditCheckpoint) -> None:
    """The newest checkpoint is not anchored yet (an append lost in a crash, an anchor newly
    configured): anchor it now, so the anchor catches up without new events."""
    anchor = configured_anchor()
    if anchor is None:
        return
    latest = anchor.latest()
    if latest is not None and latest.seq >= cp.seq:
        return
    before = AuditCheckpoint.objects.filter(seq=cp.seq - 1).values_list("event_id", flat=True).first() or 0
    first = AuditEvent.objects.filter(id__gt=before).order_by("id").values_list("id", flat=True).first()
    _anchor_after_commit(anchor_entry(cp, first_event_id=first or cp.event_id))


def checkpoint_create(*, event_id: int, event_hash: str, at: dt.datetime | None = None) -> AuditCheckpoint:
    """Call with the chain lock held (audit_record / audit_checkpoint)."""
    last = AuditCheckpoint.objects.order_by("-seq").first()
    if last is not None and last.event_id >= event_id:
        _reanchor_if_lagging(last)
        return last
    since = last.event_id if last else 0
    added = AuditEvent.objects.filter(id__gt=since, id__lte=event_id).aggregate(n=Count("id"), first=Min("id"))
    cp = AuditCheckpoint(
        seq=(last.seq + 1) if last else 1,
        event_id=event_id,
        event_hash=event_hash,
        events=(last.events if last else 0) + added["n"],
        created_at=at or dt.datetime.now(dt.UTC),
        prev_signature=last.signature if last else GENESIS,
    )
    cp.signature = checkpoint_signature(cp)
    cp.save()
    _anchor_after_commit(anchor_entry(cp, first_event_id=added["first"] or event_id))
    return cp
