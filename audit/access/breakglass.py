"""Break-glass: time-limited emergency access to one patient for a role that has no ward access
to it, with a stated reason and purpose. Every request is audited (granted or denied) and
highlighted; audit.access.policy honours a live grant."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db import transaction

from audit.access.policy import user_can
from audit.models import AuditEvent, BreakGlassGrant
from audit.trail import Actor, audit_record
from telemetry.models import Patient


class BreakGlassError(Exception):
    """A break-glass request that cannot be granted (role, unknown patient, empty purpose)."""


def break_glass_grant(
    *, user: Any, actor: Actor, pseudonym: str, reason: str, purpose: str, minutes: int
) -> BreakGlassGrant:
    """Grant `user` time-limited access to one patient. Audited allowed or denied, highlighted;
    a refusal raises BreakGlassError after its audit event committed."""
    result = _break_glass_grant(
        user=user, actor=actor, pseudonym=pseudonym, reason=reason, purpose=purpose, minutes=minutes
    )
    if isinstance(result, str):
        raise BreakGlassError(result)
    return result


@transaction.atomic
def _break_glass_grant(
    *, user: Any, actor: Actor, pseudonym: str, reason: str, purpose: str, minutes: int
) -> BreakGlassGrant | str:
    purpose = purpose.strip()
    patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
    problem = None
    if not user_can(user, "break_glass"):
        problem = "role"
    elif patient is None:
        problem = "unknown_patient"
    elif reason not in BreakGlassGrant.Reason.values:
        problem = "reason"
    elif len(purpose) < 10:
        problem = "purpose"
    elif not 1 <= minutes <= settings.PERFUSE_BREAK_GLASS_MAX_MINUTES:
        problem = "duration"
    if problem is not None:
        audit_record(
            actor=actor,
            action="break_glass.requested",
            outcome=AuditEvent.Outcome.DENIED,
            subject=pseudonym[:80],
            purpose=purpose,
            break_glass=True,
            detail={"reason": problem, "reason_code": reason[:40]},
        )
        return problem
    assert patient is not None
    now = dt.datetime.now(dt.UTC)
    grant = BreakGlassGrant.objects.create(
        user=user,
        patient=patient,
        reason=reason,
        purpose=purpose[:500],
        granted_at=now,
        expires_at=now + dt.timedelta(minutes=minutes),
    )
    audit_record(
        actor=actor,
        action="break_glass.granted",
        subject=patient.pseudonym,
        purpose=purpose,
        break_glass=True,
        detail={"grant": grant.id, "reason_code": reason, "expires_at": grant.expires_at.isoformat()},
    )
    return grant


@transaction.atomic
def break_glass_end(*, grant: BreakGlassGrant, actor: Actor) -> None:
    if grant.ended_at is None:
        grant.ended_at = dt.datetime.now(dt.UTC)
        grant.save(update_fields=["ended_at"])
    audit_record(
        actor=actor,
        action="break_glass.ended",
        subject=grant.patient.pseudonym,
        break_glass=True,
        detail={"grant": grant.id},
    )
