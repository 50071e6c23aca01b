"""Access decisions for the ward overview, written to the audit trail.

Patient reads (chart, series, annotations, patient socket) use audit.access.patient_access_audited
directly; this module adds the ward-level equivalent. Call inside the transaction that then reads
the data: if the audit event cannot be written, nothing is served. Denied attempts are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit.access.policy import patients_visible_to, user_can, user_is_verified, user_role
from audit.models import AuditEvent
from audit.trail import Actor, audit_record
from telemetry.models import Patient


@dataclass(frozen=True)
class WardRead:
    allowed: bool
    reason: str
    patients: list[Patient] = field(default_factory=list)


def ward_read_authorize(*, user: Any, actor: Actor, action: str) -> WardRead:
    """Decide which patients `user` may see on the ward overview and record the attempt.

    Care roles see their wards' patients (possibly none); other roles see the patients of their
    live break-glass grants, and are refused when they hold none."""
    if not getattr(user, "is_authenticated", False):
        read = WardRead(False, "not_authenticated")
    elif not user_is_verified(user):
        read = WardRead(False, "mfa_required")
    elif not user.is_active:
        read = WardRead(False, "inactive")
    else:
        patients = list(patients_visible_to(user).select_related("ward").order_by("pseudonym"))
        if patients or user_can(user, "view_ward_patients"):
            read = WardRead(True, "visible", patients)
        else:
            read = WardRead(False, f"role_{user_role(user)}")
    audit_record(
        actor=actor,
        action=action,
        outcome=AuditEvent.Outcome.ALLOWED if read.allowed else AuditEvent.Outcome.DENIED,
        detail={"reason": read.reason, "patients": [p.pseudonym for p in read.patients]},
    )
    return read
