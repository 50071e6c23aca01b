"""Writes of the on-call roster: shifts of a ward, added, changed and removed by administrators.

Capability `manage_staff`: who is on call is staff planning, the same people who manage staff
accounts and roles (not a new capability). Every edit is audited with the shift as it was and as
it is (`oncall_shift.created|updated|deleted`); a refused or invalid edit is an audited refusal.

Shifts of one ward may overlap — that is the handover, when both people are on call and both are
notified — but one person's shifts on a ward may not overlap each other (a duplicate). A shift
lasts at most MAX_SHIFT. A shift that has ended is history: it is neither changed nor removed,
and none is added in the past.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from alerts.errors import AlarmForbidden, AlarmNotFound, ShiftInvalid
from alerts.models import OnCallShift
from alerts.selectors import roster_candidates
from audit.access.policy import user_can
from audit.access.refusals import refusals_audited
from audit.trail import SYSTEM, Actor, audit_record
from config.live import iso
from config.users import StaffUser
from telemetry.models import Ward

MAX_SHIFT = dt.timedelta(hours=72)
CAPABILITY = "manage_staff"


def _shift_json(shift: OnCallShift) -> dict[str, Any]:
    return {
        "id": shift.pk,
        "ward": shift.ward.code,
        "user": shift.user.get_username(),
        "starts_at": iso(shift.starts_at),
        "ends_at": iso(shift.ends_at),
        "note": shift.note,
    }


def _allowed(user: StaffUser, *, act: str, ward: Ward | None) -> None:
    if not user_can(user, CAPABILITY):
        raise AlarmForbidden(
            "Your role does not edit the on-call roster.",
            action=f"oncall_shift.{act}",
            reason="role",
            facts={"ward": ward.code if ward else ""},
        )


def _invalid(act: str, errors: dict[str, str], ward: Ward) -> ShiftInvalid:
    return ShiftInvalid(errors, action=f"oncall_shift.{act}", reason="invalid", facts={"ward": ward.code, **errors})


def shift_validate(
    *, ward: Ward, person: Any, starts_at: dt.datetime | None, ends_at: dt.datetime | None, exclude: int | None = None
) -> dict[str, str]:
    """Errors by field of a shift as it would be saved (empty when it may be saved)."""
    errors: dict[str, str] = {}
    if person is None or person not in roster_candidates(ward):
        errors["user"] = "choose an active on-call or clinician staff member of this ward"
    if starts_at is None:
        errors["starts_at"] = "a start date and time is required"
    if ends_at is None:
        errors["ends_at"] = "an end date and time is required"
    if starts_at is None or ends_at is None:
        return errors
    if ends_at <= starts_at:
        errors["ends_at"] = "must be after the start"
    elif ends_at - starts_at > MAX_SHIFT:
        errors["ends_at"] = f"a shift lasts at most {MAX_SHIFT.total_seconds() / 3600:g} hours"
    elif ends_at <= timezone.now():
        errors["ends_at"] = "a shift that has ended is history: it cannot be added or changed"
    if not errors and person is not None:
        clash = OnCallShift.objects.filter(ward=ward, user=person, starts_at__lt=ends_at, ends_at__gt=starts_at)
        if exclude is not None:
            clash = clash.exclude(pk=exclude)
        if clash.exists():
            errors["starts_at"] = f"{person.get_username()} already has a shift on {ward.code} at that time"
    return errors


@refusals_audited
def shift_create(
    *,
    ward: Ward,
    user_id: int | None,
    starts_at: dt.datetime | None,
    ends_at: dt.datetime | None,
    note: str,
    actor: Actor,
    user: StaffUser,
) -> OnCallShift:
    """An administrator adds a shift (the roster page)."""
    _allowed(user, act="created", ward=ward)
    person = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    return _shift_add(ward=ward, person=person, starts_at=starts_at, ends_at=ends_at, note=note, actor=actor)


@refusals_audited
def shift_create_operator(
    *, ward: Ward, person: Any, starts_at: dt.datetime, ends_at: dt.datetime, note: str, actor: Actor = SYSTEM
) -> OnCallShift:
    """A management command adds a shift (the operator at the server: no role check), validated
    and audited like the page's."""
    return _shift_add(ward=ward, person=person, starts_at=starts_at, ends_at=ends_at, note=note, actor=actor)


def _shift_add(
    *, ward: Ward, person: Any, starts_at: dt.datetime | None, ends_at: dt.datetime | None, note: str, actor: Actor
) -> OnCallShift:
    errors = shift_validate(ward=ward, person=person, starts_at=starts_at, ends_at=ends_at)
    if errors:
        raise _invalid("created", errors, ward)
    assert person is not None and starts_at is not None and ends_at is not None  # validated above
    shift = OnCallShift.objects.create(
        ward=ward,
        user=person,
        starts_at=starts_at,
        ends_at=ends_at,
        note=note.strip()[:120],
        created_by=actor.username,
        created_at=timezone.now(),
    )
    audit_record(actor=actor, action="oncall_shift.created", detail={"shift": _shift_json(shift)})
    return shift


def _shift_locked(shift_id: int, *, act: str) -> OnCallShift:
    shift = (
        OnCallShift.objects.select_for_update(of=("self",)).select_related("ward", "user").filter(pk=shift_id).first()
    )
    if shift is None:
        raise AlarmNotFound("No such shift.", action=f"oncall_shift.{act}", reason="unknown", facts={"shift": shift_id})
    if shift.ends_at <= timezone.now():
        raise _invalid(act, {"__all__": "a shift that has ended is history: it cannot be changed"}, shift.ward)
    return shift


@refusals_audited
def shift_update(
    *,
    shift_id: int,
    starts_at: dt.datetime | None,
    ends_at: dt.datetime | None,
    note: str,
    actor: Actor,
    user: StaffUser,
) -> OnCallShift:
    """Change a shift's times or note (ending a shift early is a change of its end)."""
    _allowed(user, act="updated", ward=None)
    shift = _shift_locked(shift_id, act="updated")
    before = _shift_json(shift)
    errors = shift_validate(ward=shift.ward, person=shift.user, starts_at=starts_at, ends_at=ends_at, exclude=shift.pk)
    if errors:
        raise _invalid("updated", errors, shift.ward)
    assert starts_at is not None and ends_at is not None  # validated above
    shift.starts_at, shift.ends_at, shift.note = starts_at, ends_at, note.strip()[:120]
    shift.save(update_fields=["starts_at", "ends_at", "note"])
    audit_record(actor=actor, action="oncall_shift.updated", detail={"before": before, "shift": _shift_json(shift)})
    return shift


@refusals_audited
def shift_delete(*, shift_id: int, actor: Actor, user: StaffUser) -> None:
    _allowed(user, act="deleted", ward=None)
    shift = _shift_locked(shift_id, act="deleted")
    before = _shift_json(shift)
    shift.delete()
    audit_record(actor=actor, action="oncall_shift.deleted", detail={"shift": before})
