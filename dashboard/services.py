"""Access decisions for dashboard reads, each written to the audit trail.

Call inside the transaction that then reads the data (`transaction.atomic`): if the audit event
cannot be written, nothing is served. Denied attempts are recorded too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit.access import (
    WARD_CARE_ROLES,
    AccessDecision,
    patient_access,
    patients_visible_to,
    user_is_verified,
    user_role,
)
from audit.models import AuditEvent
from audit.services import Actor, audit_record
from telemetry.models import Patient


@dataclass(frozen=True)
class PatientRead:
    patient: Patient | None
    decision: AccessDecision


@dataclass(frozen=True)
class WardRead:
    allowed: bool
    reason: str
    patients: list[Patient] = field(default_factory=list)


def _outcome(allowed: bool) -> str:
    return AuditEvent.Outcome.ALLOWED if allowed else AuditEvent.Outcome.DENIED


def patient_read_authorize(
    *, user: Any, actor: Actor, pseudonym: str, action: str, detail: dict[str, Any] | None = None
) -> PatientRead:
    """Decide whether `user` may read `pseudonym`'s data and record the attempt either way."""
    patient = None
    if not getattr(user, "is_authenticated", False):
        decision = AccessDecision(False, "unauthenticated")
    elif not user_is_verified(user):
        decision = AccessDecision(False, "mfa_required")
    else:
        patient = Patient.objects.select_related("ward").filter(pseudonym=pseudonym).first()
        decision = patient_access(user, patient) if patient else AccessDecision(False, "unknown_patient")
    audit_record(
        actor=actor,
        action=action,
        outcome=_outcome(decision.allowed),
        subject=pseudonym[:80],
        break_glass=decision.break_glass,
        detail={"reason": decision.reason, **(detail or {})},
    )
    return PatientRead(patient if decision.allowed else None, decision)


def ward_read_authorize(*, user: Any, actor: Actor, action: str) -> WardRead:
    """Decide which patients `user` may see on the ward overview and record the attempt."""
    if not getattr(user, "is_authenticated", False):
        read = WardRead(False, "unauthenticated")
    elif not user_is_verified(user):
        read = WardRead(False, "mfa_required")
    else:
        patients = list(patients_visible_to(user).select_related("ward").order_by("pseudonym"))
        role = user_role(user)
        if patients or role in WARD_CARE_ROLES:
            read = WardRead(True, "visible", patients)
        else:
            read = WardRead(False, f"role_{role}")
    audit_record(
        actor=actor,
        action=action,
        outcome=_outcome(read.allowed),
        detail={"reason": read.reason, "patients": [p.pseudonym for p in read.patients]},
    )
    return read
