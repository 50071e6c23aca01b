"""Acts on the audit trail itself, beyond appending events (audit/trail.py): signing the chain head
on demand."""

from __future__ import annotations

import datetime as dt

from django.db import connection, transaction

from audit.chain import CHAIN_LOCK_KEY
from audit.checkpoints import checkpoint_create
from audit.models import AuditCheckpoint, AuditEvent


def audit_checkpoint(*, at: dt.datetime | None = None) -> AuditCheckpoint | None:
    """Sign the current chain head now and anchor it (cron or `manage.py audit_checkpoint`). With
    no event since the newest checkpoint, that one is anchored again if the anchor lacks it."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        head = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
        if head is None:
            return None
        return checkpoint_create(event_id=head[0], event_hash=head[1], at=at)
