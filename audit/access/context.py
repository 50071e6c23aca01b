"""Template context for every page: the navigation the user's role may use, session timing and the
user's display mode."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from audit.access.policy import (
    ADMIN,
    CLINICIAN,
    COMPLIANCE,
    DEVICE_ADMIN,
    ONCALL,
    user_can,
    user_is_verified,
    user_role,
)
from audit.access.staff import staff_display_mode
from audit.models import StaffProfile
from config.users import StaffUser

# (label, url, capability that shows it). Apps add their pages here, not in templates.
NAV: list[tuple[str, str, str]] = [
    ("Ward", "/", "view_ward_patients"),
    ("Admissions", "/ward/flow/", "manage_patient_flow"),
    ("Alarms", "/alarms/", "acknowledge_alarms"),
    ("Audit", "/audit/", "view_audit_trail"),
    ("Break glass", "/audit/break-glass/", "break_glass"),
    ("Devices", "/devices/", "manage_devices"),
    ("On call", "/alarms/oncall/", "manage_staff"),
    ("Legal holds", "/lifecycle/holds/", "manage_legal_holds"),
    ("Retention", "/lifecycle/retention/", "view_retention"),
    ("Research export", "/lifecycle/research/", "research_export"),
]


# Each role's own page (issue 13.3): the ward overview for care staff, the audit search for
# compliance, the device registry for device administrators, the on-call roster (staff of every
# ward, who is reached by escalations) for administrators.
ROLE_HOMES: dict[str, tuple[str, str]] = {
    CLINICIAN: ("/", "view_ward_patients"),
    ONCALL: ("/", "view_ward_patients"),
    COMPLIANCE: ("/audit/", "view_audit_trail"),
    DEVICE_ADMIN: ("/devices/", "manage_devices"),
    ADMIN: ("/alarms/oncall/", "manage_staff"),
}


def role_home(user: StaffUser) -> str:
    """Where a user lands after sign-in (and where the brand link leads): their role's own page,
    else the first page of the navigation they may use, else their account page."""
    home = ROLE_HOMES.get(user_role(user))
    if home is not None and user_can(user, home[1]):
        return home[0]
    for _, url, cap in NAV:
        if user_can(user, cap):
            return url
    return "/accounts/"


def staff_context(request: HttpRequest) -> dict[str, Any]:
    # No user: a page answered before Django's authentication middleware ran (an early error).
    user: StaffUser = getattr(request, "user", None) or AnonymousUser()
    verified = user_is_verified(user)
    items = [{"label": label, "url": url} for label, url, cap in NAV if verified and user_can(user, cap)]
    return {
        "perfuse_nav": items,
        "perfuse_home": role_home(user) if verified else "/",
        "perfuse_verified": verified,
        "perfuse_role": user_role(user),
        "perfuse_idle_seconds": settings.PERFUSE_SESSION_IDLE_SECONDS,
        "perfuse_warning_seconds": settings.PERFUSE_SESSION_WARNING_SECONDS,
        "perfuse_display_mode": staff_display_mode(user) if verified else StaffProfile.DisplayMode.AUTO,
        "perfuse_display_modes": StaffProfile.DisplayMode.choices,
    }
