"""The one place that decides who may see which patient.

Views, the REST API and WebSocket consumers all ask `patient_access` / `patients_visible_to`;
nothing re-implements ward or role checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from telemetry.models import Patient

CLINICIAN = "clinician"
ONCALL = "oncall"
COMPLIANCE = "compliance"
DEVICE_ADMIN = "device_admin"
ADMIN = "admin"
ROLES = (CLINICIAN, ONCALL, COMPLIANCE, DEVICE_ADMIN, ADMIN)
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


def user_ward_ids(user: Any) -> list[int]:
    staff = getattr(user, "staff", None)
    if staff is None:
        return []
    return list(staff.wards.values_list("id", flat=True))


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str
    break_glass: bool = False


def patients_visible_to(user: Any) -> QuerySet[Patient]:
    if not user_is_verified(user) or user_role(user) not in WARD_CARE_ROLES:
        return Patient.objects.none()
    return Patient.objects.filter(ward_id__in=user_ward_ids(user), discharged_at__isnull=True)


def patient_access(user: Any, patient: Patient) -> AccessDecision:
    if not user_is_verified(user):
        return AccessDecision(False, "mfa_required")
    role = user_role(user)
    if role in WARD_CARE_ROLES:
        if patient.ward_id in user_ward_ids(user):
            return AccessDecision(True, "ward")
        return AccessDecision(False, "other_ward")
    return AccessDecision(False, f"role_{role}")
