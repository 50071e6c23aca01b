"""Break-glass: time-limited emergency access to one patient for a role that has no ward access
to it, with a stated reason and purpose. Every request is audited (granted or refused) and
highlighted; audit.access.policy honours a live grant while its holder's role still breaks the
glass, and a change of role ends the holder's grants (audit.access.staff)."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction

from audit.access.policy import user_can
from audit.access.refusals import refusals_audited
from audit.models import BreakGlassGrant
from audit.trail import Actor, audit_record
from config.refusal import Refusal
from config.users import StaffUser, user_account
from telemetry.models import Patient

REQUESTED = "break_glass.requested"
PROBLEMS = {
    "role": "Your role cannot break the glass.",
    "unknown_patient": "No patient has that pseudonym.",
    "reason": "Choose a reason.",
    "purpose": "State the purpose (at least 10 characters).",
    "duration": f"Choose a duration of at most {settings.PERFUSE_BREAK_GLASS_MAX_MINUTES} minutes.",
}


def _problem(*, user: StaffUser, patient: Patient | None, reason: str, purpose: str, minutes: int) -> str | None:
    if not user_can(user, "break_glass"):
        return "role"
    if patient is None:
        return "unknown_patient"
    if reason not in BreakGlassGrant.Reason.values:
        return "reason"
    if len(purpose) < 10:
        return "purpose"
    if not 1 <= minutes <= settings.PERFUSE_BREAK_GLASS_MAX_MINUTES:
        return "duration"
    return None


@refusals_audited
def break_glass_grant(
    *, user: StaffUser, actor: Actor, pseudonym: str, reason: str, purpose: str, minutes: int
) -> BreakGlassGrant:
    """Grant `user` time-limited access to one patient. Audited granted or refused, highlighted;
    a refusal is raised (its `detail` says what to change)."""
    purpose = purpose.strip()
    patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
    problem = _problem(user=user, patient=patient, reason=reason, purpose=purpose, minutes=minutes)
    if problem is not None:
        raise Refusal(
            action=REQUESTED,
            reason=problem,
            code="forbidden" if problem == "role" else "invalid",
            status=403 if problem == "role" else 400,
            detail=PROBLEMS[problem],
            subject=pseudonym[:80],
            purpose=purpose,
            break_glass=True,
            facts={"reason_code": reason[:40]},
        )
    assert patient is not None
    now = dt.datetime.now(dt.UTC)
    grant = BreakGlassGrant.objects.create(
        user=user_account(user),
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
def break_glass_end(*, grant: BreakGlassGrant, actor: Actor, cause: str = "") -> None:
    """End a grant early (by its holder, or `cause` such as a role change)."""
    if grant.ended_at is None:
        grant.ended_at = dt.datetime.now(dt.UTC)
        grant.save(update_fields=["ended_at"])
    audit_record(
        actor=actor,
        action="break_glass.ended",
        subject=grant.patient.pseudonym,
        break_glass=True,
        detail={"grant": grant.id, **({"cause": cause} if cause else {})},
    )


@transaction.atomic
def break_glass_end_all(*, user_id: int, actor: Actor, cause: str) -> int:
    """End every live grant of a user (each audited); the number ended."""
    now = dt.datetime.now(dt.UTC)
    grants = list(
        BreakGlassGrant.objects.select_for_update(of=("self",))
        .select_related("patient")
        .filter(user_id=user_id, ended_at__isnull=True, expires_at__gt=now)
    )
    for grant in grants:
        break_glass_end(grant=grant, actor=actor, cause=cause)
    return len(grants)
