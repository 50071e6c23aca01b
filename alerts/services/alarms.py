"""Every write to alarms and pauses. One function per act: the row change, its AlarmTransition,
its audit event and its live frame (queued with transaction.on_commit), in one transaction. The
engine (alerts/engine.py) calls the system transitions; views call the staff acts.

A staff act that is refused raises an alerts.errors refusal: its transaction rolls back (nothing
half-done), then audit.access.refusals writes the denial event, so a refused acknowledgement
leaves its trace.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db import transaction
from django.db.models import Count, Min
from django.utils import timezone

from alerts import events, lifecycle, notifiers
from alerts.errors import AlarmConflict, AlarmError, AlarmForbidden, AlarmNotFound
from alerts.models import Alarm, AlarmPause, AlarmRule, AlarmTransition
from alerts.selectors import alarm_access
from alerts.services.rules import rule_current_ward
from alerts.vocabulary import KIND_CATEGORY, KIND_PRIORITY, OPEN_STATES, PRIORITY_RANK, Priority, State
from audit.access.policy import ONCALL, user_can, user_role
from audit.access.refusals import refusals_audited
from audit.trail import SYSTEM, Actor, audit_record
from config.users import StaffUser, user_account
from telemetry.models import Annotation, Patient, ReadingRevision, Reprocessing

log = logging.getLogger(__name__)


# --- live frames -------------------------------------------------------------------------------


def _record(
    alarm: Alarm, *, frm: str, cause: str, actor: Actor, now: dt.datetime, detail: dict[str, Any] | None = None
) -> AlarmTransition:
    transition = AlarmTransition.objects.create(
        alarm=alarm,
        at=now,
        from_state=frm,
        to_state=alarm.state,
        cause=cause,
        actor_id=actor.user_id,
        actor_username=actor.username,
        detail=detail or {},
    )
    audit_record(
        actor=actor,
        action=f"alarm.{cause}",
        subject=alarm.patient.pseudonym,
        detail={"alarm": alarm.pk, "kind": alarm.kind, "priority": alarm.priority, "from": frm, "to": alarm.state}
        | (detail or {}),
    )
    events.transition_publish(alarm=alarm, transition=transition)
    return transition


def _annotate(alarm: Alarm, *, kind: str, time: dt.datetime, text: str, data: dict[str, Any]) -> None:
    note = Annotation.objects.create(patient=alarm.patient, kind=kind, time=time, text=text[:500], data=data)
    events.mark_publish(alarm=alarm, note=note)


def _locked(alarm_id: int) -> Alarm | None:
    return (
        Alarm.objects.select_for_update(of=("self",))
        .select_related("patient", "ward", "rule", "acknowledged_by", "responsible")
        .filter(pk=alarm_id)
        .first()
    )


# --- system transitions (the engine) -------------------------------------------------------------


@transaction.atomic
def alarm_raise(
    *,
    patient: Patient,
    rule: AlarmRule,
    kind: str,
    onset: dt.datetime,
    now: dt.datetime,
    explain: dict[str, Any],
) -> Alarm:
    priority = KIND_PRIORITY[kind]
    alarm = Alarm.objects.create(
        patient=patient,
        ward_id=patient.ward_id,
        kind=kind,
        priority=priority,
        priority_rank=PRIORITY_RANK[priority],
        category=KIND_CATEGORY[kind],
        latched=priority == Priority.HIGH,
        rule=rule,
        condition_started_at=onset,
        raised_at=now,
        activated_at=now,
        last_triggered_at=now,
        explain=explain,
    )
    alarm.ward = patient.ward  # the objects in hand: no re-fetch on the engine's hot path
    _record(alarm, frm="", cause="raised", actor=SYSTEM, now=now, detail={"rule_version": rule.version})
    _annotate(
        alarm,
        kind=Annotation.Kind.ALARM,
        time=onset,
        text=f"{priority} alarm: {alarm.get_kind_display()}",
        data={"alarm": alarm.pk, "kind": kind, "priority": priority},
    )
    notifiers.notify_raise(alarm=alarm, now=now)  # high priority: paged at once, from the outbox
    return alarm


@transaction.atomic
def alarm_recur(*, alarm_id: int, onset: dt.datetime, now: dt.datetime, explain: dict[str, Any]) -> Alarm | None:
    """The condition returned while the alarm is still open (suppression window): update it."""
    alarm = _locked(alarm_id)
    if alarm is None or not alarm.is_open:
        return None
    alarm.condition_present = True
    alarm.condition_started_at = onset
    alarm.condition_cleared_at = None
    alarm.recurrences += 1
    alarm.last_triggered_at = now
    alarm.explain = {**explain, "first": alarm.explain.get("first", alarm.explain)}
    alarm.save()
    _record(alarm, frm=alarm.state, cause="recurred", actor=SYSTEM, now=now, detail={"recurrences": alarm.recurrences})
    return alarm


@transaction.atomic
def alarm_condition_clear(*, alarm_id: int, cleared_at: dt.datetime, now: dt.datetime) -> Alarm | None:
    alarm = _locked(alarm_id)
    if alarm is None or not alarm.is_open or not alarm.condition_present:
        return None
    alarm.condition_present = False
    alarm.condition_cleared_at = cleared_at
    alarm.save(update_fields=["condition_present", "condition_cleared_at"])
    _record(alarm, frm=alarm.state, cause="condition_cleared", actor=SYSTEM, now=now, detail={"latched": alarm.latched})
    return alarm


@transaction.atomic
def alarm_timers(*, alarm_id: int, now: dt.datetime) -> Alarm | None:
    """Resolve, re-alert or escalate one alarm when its time has come (re-checked under lock)."""
    alarm = _locked(alarm_id)
    if alarm is None or not alarm.is_open:
        return None
    rule = alarm.rule
    view = lifecycle.AlarmView.of(alarm)
    if lifecycle.due_resolution(view, now=now, suppression_window=dt.timedelta(seconds=rule.suppression_window_s)):
        frm = alarm.state
        alarm.state, alarm.resolved_at = State.RESOLVED, now
        alarm.save(update_fields=["state", "resolved_at"])
        _record(alarm, frm=frm, cause="resolved", actor=SYSTEM, now=now)
        return alarm
    if lifecycle.due_realert(view, now=now, realert_interval=dt.timedelta(seconds=rule.realert_interval_s)):
        alarm.state, alarm.activated_at = State.ACTIVE_UNACKNOWLEDGED, now
        alarm.save(update_fields=["state", "activated_at"])
        _record(alarm, frm=State.ACKNOWLEDGED, cause="re_alert", actor=SYSTEM, now=now)
        return alarm
    if lifecycle.due_escalation(view, now=now, escalation_delay=dt.timedelta(seconds=rule.escalation_delay_s)):
        _escalate(alarm, now=now, actor=SYSTEM, cause="escalated")
        return alarm
    return None


def alarms_resolve_discharged(*, patient: Patient, at: dt.datetime, actor: Actor, cause: str) -> list[Alarm]:
    """The patient left the ward (telemetry.signals.patient_discharged, in the discharge's own
    transaction): every open alarm of the patient resolves with cause `discharged`, latched or
    not, since no one is there to answer it. `cause` (discharged or admit_cancelled) is kept in
    the transition's detail."""
    ids = list(Alarm.objects.filter(patient=patient, state__in=OPEN_STATES).order_by("id").values_list("id", flat=True))
    resolved = []
    for alarm_id in ids:
        alarm = _locked(alarm_id)
        if alarm is None or not alarm.is_open:
            continue
        frm = alarm.state
        alarm.state, alarm.resolved_at = State.RESOLVED, at
        alarm.save(update_fields=["state", "resolved_at"])
        _record(alarm, frm=frm, cause="discharged", actor=actor, now=at, detail={"flow": cause})
        resolved.append(alarm)
    return resolved


def _escalate(
    alarm: Alarm, *, now: dt.datetime, actor: Actor, cause: str, detail: dict[str, Any] | None = None
) -> None:
    alarm.escalation_level = min(alarm.escalation_level + 1, lifecycle.MAX_ESCALATION_LEVEL)
    alarm.escalated_at = now
    alarm.ever_escalated = True
    alarm.save(update_fields=["escalation_level", "escalated_at", "ever_escalated", "responsible", "accepted_at"])
    _record(
        alarm,
        frm=alarm.state,
        cause=cause,
        actor=actor,
        now=now,
        detail={"level": alarm.escalation_level} | (detail or {}),
    )
    notifiers.notify_escalation(alarm=alarm, now=now)


# --- staff acts --------------------------------------------------------------------------------


def _locked_visible(alarm_id: int, *, user: StaffUser, act: str) -> Alarm:
    """The alarm, locked for the act, if the user may act on it; else the refusal."""
    alarm = _locked(alarm_id)
    if alarm is None:
        raise AlarmNotFound("No such alarm.", action=f"alarm.{act}", reason="unknown", facts={"alarm": alarm_id})
    decision = alarm_access(user, alarm)
    if not decision.allowed:
        raise AlarmForbidden(
            "You may not act on this alarm.",
            action=f"alarm.{act}",
            reason=decision.reason,
            subject=alarm.patient.pseudonym,
            facts={"alarm": alarm.pk},
        )
    return alarm


def _refused(
    kind: type[AlarmError], alarm: Alarm, *, act: str, reason: str, detail: str, code: str | None = None
) -> AlarmError:
    return kind(
        detail,
        action=f"alarm.{act}",
        reason=reason,
        code=code,
        subject=alarm.patient.pseudonym,
        facts={"alarm": alarm.pk, "state": alarm.state},
    )


@refusals_audited
def alarm_acknowledge(*, alarm_id: int, user: StaffUser, actor: Actor, note: str = "") -> Alarm:
    """Acknowledge an active alarm. Two people at once: the row lock lets one win; the other is
    refused with `already_acknowledged`, and both attempts are in the audit trail."""
    note = note.strip()[:500]
    alarm = _locked_visible(alarm_id, user=user, act="acknowledged")
    if not user_can(user, "acknowledge_alarms"):
        raise _refused(
            AlarmForbidden, alarm, act="acknowledged", reason="role", detail="Your role does not acknowledge alarms."
        )
    if alarm.state != State.ACTIVE_UNACKNOWLEDGED:
        acknowledged = alarm.state == State.ACKNOWLEDGED
        raise _refused(
            AlarmConflict,
            alarm,
            act="acknowledged",
            reason="already_acknowledged" if acknowledged else "resolved",
            code="already_acknowledged" if acknowledged else "alarm_resolved",
            detail=f"The alarm is {alarm.state.replace('_', ' ')}.",
        )
    now = timezone.now()
    alarm.state = State.ACKNOWLEDGED
    alarm.acknowledged_by = user_account(user)
    alarm.acknowledged_at = now
    alarm.first_acknowledged_at = alarm.first_acknowledged_at or now
    alarm.ack_note = note
    alarm.save()
    _record(alarm, frm=State.ACTIVE_UNACKNOWLEDGED, cause="acknowledged", actor=actor, now=now, detail={"note": note})
    _annotate(
        alarm,
        kind=Annotation.Kind.ACKNOWLEDGEMENT,
        time=now,
        text=f"{actor.username} acknowledged {alarm.get_kind_display()}" + (f": {note}" if note else ""),
        data={"alarm": alarm.pk, "by": actor.username, "note": note},
    )
    return alarm


def _oncall_only(alarm: Alarm, *, user: StaffUser, act: str, verb: str) -> None:
    """Accepting and declining are on-call acts on open alarms; anything else is refused."""
    if user_role(user) != ONCALL:
        raise _refused(AlarmForbidden, alarm, act=act, reason="not_oncall", detail=f"Only on-call staff {verb} alarms.")
    if not alarm.is_open:
        raise _refused(
            AlarmConflict, alarm, act=act, reason="resolved", code="alarm_resolved", detail="The alarm is resolved."
        )


@refusals_audited
def alarm_accept(*, alarm_id: int, user: StaffUser, actor: Actor) -> Alarm:
    """An on-call user takes responsibility: timed escalation stops (the alarm still needs an
    acknowledgement)."""
    alarm = _locked_visible(alarm_id, user=user, act="accepted")
    _oncall_only(alarm, user=user, act="accepted", verb="accept")
    if alarm.responsible_id is not None:
        raise _refused(
            AlarmConflict,
            alarm,
            act="accepted",
            reason="already_accepted",
            code="already_accepted",
            detail=f"{alarm.responsible.username if alarm.responsible else 'someone'} already accepted it.",
        )
    now = timezone.now()
    alarm.responsible = user_account(user)
    alarm.accepted_at = now
    alarm.save(update_fields=["responsible", "accepted_at"])
    _record(alarm, frm=alarm.state, cause="accepted", actor=actor, now=now)
    return alarm


@refusals_audited
def alarm_decline(*, alarm_id: int, user: StaffUser, actor: Actor, reason: str = "") -> Alarm:
    """An on-call user declines: the alarm escalates one level further at once."""
    reason = reason.strip()[:300]
    alarm = _locked_visible(alarm_id, user=user, act="declined")
    _oncall_only(alarm, user=user, act="declined", verb="decline")
    now = timezone.now()
    if alarm.responsible_id == user.pk:
        alarm.responsible, alarm.accepted_at = None, None
    _escalate(alarm, now=now, actor=actor, cause="declined", detail={"reason": reason})
    return alarm


def _pause_refusal(
    patient: Patient, *, user: StaffUser, seconds: int, priority: str, max_pause_s: int
) -> AlarmError | None:
    def refusal(kind: type[AlarmError], detail: str, reason: str) -> AlarmError:
        return kind(
            detail,
            action="alarm.paused",
            reason=reason,
            code=reason,
            subject=patient.pseudonym,
            facts={"seconds": seconds},
        )

    if not user_can(user, "acknowledge_alarms"):
        return refusal(AlarmForbidden, "Your role may not pause alarms.", "forbidden")
    if priority not in Priority.values():
        return refusal(AlarmError, "priority must be high, medium or low.", "invalid")
    if not 1 <= seconds <= max_pause_s:
        return refusal(AlarmError, f"A pause lasts 1 to {max_pause_s} s on this ward.", "pause_too_long")
    return None


@refusals_audited
def patient_pause(
    *,
    patient: Patient,
    user: StaffUser,
    actor: Actor,
    seconds: int,
    priority: str = Priority.MEDIUM,
    reason: str = "",
) -> AlarmPause:
    """Pause raising alarms of `priority` or lower for the patient, at most the ward's max pause."""
    rule = rule_current_ward(patient.ward)
    refused = _pause_refusal(patient, user=user, seconds=seconds, priority=priority, max_pause_s=rule.max_pause_s)
    if refused is not None:
        raise refused
    now = timezone.now()
    AlarmPause.objects.filter(patient=patient, ended_at__isnull=True, until__gt=now).update(ended_at=now)
    pause = AlarmPause.objects.create(
        patient=patient,
        started_at=now,
        until=now + dt.timedelta(seconds=seconds),
        priority=priority,
        paused_by=user_account(user),
        reason=reason[:300],
    )
    audit_record(
        actor=actor,
        action="alarm.paused",
        subject=patient.pseudonym,
        detail={"seconds": seconds, "priority": priority, "reason": reason[:300]},
    )
    events.pause_publish(pause=pause, by=actor.username)
    return pause


# The longest audio pause a console may ask for: IEC 60601-1-8 leaves the AUDIO PAUSED duration to
# the manufacturer; two minutes is what the console asks, five the ceiling.
AUDIO_PAUSE_MAX_S = 300


@transaction.atomic
def console_audio_pause(*, actor: Actor, seconds: int, priority: str) -> dt.datetime:
    """Record that a console silenced its sound for `priority` and lower until the returned time.
    Nothing changes on the server: alarms are raised, escalate and show as before; the browser
    that asked stays silent (docs/alarms.md, "Alarm signals")."""
    until = timezone.now() + dt.timedelta(seconds=seconds)
    audit_record(
        actor=actor,
        action="alarm.audio_paused",
        detail={"seconds": seconds, "priority": priority, "until": until.isoformat()},
    )
    return until


# --- reprocessed values ----------------------------------------------------------------------------


@transaction.atomic
def alarms_reexplain(
    *, device_id: str, spans: list[tuple[int, dt.datetime, dt.datetime]], reprocessing: Reprocessing
) -> list[Alarm]:
    """Re-explain the alarms whose condition overlapped values a calibration correction changed.

    Nothing is removed or resolved: the alarm keeps its record (it was raised on what was known
    then), and gains a `reprocessed` transition and an entry in its explanation with the span's
    values before and after, so a reviewer sees both."""
    touched = []
    for patient_pk, lo, hi in spans:
        overlapping = (
            Alarm.objects.select_for_update(of=("self",))
            .select_related("patient", "ward")
            .filter(patient_id=patient_pk, condition_started_at__lte=hi)
            .exclude(resolved_at__lt=lo)
        )
        for alarm in overlapping:
            start = max(lo, alarm.condition_started_at)
            end = min(hi, alarm.condition_cleared_at or alarm.resolved_at or hi)
            revised = ReadingRevision.objects.filter(
                reprocessing=reprocessing, sample_time__gte=start, sample_time__lte=end
            ).aggregate(n=Count("id"), old_min=Min("old_value"), new_min=Min("new_value"))
            note = {
                "reprocessing": reprocessing.pk,
                "device": device_id,
                "reason": reprocessing.reason,
                "changed": revised["n"],
                "old_min": revised["old_min"],
                "new_min": revised["new_min"],
            }
            alarm.explain = {**alarm.explain, "reprocessed": [*alarm.explain.get("reprocessed", []), note]}
            alarm.save(update_fields=["explain"])
            _record(alarm, frm=alarm.state, cause="reprocessed", actor=SYSTEM, now=timezone.now(), detail=note)
            touched.append(alarm)
    return touched
