"""Capability checks for staff pages, audited when refused.

A page for one capability (audit/access/roles.py) answers an anonymous, password-only or idle-expired
visitor with the login page, and a verified user of the wrong role with a 403 page; either
refusal is one audit event. Allowed views write their own single event (they know the subject).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render

from audit.access.policy import actor_from_request, user_can, user_is_verified, user_role
from audit.models import AuditEvent
from audit.trail import audit_record

View = Callable[..., HttpResponseBase]


def refusal_reason(user: Any) -> str:
    if not getattr(user, "is_authenticated", False):
        return "not_authenticated"
    if not user_is_verified(user):
        return "mfa_required"
    return f"role_{user_role(user)}"


def staff_page(capability: str, action: str) -> Callable[[View], View]:
    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if user_can(request.user, capability):
                return view(request, *args, **kwargs)
            reason = refusal_reason(request.user)
            audit_record(
                actor=actor_from_request(request),
                action=action,
                outcome=AuditEvent.Outcome.DENIED,
                subject=str(kwargs.get("pseudonym", ""))[:80],
                detail={"reason": reason, "path": request.path[:200]},
            )
            if reason in {"not_authenticated", "mfa_required"}:
                return redirect_to_login(request.get_full_path())
            return render(request, "errors/forbidden.html", status=403)

        return wrapper

    return decorate
