"""Who may see which patient and ward, what a role may do, and who is asking: the access
decisions of Perfuse, and the refusals they make.

Roles are Django groups holding permissions (audit/access/roles.py); `user_can` checks a
capability through the role groups only (never Django's superuser flag or per-user permissions)
and requires an OTP-verified, active user. A user's wards (`ward_scope`) are their staff
profile's wards, or every ward for roles that administer all of them. `patient_access` /
`patients_visible_to` decide patient access (ward care, or a live break-glass grant while the
user still holds the `break_glass` capability); `patient_read` and `ward_read` decide *and*
audit a read, raising a config.refusal.Refusal (built by `access_refusal`) when it is refused.

These are the only ward and role checks: pages, APIs and sockets call them, and the alarm
console's scope (alerts/selectors.py) is built on `ward_scope` and `user_can`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Permission
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from audit.access.refusals import refusal_audit
from audit.access.roles import ADMIN, CLINICIAN, COMPLIANCE, DEVICE_ADMIN, ONCALL, ROLES
from audit.models import BreakGlassGrant, StaffProfile
from audit.trail import Actor, audit_record
from config.net import request_address, scope_address, scope_header
from config.refusal import Refusal
from config.users import StaffUser
from telemetry.models import Device, Patient, PatientStay, Ward

__all__ = [
    "ADMIN",
    "CLINICIAN",
    "COMPLIANCE",
    "DEVICE_ADMIN",
    "FLOW_REFUSED",
    "ONCALL",
    "ROLES",
    "WARD_CARE_ROLES",
    "AccessDecision",
    "WardScope",
    "access_refusal",
    "active_grant",
    "actor_from_request",
    "actor_from_scope",
    "device_read",
    "export_read",
    "live_refusal",
    "patient_access",
    "patient_access_audited",
    "patient_read",
    "patients_visible_to",
    "refusal_reason",
    "requester_read",
    "role_capabilities",
    "user_can",
    "user_is_verified",
    "user_role",
    "ward_export_read",
    "ward_flow_authorize",
    "ward_read",
    "ward_scope",
]

# Roles that see telemetry of their wards' patients without breaking the glass.
WARD_CARE_ROLES = (CLINICIAN, ONCALL)
# Roles that administer every ward (alarm rules, staff): their ward scope is all wards.
ALL_WARD_ROLES = (ADMIN,)

# Where role_capabilities caches a user's capabilities for the request, on the user object.
_CAPABILITIES_CACHE = "_perfuse_capabilities"

PATIENT_REFUSED = "You may not see this patient's data (or there is no such patient)."
DEVICE_REFUSED = "You may not see this device (or there is no such device)."
WARD_REFUSED = "You may not export this ward's data (or there is no such ward)."
EXPORT_REFUSED = "There is no such export of yours (or it has expired)."
_SIGN_IN_DETAIL = {
    "not_authenticated": "Sign in first.",
    "mfa_required": "A verified (two-factor) session is required.",
}


def user_role(user: StaffUser) -> str:
    if not user.is_authenticated:
        return "anonymous"
    names = {group.name for group in user.groups.all()}
    for role in ROLES:
        if role in names:
            return role
    return "none"


def user_is_verified(user: StaffUser | None) -> bool:
    """True for an authenticated user whose session passed a second factor (django-otp). No
    user (a socket whose session is gone) and a user without django-otp's `is_verified` (not
    from a request or socket) are not verified."""
    return bool(user is not None and user.is_authenticated and getattr(user, "is_verified", lambda: False)())


def role_capabilities(user: StaffUser) -> frozenset[str]:
    """The capability codenames the user's role groups grant. Not Django's `has_perm`: it lets a
    superuser pass every check and adds per-user permissions, and neither is a role. Cached on
    the user object for the request (as `has_perm` caches its own)."""
    if user.pk is None:  # anonymous: in no group
        return frozenset()
    cached: frozenset[str] | None = getattr(user, _CAPABILITIES_CACHE, None)
    if cached is None:
        cached = frozenset(
            Permission.objects.filter(
                group__user=user.pk, group__name__in=ROLES, content_type__app_label="audit"
            ).values_list("codename", flat=True)
        )
        setattr(user, _CAPABILITIES_CACHE, cached)  # not a StaffUser attribute: set on whichever user object
    return cached


def user_can(user: StaffUser, capability: str) -> bool:
    """An OTP-verified, active user whose role grants `capability` (a codename in
    audit/access/roles.py)."""
    return user_is_verified(user) and bool(user.is_active) and capability in role_capabilities(user)


@dataclass(frozen=True)
class WardScope:
    """The wards a user acts on: every ward, or these (by id for queries, by code for frames)."""

    all_wards: bool
    ward_ids: frozenset[int]
    ward_codes: frozenset[str]

    def covers(self, ward_id: int) -> bool:
        return self.all_wards or ward_id in self.ward_ids

    def covers_code(self, ward_code: str) -> bool:
        return self.all_wards or ward_code in self.ward_codes

    def q(self, field: str = "ward_id") -> Q:
        """A filter on `field` (a ward id) for the rows of these wards."""
        return Q() if self.all_wards else Q(**{f"{field}__in": self.ward_ids})


def ward_scope(user: StaffUser) -> WardScope:
    """Every ward for administrators; else the wards of the user's staff profile (none for
    anonymous users and users without a profile)."""
    if user_role(user) in ALL_WARD_ROLES:
        return WardScope(all_wards=True, ward_ids=frozenset(), ward_codes=frozenset())
    # A user without a profile raises StaffProfile.DoesNotExist, an AttributeError: None too.
    staff: StaffProfile | None = getattr(user, "staff", None) if user.is_authenticated else None
    wards = list(staff.wards.values_list("id", "code")) if staff is not None else []
    return WardScope(
        all_wards=False, ward_ids=frozenset(i for i, _ in wards), ward_codes=frozenset(c for _, c in wards)
    )


Period = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True)
class AccessDecision:
    """Whether a patient's data may be read, why, and for which time. `periods` is None for
    access without a time limit (care on the patient's current or last ward, break-glass); for
    staff of a ward the patient has left it is the [start, end) of the stays that were theirs,
    and only data of those times may be served (`within`, `clamp`)."""

    allowed: bool
    reason: str
    break_glass: bool = False
    periods: tuple[Period, ...] | None = None

    def within(self, t: dt.datetime, width: dt.timedelta = dt.timedelta(0)) -> bool:
        """Whether [t, t + width) lies inside the access (a point, or a whole bucket)."""
        if self.periods is None:
            return True
        return any(start <= t and t + width <= end for start, end in self.periods)

    def clamp(self, start: dt.datetime, end: dt.datetime) -> Period | None:
        """The part of [start, end) the access may cover at most (None: nothing of it)."""
        if self.periods is None:
            return start, end
        parts = [(max(start, s), min(end, e)) for s, e in self.periods if s < end and start < e]
        if not parts:
            return None
        return min(p[0] for p in parts), max(p[1] for p in parts)


def _session_problem(user: StaffUser) -> str | None:
    """Why the user cannot be served at all: no sign-in, no second factor, a disabled account."""
    if not user.is_authenticated:
        return "not_authenticated"
    if not user_is_verified(user):
        return "mfa_required"
    if not user.is_active:
        return "inactive"
    return None


def refusal_reason(user: StaffUser) -> str:
    """The audit reason for refusing `user` a page, API or socket of a capability they lack."""
    return _session_problem(user) or f"role_{user_role(user)}"


def access_refusal(
    user: StaffUser,
    *,
    action: str,
    detail: str,
    reason: str | None = None,
    subject: str = "",
    purpose: str = "",
    facts: dict[str, Any] | None = None,
    signed_out_status: int = 401,
) -> Refusal:
    """The refusal of `user` (for `reason`, by default why their session or role falls short):
    code `not_authenticated` (HTTP `signed_out_status`) or `mfa_required` (403) when they must
    sign in (again), else `forbidden` (403) with `detail`."""
    reason = reason or refusal_reason(user)
    return Refusal(
        action=action,
        reason=reason,
        code=reason if reason in _SIGN_IN_DETAIL else "forbidden",
        status=signed_out_status if reason == "not_authenticated" else 403,
        detail=_SIGN_IN_DETAIL.get(reason, detail),
        subject=subject,
        purpose=purpose,
        facts=facts,
    )


# ---- patients ----------------------------------------------------------------------------


def _live_grants(user: StaffUser) -> QuerySet[BreakGlassGrant]:
    """The user's unexpired, unended grants, honoured only while the role still breaks the glass
    (a grant outlives neither the capability nor a role change, which also ends it)."""
    if user.pk is None or not user_can(user, "break_glass"):  # anonymous: no grants
        return BreakGlassGrant.objects.none()
    now = dt.datetime.now(dt.UTC)
    return BreakGlassGrant.objects.filter(user_id=user.pk, expires_at__gt=now, ended_at__isnull=True)


def active_grant(user: StaffUser, patient: Patient) -> BreakGlassGrant | None:
    return _live_grants(user).filter(patient_id=patient.pk).order_by("-expires_at").first()


def patients_visible_to(user: StaffUser) -> QuerySet[Patient]:
    """Ward patients for care roles; the patients of active break-glass grants for others."""
    granted = Q(id__in=_live_grants(user).values("patient_id"))
    if user_can(user, "view_ward_patients"):
        return Patient.objects.filter((ward_scope(user).q() & Q(discharged_at__isnull=True)) | granted).distinct()
    if user_can(user, "break_glass"):
        return Patient.objects.filter(granted)
    return Patient.objects.none()


def _former_stays(scope: WardScope, patient: Patient) -> tuple[Period, ...]:
    """The ended stays of the patient on the scope's wards (the patient was theirs then)."""
    stays = PatientStay.objects.filter(scope.q(), patient_id=patient.pk, end__isnull=False).order_by("start")
    return tuple((start, end) for start, end in stays.values_list("start", "end") if end is not None)


def patient_access(user: StaffUser, patient: Patient) -> AccessDecision:
    """Care on the patient's current (or, once discharged, last) ward sees the whole record: a
    transferred patient's new ward needs the trend from before the transfer. Staff of a ward the
    patient left see the times of the stays that were theirs (`former_ward`, with `periods`);
    break-glass sees everything of the granted patient."""
    problem = _session_problem(user)
    if problem is not None:
        return AccessDecision(False, problem)
    ward_care = user_can(user, "view_ward_patients")
    scope = ward_scope(user) if ward_care else None
    if scope is not None and scope.covers(patient.ward_id):
        return AccessDecision(True, "ward")
    if active_grant(user, patient) is not None:
        return AccessDecision(True, "break_glass", break_glass=True)
    if scope is not None:
        periods = _former_stays(scope, patient)
        if periods:
            return AccessDecision(True, "former_ward", periods=periods)
        return AccessDecision(False, "other_ward")
    return AccessDecision(False, f"role_{user_role(user)}")


def live_refusal(patient: Patient, decision: AccessDecision) -> str | None:
    """Why a patient's live feed is refused to someone who may read the patient's data: it shows
    the present, which belongs neither to a discharged stay nor to a ward the patient left."""
    if patient.discharged_at is not None:
        return "discharged"
    if decision.periods is not None:
        return "former_ward"
    return None


def patient_read(
    *,
    user: StaffUser,
    actor: Actor,
    pseudonym: str,
    action: str,
    purpose: str = "",
    detail: dict[str, Any] | None = None,
    live: bool = False,
) -> tuple[Patient, AccessDecision]:
    """Decide one attempt to read a patient's data and audit it when allowed; the caller serves
    data inside this same transaction or after it committed, and only of `decision.periods`
    when they are set. A refusal is raised (and audited by whoever answers it); unknown
    pseudonyms are refused like forbidden ones, with the same detail, so the answer is no oracle
    for which patients exist. `live`: the present is asked for (a live socket), refused for a
    discharged patient or a ward the patient left (`live_refusal`)."""
    patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
    # Who asks is decided before which patient: an anonymous or password-only caller is refused
    # the same way for a pseudonym that exists and one that does not (no existence oracle).
    problem = _session_problem(user)
    if problem is not None:
        decision = AccessDecision(False, problem)
    elif patient is None:
        decision = AccessDecision(False, "unknown_patient")
    else:
        decision = patient_access(user, patient)
        live_reason = live_refusal(patient, decision) if live and decision.allowed else None
        if live_reason is not None:
            decision = AccessDecision(False, live_reason)
    if patient is None or not decision.allowed:
        raise access_refusal(
            user,
            action=action,
            reason=decision.reason,
            detail=PATIENT_REFUSED,
            subject=pseudonym[:80],
            purpose=purpose,
            facts=detail,
        )
    audit_record(
        actor=actor,
        action=action,
        subject=pseudonym[:80],
        purpose=purpose,
        break_glass=decision.break_glass,
        detail={"reason": decision.reason, **(detail or {})},
    )
    return patient, decision


def patient_access_audited(*, actor: Actor, **read: Any) -> tuple[Patient | None, AccessDecision]:
    """`patient_read(actor=actor, **read)` for callers that answer both outcomes themselves (a
    socket's authorize): the refusal is audited here, and the patient is None."""
    try:
        return patient_read(actor=actor, **read)
    except Refusal as refusal:
        refusal_audit(refusal, actor)
        return None, AccessDecision(False, refusal.reason)


def ward_read(*, user: StaffUser, actor: Actor, action: str) -> list[Patient]:
    """The patients `user` may see on the ward overview, audited; call inside the transaction
    that then reads their data (if the audit event cannot be written, nothing is served).

    Care roles see their wards' patients (possibly none); other roles see the patients of their
    live break-glass grants, and are refused when they hold none."""
    reason = _session_problem(user)
    if reason is None:
        patients = list(patients_visible_to(user).select_related("ward").order_by("pseudonym"))
        if patients or user_can(user, "view_ward_patients"):
            audit_record(
                actor=actor, action=action, detail={"reason": "visible", "patients": [p.pseudonym for p in patients]}
            )
            return patients
        reason = f"role_{user_role(user)}"
    raise access_refusal(
        user,
        action=action,
        reason=reason,
        detail="Your role has no ward overview. Use the pages in the menu above.",
        facts={"patients": []},
    )


# ---- patient flow ------------------------------------------------------------------------

FLOW_REFUSED = "You may not admit, move or discharge patients of this ward (or there is no such patient)."


def ward_flow_authorize(user: StaffUser, *, ward_id: int | None, action: str, subject: str = "") -> None:
    """Refuse (raise) unless `user` may run the patient flow of the ward `ward_id` (admit,
    associate devices, transfer out, discharge): an OTP-verified user whose role has
    `manage_patient_flow` and whose wards include it. None (an unknown ward or patient) is
    refused like another ward, so the answer tells nothing about what exists."""
    problem = _session_problem(user)
    if problem is None and not user_can(user, "manage_patient_flow"):
        problem = f"role_{user_role(user)}"
    if problem is None and (ward_id is None or not ward_scope(user).covers(ward_id)):
        problem = "other_ward" if ward_id is not None else "unknown"
    if problem is not None:
        raise access_refusal(user, action=action, reason=problem, detail=FLOW_REFUSED, subject=subject[:80])


# ---- devices and whole wards (FHIR Device, DeviceMetric, bulk export) --------------------


def _ward_care_covers(user: StaffUser, ward_id: int) -> bool:
    return user_can(user, "view_ward_patients") and ward_scope(user).covers(ward_id)


def device_read(
    *, user: StaffUser, actor: Actor, device_id: str, action: str, detail: dict[str, Any] | None = None
) -> Device:
    """Decide and audit a read of a device's record (firmware, calibrations): device
    administrators see every device, care roles the devices of their wards. Unknown devices are
    refused like forbidden ones (no oracle)."""
    device = Device.objects.select_related("ward").filter(device_id=device_id[:64]).first()
    reason = _session_problem(user)
    if reason is None:
        if device is None:
            reason = "unknown_device"
        elif not (user_can(user, "manage_devices") or _ward_care_covers(user, device.ward_id)):
            reason = "other_ward" if user_can(user, "view_ward_patients") else f"role_{user_role(user)}"
    if reason is not None or device is None:
        raise access_refusal(
            user, action=action, reason=reason, detail=DEVICE_REFUSED, subject=device_id[:80], facts=detail
        )
    audit_record(actor=actor, action=action, subject=device.device_id, detail={"reason": "allowed", **(detail or {})})
    return device


def _ward_export_problem(user: StaffUser, ward: Ward | None) -> str | None:
    problem = _session_problem(user)
    if problem is not None:
        return problem
    if ward is None:
        return "unknown_ward"
    if _ward_care_covers(user, ward.id):
        return None
    return "other_ward" if user_can(user, "view_ward_patients") else f"role_{user_role(user)}"


def ward_export_read(
    *, user: StaffUser, actor: Actor, ward_code: str, action: str, detail: dict[str, Any] | None = None
) -> tuple[Ward, list[Patient]]:
    """Decide and audit an export of a whole ward: care roles of that ward only (break-glass
    opens one patient, never a ward). Returns the ward and its patients, discharged ones too
    (their history stays readable to the ward's staff, as `patient_access` decides)."""
    ward = Ward.objects.filter(code=ward_code[:40]).first()
    reason = _ward_export_problem(user, ward)
    if reason is not None or ward is None:
        raise access_refusal(
            user,
            action=action,
            reason=reason or "unknown_ward",
            detail=WARD_REFUSED,
            facts={"ward": ward_code[:40], **(detail or {})},
        )
    patients = list(Patient.objects.filter(ward=ward).order_by("pseudonym"))
    audit_record(
        actor=actor,
        action=action,
        detail={"reason": "ward", "ward": ward.code, "patients": [p.pseudonym for p in patients], **(detail or {})},
    )
    return ward, patients


def export_read(
    *,
    user: StaffUser,
    actor: Actor,
    requester_id: int | None,
    ward_id: int | None,
    action: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Decide and audit an act on an export (its status, a file, its cancellation): only the user
    who asked for it, while they still care for its ward. Someone else's export, and one that
    does not exist (requester_id None), get the same 404, so export ids are no oracle."""
    reason = _session_problem(user)
    if reason is None and (requester_id is None or requester_id != user.pk):
        reason = "not_requester"
    if reason is None and (ward_id is None or not _ward_care_covers(user, ward_id)):
        reason = "other_ward" if user_can(user, "view_ward_patients") else f"role_{user_role(user)}"
    if reason == "not_requester":
        raise Refusal(action=action, reason=reason, code="not_found", status=404, detail=EXPORT_REFUSED, facts=detail)
    if reason is not None:
        raise access_refusal(user, action=action, reason=reason, detail=EXPORT_REFUSED, facts=detail)
    audit_record(actor=actor, action=action, detail={"reason": "requester", **(detail or {})})


def requester_read(
    *,
    user: StaffUser,
    actor: Actor,
    requester_id: int | None,
    capability: str,
    action: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Decide and audit a read of something only its requester may have (a research export's
    file): a verified user who still holds `capability` and asked for it. Someone else's, and
    one that does not exist or expired (requester_id None), get the same 404 (no oracle)."""
    reason = _session_problem(user)
    if reason is None and not user_can(user, capability):
        reason = f"role_{user_role(user)}"
    if reason is None and (requester_id is None or requester_id != user.pk):
        raise Refusal(
            action=action, reason="not_requester", code="not_found", status=404, detail=EXPORT_REFUSED, facts=detail
        )
    if reason is not None:
        raise access_refusal(user, action=action, reason=reason, detail=EXPORT_REFUSED, facts=detail)
    audit_record(actor=actor, action=action, detail={"reason": "requester", **(detail or {})})


# ---- who is asking -----------------------------------------------------------------------


def _actor_for(user: StaffUser | None, source_address: str, user_agent: str) -> Actor:
    if user is not None and user.is_authenticated:
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
