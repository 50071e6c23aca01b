"""Who may see which patient, and who is asking: the ward-scope and capability decisions of the
access layer.

`patient_access` / `patients_visible_to` decide patient access (`patient_access_audited` also
writes the audit event); roles are Django groups holding permissions (audit/access/roles.py), and
capability checks go through `user_can`, which also requires an OTP-verified session. These are
meant to be the only ward and role checks. They are not yet: the alarm API and console socket
(alerts/api.py, alerts/consumers.py, via the alarm scope of alerts/selectors.py) and
dashboard/services.py still compare ward ids themselves, until the one refusal primitive of
issue 8 replaces those checks with calls into this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from audit.access.roles import ADMIN, CLINICIAN, COMPLIANCE, DEVICE_ADMIN, ONCALL, ROLES
from audit.models import AuditEvent, BreakGlassGrant
from audit.trail import Actor, audit_record
from config.net import request_address, scope_address, scope_header
from telemetry.models import Patient

__all__ = [
    "ADMIN",
    "CLINICIAN",
    "COMPLIANCE",
    "DEVICE_ADMIN",
    "ONCALL",
    "ROLES",
    "WARD_CARE_ROLES",
    "AccessDecision",
    "actor_from_request",
    "actor_from_scope",
    "patient_access",
    "patient_access_audited",
    "patients_visible_to",
    "user_can",
    "user_is_verified",
    "user_role",
    "user_ward_ids",
]

# Roles that see telemetry of their wards' patients without breaking the glass.
WARD_CARE_ROLES = (CLINICIAN, ONCALL)


def user_role(user: Any) -> str:
    if not getattr(user, "is_authenticated", False):
        return "anonymous"
    names = {group.name for group in user.groups.all()}
    for role in ROLES:
        if role in names:
            return role
    return "none"


def user_is_verified(user: Any) -> bool:
    """True for an authenticated user whose session passed a second factor (django-otp)."""
    return bool(getattr(user, "is_authenticated", False) and getattr(user, "is_verified", lambda: False)())


def user_can(user: Any, capability: str) -> bool:
    """An OTP-verified user whose role grants `capability` (a codename in audit/access/roles.py)."""
    return user_is_verified(user) and bool(user.is_active) and user.has_perm(f"audit.{capability}")


def user_ward_ids(user: Any) -> list[int]:
    staff = getattr(user, "staff", None) if getattr(user, "is_authenticated", False) else None
    if staff is None:
        return []
    return list(staff.wards.values_list("id", flat=True))


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str
    break_glass: bool = False


def active_grant(user: Any, patient: Patient) -> BreakGlassGrant | None:
    now = dt.datetime.now(dt.UTC)
    return (
        BreakGlassGrant.objects.filter(
            user_id=user.pk, patient_id=patient.pk, expires_at__gt=now, ended_at__isnull=True
        )
        .order_by("-expires_at")
        .first()
    )


def patients_visible_to(user: Any) -> QuerySet[Patient]:
    """Ward patients for care roles; the patients of active break-glass grants for others."""
    if not user_is_verified(user):
        return Patient.objects.none()
    now = dt.datetime.now(dt.UTC)
    granted = Q(
        id__in=BreakGlassGrant.objects.filter(user_id=user.pk, expires_at__gt=now, ended_at__isnull=True).values(
            "patient_id"
        )
    )
    if user_can(user, "view_ward_patients"):
        return Patient.objects.filter(
            Q(ward_id__in=user_ward_ids(user), discharged_at__isnull=True) | granted
        ).distinct()
    if user_can(user, "break_glass"):
        return Patient.objects.filter(granted)
    return Patient.objects.none()


def _caller_refusal(user: Any) -> AccessDecision | None:
    """Refusals that depend on who asks, not on which patient: decided before the patient is
    even looked at, so they read the same for a pseudonym that exists and one that does not."""
    if not getattr(user, "is_authenticated", False):
        return AccessDecision(False, "not_authenticated")
    if not user_is_verified(user):
        return AccessDecision(False, "mfa_required")
    if not user.is_active:
        return AccessDecision(False, "inactive")
    return None


def patient_access(user: Any, patient: Patient) -> AccessDecision:
    if refusal := _caller_refusal(user):
        return refusal
    if user_can(user, "view_ward_patients") and patient.ward_id in user_ward_ids(user):
        return AccessDecision(True, "ward")
    # Break-glass is honoured for whoever holds a live grant (only break_glass roles can get one).
    if active_grant(user, patient) is not None:
        return AccessDecision(True, "break_glass", break_glass=True)
    if user_can(user, "view_ward_patients"):
        return AccessDecision(False, "other_ward")
    return AccessDecision(False, f"role_{user_role(user)}")


@transaction.atomic
def patient_access_audited(
    *,
    user: Any,
    actor: Actor,
    pseudonym: str,
    action: str,
    purpose: str = "",
    detail: dict[str, Any] | None = None,
) -> tuple[Patient | None, AccessDecision]:
    """Decide and audit one attempt to read a patient's data; the caller serves data only when
    allowed, inside this same transaction or after it committed. Unknown pseudonyms are
    denied (and audited) like forbidden ones, so callers answer both the same way."""
    patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
    decision = _caller_refusal(user) or (
        patient_access(user, patient) if patient is not None else AccessDecision(False, "unknown_patient")
    )
    audit_record(
        actor=actor,
        action=action,
        outcome=AuditEvent.Outcome.ALLOWED if decision.allowed else AuditEvent.Outcome.DENIED,
        subject=pseudonym[:80],
        purpose=purpose,
        break_glass=decision.break_glass,
        detail={"reason": decision.reason, **(detail or {})},
    )
    return (patient if decision.allowed else None), decision


# ---- who is asking -----------------------------------------------------------------------


def _actor_for(user: Any, source_address: str, user_agent: str) -> Actor:
    if getattr(user, "is_authenticated", False):
        return Actor(
            user_id=user.pk,
            username=user.get_username(),
            role=user_role(user),
            source_address=source_address,
            user_agent=user_agent[:300],
        )
    return Actor(
        user_id=None, username="", role="anonymous", source_address=source_address, user_agent=user_agent[:300]
    )


def actor_from_request(request: HttpRequest) -> Actor:
    address = request_address(request)
    return _actor_for(getattr(request, "user", None), address, request.META.get("HTTP_USER_AGENT", ""))


def actor_from_scope(scope: dict[str, Any]) -> Actor:
    return _actor_for(scope.get("user"), scope_address(scope), scope_header(scope, b"user-agent"))
