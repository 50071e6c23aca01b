"""The on-call roster page (`/alarms/oncall/`): per ward, who is on call now and the shifts of the
coming days, with forms to add, change and remove shifts.

Administrators only (capability `manage_staff`, the page guard refuses others, audited). Plain
forms, no script: the page works under the CSP without JavaScript. Each view is audited
(`oncall_roster.viewed`); each edit is written and audited by alerts/services/roster.py, and a
refused or invalid edit is an audited refusal shown on the page with the form as it was sent.
Times are entered and shown in settings.TIME_ZONE.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from alerts import selectors, services
from alerts.errors import AlarmError
from alerts.models import OnCallShift
from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request
from audit.trail import audit_record
from telemetry.models import Ward

# The page shows shifts from a day back to two weeks ahead.
SHOWN_BEFORE = dt.timedelta(days=1)
SHOWN_AHEAD = dt.timedelta(days=14)
INPUT_FORMAT = "%Y-%m-%dT%H:%M"


def parse_local(value: str) -> dt.datetime | None:
    """A `datetime-local` input value in the site's time zone; None when empty or malformed."""
    try:
        return dt.datetime.strptime(value.strip(), INPUT_FORMAT).replace(tzinfo=timezone.get_current_timezone())
    except ValueError:
        return None


def as_input(value: dt.datetime) -> str:
    return timezone.localtime(value).strftime(INPUT_FORMAT)


def _ward(request: HttpRequest) -> Ward | None:
    code = request.POST.get("ward") if request.method == "POST" else request.GET.get("ward")
    return Ward.objects.filter(code=code or "").first() or Ward.objects.order_by("code").first()


def _user_id(raw: str) -> int | None:
    return int(raw) if raw.isdigit() else None


def _shift_id(raw: str) -> int:
    return int(raw) if raw.isdigit() else 0


def _act(request: HttpRequest, ward: Ward) -> None:
    """The POSTed edit, through the roster services (which refuse and audit)."""
    post, actor = request.POST, actor_from_request(request)
    act = post.get("act", "")
    if act == "delete":
        services.shift_delete(shift_id=_shift_id(post.get("shift", "")), actor=actor, user=request.user)
        return
    times = {"starts_at": parse_local(post.get("starts_at", "")), "ends_at": parse_local(post.get("ends_at", ""))}
    if act == "update":
        services.shift_update(
            shift_id=_shift_id(post.get("shift", "")),
            note=post.get("note", ""),
            actor=actor,
            user=request.user,
            **times,
        )
        return
    services.shift_create(
        ward=ward,
        user_id=_user_id(post.get("user", "")),
        note=post.get("note", ""),
        actor=actor,
        user=request.user,
        **times,
    )


def _rows(shifts: list[OnCallShift], now: dt.datetime) -> list[dict[str, Any]]:
    """Each shift with its standing (past, on call, upcoming) and the handover with the one before."""
    rows = []
    for i, shift in enumerate(shifts):
        overlapping = [s for s in shifts[:i] if s.ends_at > shift.starts_at and s.user_id != shift.user_id]
        rows.append(
            {
                "shift": shift,
                "standing": "past" if shift.ends_at <= now else "now" if shift.starts_at <= now else "upcoming",
                "handover_with": [s.user.get_username() for s in overlapping],
                "starts_input": as_input(shift.starts_at),
                "ends_input": as_input(shift.ends_at),
            }
        )
    return rows


@require_http_methods(["GET", "POST"])
@staff_page("manage_staff", "oncall_roster.viewed")
def roster(request: HttpRequest) -> HttpResponse:
    ward = _ward(request)
    error: Any = None
    if ward is not None and request.method == "POST":
        try:
            _act(request, ward)
            return redirect(f"{request.path}?ward={ward.code}&saved=1")
        except AlarmError as refusal:  # audited by the service; shown with the form as sent
            error = refusal.detail
    now = timezone.now()
    shifts = selectors.shifts_of_ward(ward=ward, start=now - SHOWN_BEFORE, end=now + SHOWN_AHEAD) if ward else []
    with transaction.atomic():
        audit_record(
            actor=actor_from_request(request),
            action="oncall_roster.viewed",
            detail={"ward": ward.code if ward else "", "shifts": len(shifts)},
        )
    errors = error if isinstance(error, dict) else {"__all__": str(error)} if error else {}
    sent = request.POST if errors else {}
    return render(
        request,
        "alerts/roster.html",
        {
            "wards": Ward.objects.order_by("code"),
            "ward": ward,
            "rows": _rows(shifts, now),
            "oncall_now": [s for s in shifts if s.starts_at <= now < s.ends_at],
            "candidates": selectors.roster_candidates(ward) if ward else [],
            "errors": errors,
            "sent": sent,
            "saved": request.GET.get("saved") == "1",
            "default_start": as_input(now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)),
            "default_end": as_input(now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=13)),
            "time_zone": timezone.get_current_timezone_name(),
        },
        status=400 if errors else 200,
    )
