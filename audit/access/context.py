"""Template context for every page: the navigation the user's role may use, and session timing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from audit.access.policy import user_can, user_is_verified, user_role

# (label, url, capability that shows it). Apps add their pages here, not in templates.
NAV: list[tuple[str, str, str]] = [
    ("Ward", "/", "view_ward_patients"),
    ("Alarms", "/alarms/", "acknowledge_alarms"),
    ("Audit", "/audit/", "view_audit_trail"),
    ("Break glass", "/audit/break-glass/", "break_glass"),
    ("Devices", "/devices/", "manage_devices"),
    ("On call", "/alarms/oncall/", "manage_staff"),
]


def role_home(user: Any) -> str:
    """Where a user lands after sign-in: the first page of the navigation their role may use."""
    for _, url, cap in NAV:
        if user_can(user, cap):
            return url
    return "/accounts/"


def staff_context(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    verified = user_is_verified(user)
    items = [{"label": label, "url": url} for label, url, cap in NAV if verified and user_can(user, cap)]
    return {
        "perfuse_nav": items,
        "perfuse_verified": verified,
        "perfuse_role": user_role(user) if user is not None else "anonymous",
        "perfuse_idle_seconds": settings.PERFUSE_SESSION_IDLE_SECONDS,
        "perfuse_warning_seconds": settings.PERFUSE_SESSION_WARNING_SECONDS,
    }
