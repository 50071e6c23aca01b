"""Every write to alarms, rules and pauses. One function per act: the row change, its
AlarmTransition, its audit event and its live frame (queued with transaction.on_commit), in one
transaction. The engine (alerts/engine.py) calls the system transitions; views call the staff acts.

Refusals by staff acts are audited too: the audit row is written in a transaction that commits,
and the error is raised after it, so a refused acknowledgement leaves its trace.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from alerts import events, lifecycle, notifiers
from alerts.models import (
    KIND_CATEGORY,
    KIND_PRIORITY,
    PRIORITY_RANK,
    RULE_DEFAULTS,
    RULE_FIELDS,
    Alarm,
    AlarmPause,
    AlarmRule,
    AlarmTransition,
    Priority,
)
from alerts.selectors import alarm_access, rule_override, rule_ward_latest
from audit.access.policy import ONCALL, user_can, user_role
from audit.trail import SYSTEM, Actor, audit_record
from telemetry.models import Annotation, Patient, Ward

log = logging.getLogger(__name__)
State = Alarm.State


class AlarmError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, detail: Any, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.code = code or self.code
        self.status = status or self.status


class AlarmNotFound(AlarmError):
    status, code = 404, "not_found"


class AlarmForbidden(AlarmError):
    status, code = 403, "forbidden"


class AlarmConflict(AlarmError):
    status, code = 409, "conflict"


class RuleInvalid(AlarmError):
    status, code = 400, "invalid_rule"


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


def alarm_view(alarm: Alarm) -> lifecycle.AlarmView:
    return lifecycle.AlarmView(
        state=alarm.state,
        priority=alarm.priority,
        latched=alarm.latched,
        condition_present=alarm.condition_present,
        condition_cleared_at=alarm.condition_cleared_at,
        activated_at=alarm.activated_at,
        acknowledged_at=alarm.acknowledged_at,
        escalation_level=alarm.escalation_level,
        escalated_at=alarm.escalated_at,
        responsible_id=alarm.responsible_id,
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
        priority_rank=PRIORITY_RANK[Priority(priority)],
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
    view = alarm_view(alarm)
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


@dataclass
class _Outcome:
    alarm: Alarm | None = None
    error: AlarmError | None = None


def _authorized(alarm: Alarm | None, *, user: Any, actor: Actor, act: str, alarm_id: int) -> AlarmError | None:
    if alarm is None:
        audit_record(
            actor=actor, action=f"alarm.{act}", outcome="denied", detail={"alarm": alarm_id, "reason": "unknown"}
        )
        return AlarmNotFound("No such alarm.")
    decision = alarm_access(user, alarm)
    if not decision.allowed:
        audit_record(
            actor=actor,
            action=f"alarm.{act}",
            outcome="denied",
            subject=alarm.patient.pseudonym,
            detail={"alarm": alarm.pk, "reason": decision.reason},
        )
        return AlarmForbidden("You may not act on this alarm.")
    return None


def _deny(alarm: Alarm, *, actor: Actor, act: str, reason: str, code: str, detail: str) -> AlarmError:
    audit_record(
        actor=actor,
        action=f"alarm.{act}",
        outcome="denied",
        subject=alarm.patient.pseudonym,
        detail={"alarm": alarm.pk, "reason": reason, "state": alarm.state},
    )
    return AlarmConflict(detail, code=code)


def _finish(outcome: _Outcome) -> Alarm:
    if outcome.error is not None:
        raise outcome.error
    assert outcome.alarm is not None
    return outcome.alarm


def alarm_acknowledge(*, alarm_id: int, user: Any, actor: Actor, note: str = "") -> Alarm:
    """Acknowledge an active alarm. Two people at once: the row lock lets one win; the other is
    refused with `already_acknowledged`, and both attempts are in the audit trail."""
    note = note.strip()[:500]
    with transaction.atomic():
        outcome = _Outcome()
        alarm = _locked(alarm_id)
        outcome.error = _authorized(alarm, user=user, actor=actor, act="acknowledged", alarm_id=alarm_id)
        if outcome.error is None:
            assert alarm is not None
            if not user_can(user, "acknowledge_alarms"):
                outcome.error = _deny(
                    alarm,
                    actor=actor,
                    act="acknowledged",
                    reason="role",
                    code="forbidden",
                    detail="Your role does not acknowledge alarms.",
                )
                outcome.error.status = 403
            elif alarm.state != State.ACTIVE_UNACKNOWLEDGED:
                outcome.error = _deny(
                    alarm,
                    actor=actor,
                    act="acknowledged",
                    reason="already_acknowledged" if alarm.state == State.ACKNOWLEDGED else "resolved",
                    code="already_acknowledged" if alarm.state == State.ACKNOWLEDGED else "alarm_resolved",
                    detail=f"The alarm is {alarm.state.replace('_', ' ')}.",
                )
            else:
                now = timezone.now()
                alarm.state = State.ACKNOWLEDGED
                alarm.acknowledged_by = user
                alarm.acknowledged_at = now
                alarm.first_acknowledged_at = alarm.first_acknowledged_at or now
                alarm.ack_note = note
                alarm.save()
                _record(
                    alarm,
                    frm=State.ACTIVE_UNACKNOWLEDGED,
                    cause="acknowledged",
                    actor=actor,
                    now=now,
                    detail={"note": note},
                )
                _annotate(
                    alarm,
                    kind=Annotation.Kind.ACKNOWLEDGEMENT,
                    time=now,
                    text=f"{actor.username} acknowledged {alarm.get_kind_display()}" + (f": {note}" if note else ""),
                    data={"alarm": alarm.pk, "by": actor.username, "note": note},
                )
                outcome.alarm = alarm
    return _finish(outcome)


def _oncall_refusal(alarm: Alarm, *, user: Any, actor: Actor, act: str, verb: str) -> AlarmError | None:
    """Accepting and declining are on-call acts on open alarms; anything else is refused (and audited)."""
    if user_role(user) != ONCALL:
        error = _deny(
            alarm,
            actor=actor,
            act=act,
            reason="not_oncall",
            code="forbidden",
            detail=f"Only on-call staff {verb} alarms.",
        )
        error.status = 403
        return error
    if not alarm.is_open:
        return _deny(
            alarm, actor=actor, act=act, reason="resolved", code="alarm_resolved", detail="The alarm is resolved."
        )
    return None


def alarm_accept(*, alarm_id: int, user: Any, actor: Actor) -> Alarm:
    """An on-call user takes responsibility: timed escalation stops (the alarm still needs an
    acknowledgement)."""
    with transaction.atomic():
        outcome = _Outcome()
        alarm = _locked(alarm_id)
        outcome.error = _authorized(alarm, user=user, actor=actor, act="accepted", alarm_id=alarm_id)
        if outcome.error is None:
            assert alarm is not None
            outcome.error = _oncall_refusal(alarm, user=user, actor=actor, act="accepted", verb="accept")
            if outcome.error is None and alarm.responsible_id is not None:
                outcome.error = _deny(
                    alarm,
                    actor=actor,
                    act="accepted",
                    reason="already_accepted",
                    code="already_accepted",
                    detail=f"{alarm.responsible.username if alarm.responsible else 'someone'} already accepted it.",
                )
            elif outcome.error is None:
                now = timezone.now()
                alarm.responsible = user
                alarm.accepted_at = now
                alarm.save(update_fields=["responsible", "accepted_at"])
                _record(alarm, frm=alarm.state, cause="accepted", actor=actor, now=now)
                outcome.alarm = alarm
    return _finish(outcome)


def alarm_decline(*, alarm_id: int, user: Any, actor: Actor, reason: str = "") -> Alarm:
    """An on-call user declines: the alarm escalates one level further at once."""
    reason = reason.strip()[:300]
    with transaction.atomic():
        outcome = _Outcome()
        alarm = _locked(alarm_id)
        outcome.error = _authorized(alarm, user=user, actor=actor, act="declined", alarm_id=alarm_id)
        if outcome.error is None:
            assert alarm is not None
            outcome.error = _oncall_refusal(alarm, user=user, actor=actor, act="declined", verb="decline")
            if outcome.error is None:
                now = timezone.now()
                if alarm.responsible_id == user.pk:
                    alarm.responsible, alarm.accepted_at = None, None
                _escalate(alarm, now=now, actor=actor, cause="declined", detail={"reason": reason})
                outcome.alarm = alarm
    return _finish(outcome)


def patient_pause(
    *,
    patient: Patient,
    user: Any,
    actor: Actor,
    seconds: int,
    priority: str = Priority.MEDIUM,
    reason: str = "",
) -> AlarmPause:
    """Pause raising alarms of `priority` or lower for the patient, at most the ward's max pause."""
    rule = rule_current_ward(patient.ward)
    with transaction.atomic():
        error: AlarmError | None = None
        if not user_can(user, "acknowledge_alarms"):
            error = AlarmForbidden("Your role may not pause alarms.")
        elif priority not in Priority.values:
            error = AlarmError("priority must be high, medium or low.", code="invalid")
        elif not 1 <= seconds <= rule.max_pause_s:
            error = AlarmError(f"A pause lasts 1 to {rule.max_pause_s} s on this ward.", code="pause_too_long")
        if error is not None:
            audit_record(
                actor=actor,
                action="alarm.paused",
                outcome="denied",
                subject=patient.pseudonym,
                detail={"reason": error.code, "seconds": seconds},
            )
            pause = None
        else:
            now = timezone.now()
            AlarmPause.objects.filter(patient=patient, ended_at__isnull=True, until__gt=now).update(ended_at=now)
            pause = AlarmPause.objects.create(
                patient=patient,
                started_at=now,
                until=now + dt.timedelta(seconds=seconds),
                priority=priority,
                paused_by=user,
                reason=reason[:300],
            )
            audit_record(
                actor=actor,
                action="alarm.paused",
                subject=patient.pseudonym,
                detail={"seconds": seconds, "priority": priority, "reason": reason[:300]},
            )
            events.pause_publish(pause=pause, by=actor.username)
    if error is not None:
        raise error
    assert pause is not None
    return pause


# --- rules -------------------------------------------------------------------------------------

# (minimum, maximum) per field: wide enough for any ward, narrow enough to refuse nonsense.
RULE_LIMITS: dict[str, tuple[float, float]] = {
    "low_threshold": (1, 99),
    "low_delay_s": (0, 3600),
    "critical_threshold": (1, 99),
    "critical_delay_s": (0, 3600),
    "rapid_fall_drop": (1, 100),
    "rapid_fall_window_s": (5, 3600),
    "quality_level": (0, 1),
    "quality_delay_s": (0, 3600),
    "no_data_delay_s": (10, 86400),
    "clear_margin": (0, 50),
    "clear_delay_s": (0, 3600),
    "realert_interval_s": (30, 86400),
    "suppression_window_s": (0, 3600),
    "escalation_delay_s": (10, 86400),
    "max_pause_s": (10, 3600),
}


def rule_validate(values: dict[str, Any]) -> tuple[dict[str, float | int], dict[str, str]]:
    """Coerce and check a complete set of rule values; returns (clean, errors by field)."""
    clean: dict[str, float | int] = {}
    errors: dict[str, str] = {}
    for name in RULE_FIELDS:
        raw = values.get(name)
        as_int = isinstance(RULE_DEFAULTS[name], int)
        try:
            number = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            errors[name] = "a number is required"
            continue
        if number != number or (as_int and not number.is_integer()):
            errors[name] = "a whole number of seconds is required" if as_int else "a number is required"
            continue
        low, high = RULE_LIMITS[name]
        if not low <= number <= high:
            errors[name] = f"must be between {low:g} and {high:g}"
            continue
        clean[name] = int(number) if as_int else number
    if not errors and clean["critical_threshold"] >= clean["low_threshold"]:
        errors["critical_threshold"] = "must be below the low threshold"
    if not errors and clean["low_threshold"] + clean["clear_margin"] > 100:
        errors["clear_margin"] = "threshold plus margin must stay within 100 %"
    if not errors and clean["rapid_fall_drop"] - clean["clear_margin"] <= 0:
        errors["rapid_fall_drop"] = "must be larger than the clear margin"
    return clean, errors


def _next_version(*, ward: Ward, patient: Patient | None) -> int:
    scope = (
        AlarmRule.objects.filter(patient=patient)
        if patient
        else AlarmRule.objects.filter(ward=ward, patient__isnull=True)
    )
    last = scope.order_by("-version").values_list("version", flat=True).first()
    return (last or 0) + 1


@transaction.atomic
def rule_ensure_ward_default(*, ward: Ward) -> AlarmRule:
    """A ward without a rule gets the shipped defaults as version 1 (wards created after the
    migration that seeded existing ones). Not an audited act: nobody chose anything; the row
    itself says it is the shipped default, and every later change is audited."""
    Ward.objects.select_for_update().filter(pk=ward.pk).first()
    current = rule_ward_latest(ward)
    if current is not None:
        return current
    rule = AlarmRule.objects.create(
        ward=ward,
        version=1,
        created_at=timezone.now(),
        created_by=SYSTEM.username,
        reason="shipped defaults",
        **RULE_DEFAULTS,
    )
    return rule


def rule_current_ward(ward: Ward) -> AlarmRule:
    """The ward's current rule; a ward created after the migration gets the shipped defaults first."""
    return rule_ward_latest(ward) or rule_ensure_ward_default(ward=ward)


def rule_effective(patient: Patient) -> AlarmRule:
    """The patient's override if one is in force, else the ward's current rule (written if needed)."""
    return rule_override(patient) or rule_current_ward(patient.ward)


def rule_update(
    *,
    ward: Ward,
    actor: Actor,
    user: Any,
    values: dict[str, Any],
    patient: Patient | None = None,
    reason: str = "",
) -> AlarmRule:
    """Write a new version of a ward's rule or of a patient's override (administrators only).
    Invalid values are refused field by field; refusals are audited."""
    clean, errors = rule_validate(values)
    if not user_can(user, "edit_alarm_rules"):
        errors = {"__all__": "only administrators edit alarm rules"}
    subject = patient.pseudonym if patient else ward.code
    with transaction.atomic():
        if errors:
            audit_record(
                actor=actor, action="alarm_rule.updated", outcome="denied", subject=subject, detail={"errors": errors}
            )
            rule = None
        else:
            Ward.objects.select_for_update().filter(pk=ward.pk).first()
            previous = (
                rule_current_ward(ward)
                if patient is None
                else (AlarmRule.objects.filter(patient=patient).order_by("-version").first() or rule_current_ward(ward))
            )
            version = _next_version(ward=ward, patient=patient)
            rule = AlarmRule.objects.create(
                ward=ward,
                patient=patient,
                version=version,
                created_at=timezone.now(),
                created_by=actor.username,
                reason=reason[:500],
                **clean,
            )
            changes = {k: [previous.values()[k], v] for k, v in clean.items() if previous.values()[k] != v}
            audit_record(
                actor=actor,
                action="alarm_rule.updated",
                subject=subject,
                detail={
                    "version": version,
                    "scope": "patient" if patient else "ward",
                    "changes": changes,
                    "reason": reason[:500],
                },
            )
    if rule is None:
        raise RuleInvalid(errors)
    return rule


@transaction.atomic
def rule_override_remove(*, patient: Patient, actor: Actor, user: Any) -> AlarmRule | None:
    """Return a patient to the ward rule: a retired override version, so history stays intact."""
    current = AlarmRule.objects.filter(patient=patient).order_by("-version").first()
    if not user_can(user, "edit_alarm_rules") or current is None or current.retired:
        audit_record(actor=actor, action="alarm_rule.override_removed", outcome="denied", subject=patient.pseudonym)
        return None
    rule = AlarmRule.objects.create(
        ward=patient.ward,
        patient=patient,
        version=current.version + 1,
        retired=True,
        created_at=timezone.now(),
        created_by=actor.username,
        reason="override removed",
        **current.values(),
    )
    audit_record(
        actor=actor, action="alarm_rule.override_removed", subject=patient.pseudonym, detail={"version": rule.version}
    )
    return rule
