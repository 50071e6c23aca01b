"""Reads of alarms, rules and pauses, and who may see which alarm.

Alarm visibility builds on audit/access/policy.py (`user_can`, `ward_scope`): ward care roles
(clinician, on-call) see alarms of their wards; an alarm escalated to the on-call role is shown
to every on-call user (that is what escalation means); administrators, whose ward scope is every
ward, see all of them. `alarm_console` and `alarm_visible` raise the refusal (config.refusal)
when the user may not; the caller's answer audits it. Seeing an alarm is not reading the
patient's telemetry: `alarm_explanation` shows sample values only to users who may read the
patient's series. The alarm history (`alarm_history`, alerts/history/views.py) is read through the
same scope. `alarm_read` is the one audited read of an alarm (the API's detail, the explain page),
as audit.access.policy's `patient_read` is for a patient's data.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Prefetch, Q, QuerySet, prefetch_related_objects

from alerts.errors import AlarmNotFound
from alerts.lifecycle import AlarmView
from alerts.models import RULE_DEFAULTS, Alarm, AlarmPause, AlarmRule, AlarmTransition, Delivery, OnCallShift
from alerts.vocabulary import KIND_METRIC, KIND_PRIORITY, OPEN_STATES, Category, Kind, State
from audit.access.policy import (
    ADMIN,
    CLINICIAN,
    ONCALL,
    AccessDecision,
    WardScope,
    access_refusal,
    patient_access,
    refusal_reason,
    user_can,
    user_role,
    ward_scope,
)
from audit.trail import Actor, audit_record
from config.live import iso
from config.refusal import Refusal
from config.users import StaffUser
from telemetry.models import Patient, Ward
from telemetry.units import METRICS

CONSOLE_ROLES = (CLINICIAN, ONCALL, ADMIN)
_RELATED = ("patient", "ward", "rule", "acknowledged_by", "responsible")


@dataclass(frozen=True)
class AlarmScope:
    """What part of the alarm stream a user may see; checked per frame by the console socket."""

    role: str
    wards: WardScope
    escalated_everywhere: bool

    def allows(self, *, ward_id: int, escalation_level: int = 0) -> bool:
        if self.wards.covers(ward_id):
            return True
        return self.escalated_everywhere and escalation_level >= 1

    def allows_frame(self, *, ward_code: str, escalation_level: int = 0) -> bool:
        """`allows` for a live frame, which names its ward by code."""
        if self.wards.covers_code(ward_code):
            return True
        return self.escalated_everywhere and escalation_level >= 1

    def alarms_q(self) -> Q:
        visible = self.wards.q("ward_id")
        return visible | Q(escalation_level__gte=1) if self.escalated_everywhere else visible


def alarm_scope(user: StaffUser) -> AlarmScope | None:
    """None when the user may not use the alarm console at all."""
    if not (user_can(user, "acknowledge_alarms") or user_can(user, "edit_alarm_rules")):
        return None
    role = user_role(user)
    if role not in CONSOLE_ROLES:
        return None
    return AlarmScope(role=role, wards=ward_scope(user), escalated_everywhere=role == ONCALL)


def alarm_console(user: StaffUser, *, action: str, subject: str = "") -> AlarmScope:
    """The user's alarm scope, or the refusal of `action` (403 even without a session: the alarm
    API has always answered so)."""
    scope = alarm_scope(user)
    if scope is None:
        raise access_refusal(
            user, action=action, detail="Your role has no alarm console.", subject=subject[:40], signed_out_status=403
        )
    return scope


def alarm_access(user: StaffUser, alarm: Alarm) -> AccessDecision:
    scope = alarm_scope(user)
    if scope is None:
        return AccessDecision(False, refusal_reason(user))
    if scope.allows(ward_id=alarm.ward_id, escalation_level=alarm.escalation_level):
        return AccessDecision(True, "admin" if scope.wards.all_wards else "ward")
    return AccessDecision(False, "other_ward")


def alarm_subject(alarm_id: int) -> str:
    """The patient an alarm is about, so refusals name the subject like allowed acts do."""
    return Alarm.objects.filter(pk=alarm_id).values_list("patient__pseudonym", flat=True).first() or ""


def alarm_visible(user: StaffUser, *, alarm_id: int, action: str) -> Alarm:
    """The alarm, if the user may see it; else the refusal of `action` (404 for no such alarm)."""
    alarm = Alarm.objects.select_related(*_RELATED).filter(pk=alarm_id).first()
    subject = alarm.patient.pseudonym if alarm is not None else ""
    alarm_console(user, action=action, subject=subject)
    if alarm is None:
        raise AlarmNotFound("No such alarm.", action=action, reason="unknown", facts={"alarm": alarm_id})
    decision = alarm_access(user, alarm)
    if not decision.allowed:
        raise Refusal(
            action=action,
            reason=decision.reason,
            detail="You may not see this alarm.",
            subject=subject,
            facts={"alarm": alarm.pk},
        )
    return alarm


def alarm_patient(scope: AlarmScope, *, pseudonym: str, action: str) -> Patient:
    """A monitored patient on one of the scope's wards (alarms are paused per patient), or the
    refusal of `action`: unknown and other wards' patients answer alike."""
    patient = Patient.objects.select_related("ward").filter(pseudonym=pseudonym, discharged_at__isnull=True).first()
    if patient is None or not scope.wards.covers(patient.ward_id):
        raise AlarmNotFound("No such patient on your wards.", action=action, reason="not_found", subject=pseudonym)
    return patient


def alarms_visible_to(user: StaffUser) -> QuerySet[Alarm]:
    scope = alarm_scope(user)
    base = Alarm.objects.select_related(*_RELATED)
    if scope is None:
        return base.none()
    return base.filter(scope.alarms_q())


# What an explanation keeps for a user who may see the alarm but not the patient's series: the
# rule, thresholds, times and provenance. An allow-list, so a value added to the engine's
# explanation later stays hidden until someone decides it is not telemetry.
_EXPLAIN_WITHOUT_VALUES = frozenset(
    {
        "kind",
        "metric",
        "unit",
        "physiological",
        "onset",
        "at",
        "threshold",
        "delay_s",
        "window_s",
        "clear_margin",
        "last_sample_time",
        "silent_s",
        "devices",
        "device",
        "firmware",
        "calibration",
        "rule",
    }
)
_SAMPLE_WITHOUT_VALUES = frozenset({"t", "seq", "device_id"})


@dataclass(frozen=True)
class AlarmExplanation:
    explain: dict[str, Any]
    values_shown: bool


def alarm_explanation(*, user: StaffUser, alarm: Alarm) -> AlarmExplanation:
    """An alarm's explanation as `user` may see it. Seeing an alarm (escalated to on-call, or an
    administrator's all-ward console) is not reading the patient's telemetry: the triggering
    sample values and the signal-quality figures computed from them are kept for users whom
    `patient_access` lets read that patient's series."""
    if patient_access(user, alarm.patient).allowed:
        return AlarmExplanation(alarm.explain, values_shown=True)
    return AlarmExplanation(explain_without_values(alarm.explain), values_shown=False)


def alarm_read(*, user: Any, actor: Actor, alarm_id: int, action: str) -> tuple[Alarm, AlarmExplanation]:
    """The alarm and its explanation as `user` may see them, the read audited as `action` with
    whether sample values were shown (like `patient_read`); else the refusal of `action`."""
    alarm = alarm_visible(user, alarm_id=alarm_id, action=action)
    explanation = alarm_explanation(user=user, alarm=alarm)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action=action,
            subject=alarm.patient.pseudonym,
            detail={"alarm": alarm.pk, "values": explanation.values_shown},
        )
    return alarm, explanation


def explain_without_values(explain: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in explain.items() if key in _EXPLAIN_WITHOUT_VALUES}
    out["samples"] = [
        {key: value for key, value in sample.items() if key in _SAMPLE_WITHOUT_VALUES}
        for sample in explain.get("samples", [])
    ]
    if isinstance(quality := explain.get("signal_quality"), dict):
        out["signal_quality"] = {"level": quality.get("level")}
    if isinstance(first := explain.get("first"), dict):
        out["first"] = explain_without_values(first)
    out["values_withheld"] = True
    return out


def alarms_open_sorted(qs: QuerySet[Alarm]) -> QuerySet[Alarm]:
    """Console order: priority first, then the oldest (longest waiting) first."""
    return qs.exclude(state=State.RESOLVED).order_by("-priority_rank", "raised_at", "id")


def alarms_for_patient(*, patient_id: int, start: dt.datetime, end: dt.datetime) -> QuerySet[Alarm]:
    """Alarm periods overlapping [start, end) for the chart (alarm shading)."""
    return (
        Alarm.objects.filter(patient_id=patient_id, condition_started_at__lt=end)
        .filter(Q(resolved_at__isnull=True) | Q(resolved_at__gte=start))
        .select_related(*_RELATED)
        .order_by("condition_started_at")
    )


def rule_ward_latest(ward: Ward) -> AlarmRule | None:
    """The ward's newest rule version; None for a ward created after the migration that seeded the
    rules, until alerts.services.rule_current_ward writes its shipped defaults."""
    return AlarmRule.objects.filter(ward=ward, patient__isnull=True).order_by("-version").first()


def rule_override(patient: Patient) -> AlarmRule | None:
    rule = AlarmRule.objects.filter(patient=patient).order_by("-version").first()
    return None if rule is None or rule.retired else rule


def rule_in_force(patient: Patient) -> AlarmRule:
    """The rule whose thresholds apply to the patient, read only: a ward without a rule yet has the
    shipped defaults (unsaved here; the engine or the next rule act writes them as version 1)."""
    return rule_override(patient) or rule_ward_latest(patient.ward) or AlarmRule(ward=patient.ward, **RULE_DEFAULTS)


def pause_active(patient_id: int, now: dt.datetime) -> AlarmPause | None:
    return (
        AlarmPause.objects.filter(patient_id=patient_id, ended_at__isnull=True, until__gt=now, started_at__lte=now)
        .order_by("-until")
        .first()
    )


_PAUSE_PRIORITIES_SQL = (
    f"SELECT patient_id, priority FROM {AlarmPause._meta.db_table} "
    "WHERE ended_at IS NULL AND until > %s AND started_at <= %s ORDER BY until"
)


def pause_priorities_active(now: dt.datetime) -> dict[int, str]:
    """The priority each patient's active pause holds back (the latest-ending pause when several),
    as pauses_active reads it; plain SQL, for the engine's timers."""
    with connection.cursor() as cursor:
        cursor.execute(_PAUSE_PRIORITIES_SQL, [now, now])
        return dict(cursor.fetchall())


def pauses_active(now: dt.datetime) -> dict[int, AlarmPause]:
    out: dict[int, AlarmPause] = {}
    for pause in AlarmPause.objects.filter(ended_at__isnull=True, until__gt=now, started_at__lte=now).order_by("until"):
        out[pause.patient_id] = pause
    return out


# --- the alarm engine's reads (alerts/engine.py) ------------------------------------------------


@dataclass(frozen=True)
class OpenAlarm:
    """An open alarm as the engine's timers read it on every loop: what finds its rule and orders
    the timers, and the lifecycle view; only these columns are fetched."""

    pk: int
    patient_id: int
    kind: str
    rule_id: int
    priority_rank: int
    condition_started_at: dt.datetime
    view: AlarmView

    @property
    def condition_present(self) -> bool:
        return self.view.condition_present


_OPEN_ALARM_KEYS = ("pk", "patient_id", "kind", "rule_id", "priority_rank", "condition_started_at")
_VIEW_FIELDS = tuple(f.name for f in fields(AlarmView))


def _open_timers_sql() -> str:
    by_name: dict[str, str] = {}
    for field in Alarm._meta.concrete_fields:
        assert field.column is not None  # concrete fields have columns
        by_name[field.name] = by_name[field.attname] = field.column
    by_name["pk"] = by_name[Alarm._meta.pk.name]
    columns = ", ".join(by_name[name] for name in (*_OPEN_ALARM_KEYS, *_VIEW_FIELDS))
    return f"SELECT {columns} FROM {Alarm._meta.db_table} WHERE state <> %s"


# Plain SQL (the columns of values_list, nothing to convert: text, booleans, integers and
# timestamptz come back as the ORM gives them): the timers read it five times a second, and
# compiling the query cost the engine more than running it (docs/benchmarks.md).
_OPEN_TIMERS_SQL = _open_timers_sql()


def alarms_open_timers() -> list[OpenAlarm]:
    with connection.cursor() as cursor:
        cursor.execute(_OPEN_TIMERS_SQL, [State.RESOLVED.value])
        return [_open_alarm(row) for row in cursor.fetchall()]


def _open_alarm(row: tuple[Any, ...]) -> OpenAlarm:
    pk, patient_id, kind, rule_id, priority_rank, started, *view = row
    return OpenAlarm(pk, patient_id, kind, rule_id, priority_rank, started, AlarmView(*view))


def alarm_open(*, patient_id: int, kind: str) -> Alarm | None:
    """The open alarm of a patient and kind (at most one: a partial unique index)."""
    return Alarm.objects.filter(patient_id=patient_id, kind=kind).exclude(state=State.RESOLVED).order_by().first()


def alarms_open_of(*, patient_ids: Iterable[int], kinds: Iterable[str]) -> QuerySet[Alarm]:
    return Alarm.objects.filter(patient_id__in=list(patient_ids), kind__in=list(kinds)).exclude(state=State.RESOLVED)


def alarm_episode_exists(*, patient_id: int, kind: str, onset: dt.datetime) -> bool:
    """Whether the episode that began at `onset` already had its alarm (an episode is named by its
    onset sample time, so a replay never raises twice)."""
    return Alarm.objects.filter(patient_id=patient_id, kind=kind, condition_started_at=onset).exists()


def rules_mark() -> tuple[Any, Any]:
    """Changes whenever a rule version is written (versions are only ever added). Plain SQL: the
    engine reads it on every batch, and the ORM's compiling cost more than the query."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(id), count(id) FROM {AlarmRule._meta.db_table}")
        mark: tuple[Any, Any] = cursor.fetchone()
    return mark


def rules_in_version_order() -> QuerySet[AlarmRule]:
    return AlarmRule.objects.order_by("version")


def rules_by_id(rule_ids: Iterable[int]) -> QuerySet[AlarmRule]:
    return AlarmRule.objects.filter(pk__in=list(rule_ids))


# --- alarm-fatigue figures ---------------------------------------------------------------------


@dataclass(frozen=True)
class FatigueRow:
    scope: str  # "ward" or "patient"
    ward: str
    patient: str
    alarms: int
    patient_days: float
    alarms_per_patient_day: float | None
    share_acknowledged: float | None
    median_seconds_to_acknowledge: float | None
    escalations: int
    technical_share: float | None
    physiological_share: float | None

    def as_row(self) -> list[Any]:
        return [
            self.scope,
            self.ward,
            self.patient,
            self.alarms,
            round(self.patient_days, 3),
            _round(self.alarms_per_patient_day),
            _round(self.share_acknowledged),
            _round(self.median_seconds_to_acknowledge, 1),
            self.escalations,
            _round(self.technical_share),
            _round(self.physiological_share),
        ]


FATIGUE_COLUMNS = [
    "scope",
    "ward",
    "patient",
    "alarms",
    "patient_days",
    "alarms_per_patient_day",
    "share_acknowledged",
    "median_seconds_to_acknowledge",
    "escalations",
    "technical_share",
    "physiological_share",
]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _figures(scope: str, ward: str, patient: str, alarms: list[Alarm], days: float) -> FatigueRow:
    n = len(alarms)
    acked = [a for a in alarms if a.first_acknowledged_at is not None]
    waits = [(a.first_acknowledged_at - a.raised_at).total_seconds() for a in acked if a.first_acknowledged_at]
    technical = sum(1 for a in alarms if a.category == Category.TECHNICAL)
    return FatigueRow(
        scope=scope,
        ward=ward,
        patient=patient,
        alarms=n,
        patient_days=days,
        alarms_per_patient_day=n / days if days > 0 else None,
        share_acknowledged=len(acked) / n if n else None,
        median_seconds_to_acknowledge=statistics.median(waits) if waits else None,
        escalations=sum(1 for a in alarms if a.ever_escalated),
        technical_share=technical / n if n else None,
        physiological_share=(n - technical) / n if n else None,
    )


def _patient_days(patient: Patient, start: dt.datetime, end: dt.datetime) -> float:
    begin = max(patient.admitted_at, start)
    finish = min(patient.discharged_at or end, end)
    return max((finish - begin).total_seconds(), 0.0) / 86400


def alarm_fatigue(*, wards: WardScope, start: dt.datetime, end: dt.datetime) -> list[FatigueRow]:
    """Per ward of the scope, then per patient of it, over [start, end): alarms raised in the span;
    patient-days are monitored time (admission to discharge) inside the span."""
    in_scope = Ward.objects.filter(wards.q("id")).order_by("code")
    rows: list[FatigueRow] = []
    for ward in in_scope:
        alarms = list(
            Alarm.objects.filter(ward=ward, raised_at__gte=start, raised_at__lt=end).select_related("patient")
        )
        patients = (
            Patient.objects.filter(Q(ward=ward) | Q(alarms__ward=ward))
            .filter(Q(discharged_at__isnull=True) | Q(discharged_at__gte=start), admitted_at__lt=end)
            .distinct()
            .order_by("pseudonym")
        )
        days = {p.pk: _patient_days(p, start, end) for p in patients}
        rows.append(_figures("ward", ward.code, "", alarms, sum(days.values())))
        for p in patients:
            mine = [a for a in alarms if a.patient_id == p.pk]
            rows.append(_figures("patient", ward.code, p.pseudonym, mine, days[p.pk]))
    return rows


# --- chart and ward-overview seams (dashboard/selectors.py asks these) -------------------------


def patient_alarm_badges(*, patient_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The most severe open alarm per patient (then the longest waiting), with the open count."""
    open_alarms = (
        Alarm.objects.filter(patient_id__in=patient_ids)
        .exclude(state=State.RESOLVED)
        .order_by("patient_id", "-priority_rank", "raised_at")
        .values_list("patient_id", "priority", "state", "kind", "raised_at")
    )
    badges: dict[int, dict[str, Any]] = {}
    for pid, priority, state, kind, raised_at in open_alarms:
        if pid in badges:
            badges[pid]["count"] += 1
            continue
        badges[pid] = {
            "priority": priority,
            "state": state,  # the IEC 60601-1-8 state, as the alarms API names it
            "count": 1,
            "label": str(Kind(kind).label),
            "since": iso(raised_at),
        }
    return badges


# The value bands the chart shades per metric: each below-threshold kind, from the next more
# urgent threshold (or zero) up to its own, most urgent first.
_BAND_FIELDS: dict[str, tuple[tuple[Kind, str], ...]] = {
    "tissue_o2": ((Kind.CRITICAL_LOW, "critical_threshold"), (Kind.LOW, "low_threshold")),
    "spo2": ((Kind.SPO2_CRITICAL_LOW, "spo2_critical_threshold"), (Kind.SPO2_LOW, "spo2_low_threshold")),
    "battery": ((Kind.BATTERY_LOW, "battery_low_threshold"),),
}


def rule_bands(rule: AlarmRule) -> dict[str, list[dict[str, Any]]]:
    """The rule's thresholds as value bands, by metric: {"label", "low", "high", "priority"}."""
    bands: dict[str, list[dict[str, Any]]] = {}
    for metric, kinds in _BAND_FIELDS.items():
        low, rows = 0.0, []
        for kind, field in kinds:
            high = float(getattr(rule, field))
            label = f"{kind.label} < {high:g} {METRICS[metric].symbol}"
            rows.append({"label": label, "low": low, "high": high, "priority": str(KIND_PRIORITY[kind])})
            low = high
        bands[metric] = rows
    return bands


def patient_alarm_overlay(*, patient_id: int, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Threshold bands of the patient's effective rule (`thresholds`: tissue O2's, as the chart
    API has always given them; `bands`: every charted metric's), alarm periods overlapping
    [start, end) (condition onset to clearance, sample time, with the metric they are about), and
    the open alarms."""
    patient = Patient.objects.select_related("ward").get(pk=patient_id)
    bands = rule_bands(rule_in_force(patient))
    periods, current = [], []
    for alarm in alarms_for_patient(patient_id=patient_id, start=start, end=end):
        label = str(Kind(alarm.kind).label)
        ended = alarm.condition_cleared_at if not alarm.condition_present else None
        periods.append(
            {"start": iso(alarm.condition_started_at), "end": iso(ended) if ended else None,
             "priority": alarm.priority, "label": label, "metric": KIND_METRIC.get(alarm.kind)}
        )  # fmt: skip
        if alarm.is_open:
            current.append(
                {"id": alarm.pk, "priority": alarm.priority, "state": alarm.state, "label": label,
                 "since": iso(alarm.raised_at)}
            )  # fmt: skip
    return {"thresholds": bands["tissue_o2"], "bands": bands, "periods": periods, "current": current}


# --- alarm history (alerts/history/views.py) ---------------------------------------------------

HISTORY_STATES: dict[str, tuple[str, ...]] = {
    "all": tuple(State),
    "open": OPEN_STATES,
    **{state.value: (state,) for state in State},
}
# The transitions a history row is built from: who acknowledged and accepted, how far it reached.
_HISTORY_CAUSES = ("acknowledged", "accepted", "escalated", "declined")


@dataclass(frozen=True)
class HistoryFilters:
    """Which alarms a history shows: raised in [start, end), narrowed by ward, patient, priority,
    kind and state. Filters only narrow what the viewer's alarm scope lets them see."""

    start: dt.datetime
    end: dt.datetime
    ward: str = ""
    patient: str = ""
    priorities: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    state: str = "all"

    def as_detail(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "ward": self.ward,
            "patient": self.patient,
            "priorities": list(self.priorities),
            "kinds": list(self.kinds),
            "state": self.state,
        }


def alarm_history(*, scope: AlarmScope, filters: HistoryFilters) -> QuerySet[Alarm]:
    """The alarms of the history, newest first."""
    qs = Alarm.objects.filter(scope.alarms_q(), raised_at__gte=filters.start, raised_at__lt=filters.end)
    if filters.ward:
        qs = qs.filter(ward__code=filters.ward)
    if filters.patient:
        qs = qs.filter(patient__pseudonym=filters.patient)
    if filters.priorities:
        qs = qs.filter(priority__in=filters.priorities)
    if filters.kinds:
        qs = qs.filter(kind__in=filters.kinds)
    if filters.state != "all":
        qs = qs.filter(state__in=HISTORY_STATES[filters.state])
    return qs.select_related(*_RELATED).order_by("-raised_at", "-id")


def history_patient(scope: AlarmScope, *, pseudonym: str, action: str) -> Patient:
    """A patient whose alarm history the scope covers: on one of its wards now, or with an alarm
    it sees (raised on a ward the patient has left, or escalated). Unknown and other patients are
    refused alike (404), so the answer says nothing about who exists."""
    patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
    if patient is not None and (
        scope.wards.covers(patient.ward_id) or Alarm.objects.filter(scope.alarms_q(), patient=patient).exists()
    ):
        return patient
    raise AlarmNotFound("No such patient on your wards.", action=action, reason="not_found", subject=pseudonym[:40])


@dataclass(frozen=True)
class Acknowledgement:
    by: str
    at: dt.datetime
    note: str


@dataclass(frozen=True)
class Escalation:
    level: int
    at: dt.datetime
    cause: str  # escalated (timed) | declined (by the on-call user who declined)
    by: str


@dataclass(frozen=True)
class Reached:
    """One secondary notification of the alarm (the outbox row): by which channel, to whom, how it went."""

    channel: str
    event: str
    level: int
    recipient: str  # the staff member's username, "" for a webhook
    state: str
    attempts: int
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class HistoryRow:
    """One alarm as the history shows it: what, when, who responded and how fast, how far it reached."""

    alarm: Alarm
    acknowledgements: tuple[Acknowledgement, ...]
    accepted_by: str | None
    accepted_at: dt.datetime | None
    escalations: tuple[Escalation, ...]
    deliveries: tuple[Reached, ...] = ()

    @property
    def seconds_to_acknowledge(self) -> float | None:
        first = self.alarm.first_acknowledged_at
        return None if first is None else round((first - self.alarm.raised_at).total_seconds(), 1)

    @property
    def seconds_to_accept(self) -> float | None:
        return None if self.accepted_at is None else round((self.accepted_at - self.alarm.raised_at).total_seconds(), 1)

    @property
    def highest_level(self) -> int:
        return max((e.level for e in self.escalations), default=0)


def _history_row(alarm: Alarm) -> HistoryRow:
    acks: list[Acknowledgement] = []
    escalations: list[Escalation] = []
    accepted: tuple[str, dt.datetime] | None = None
    for t in alarm.transitions.all():  # prefetched: the history causes, in time order
        if t.cause == "acknowledged":
            acks.append(Acknowledgement(t.actor_username, t.at, str(t.detail.get("note", ""))))
        elif t.cause == "accepted" and accepted is None:
            accepted = (t.actor_username, t.at)
        elif t.cause in ("escalated", "declined"):
            escalations.append(Escalation(int(t.detail.get("level", 0)), t.at, t.cause, t.actor_username))
    deliveries = tuple(
        Reached(
            d.channel, d.event, d.level, d.recipient.username if d.recipient else "", d.state, d.attempts, d.sent_at
        )
        for d in alarm.deliveries.all()  # prefetched, in order
    )
    return HistoryRow(
        alarm=alarm,
        acknowledgements=tuple(acks),
        accepted_by=accepted[0] if accepted else None,
        accepted_at=accepted[1] if accepted else None,
        escalations=tuple(escalations),
        deliveries=deliveries,
    )


def _history_transitions() -> Prefetch[str]:
    return Prefetch(
        "transitions", queryset=AlarmTransition.objects.filter(cause__in=_HISTORY_CAUSES).order_by("at", "id")
    )


def _history_deliveries() -> Prefetch[str]:
    return Prefetch("deliveries", queryset=Delivery.objects.select_related("recipient").order_by("id"))


def history_rows(alarms: Iterable[Alarm]) -> list[HistoryRow]:
    """History rows of a page of alarms (three queries: the alarms, their transitions, deliveries)."""
    page = list(alarms)
    prefetch_related_objects(page, _history_transitions(), _history_deliveries())
    return [_history_row(alarm) for alarm in page]


def history_rows_all(alarms: QuerySet[Alarm]) -> Iterator[HistoryRow]:
    """Every row of a history, read in chunks (an export of a long span stays small in memory)."""
    for alarm in alarms.prefetch_related(_history_transitions(), _history_deliveries()).iterator(chunk_size=500):
        yield _history_row(alarm)


def history_patients(alarms: QuerySet[Alarm], *, limit: int) -> list[str]:
    """The pseudonyms a history covers (for its audit event), at most `limit`."""
    return list(alarms.order_by().values_list("patient__pseudonym", flat=True).distinct()[:limit])


# --- on-call roster ----------------------------------------------------------------------------

# Roles a shift may be given to: those that act on alarms of their wards.
ROSTER_ROLES = (ONCALL, CLINICIAN)


def shifts_now(*, now: dt.datetime, wards: WardScope | None = None) -> list[OnCallShift]:
    """Shifts in progress (handovers included: both people are on call), with user and ward."""
    qs = OnCallShift.objects.select_related("user", "ward").filter(
        starts_at__lte=now, ends_at__gt=now, user__is_active=True
    )
    if wards is not None:
        qs = qs.filter(wards.q("ward_id"))
    return list(qs.order_by("ward__code", "starts_at", "id"))


def roster_oncall(*, ward_id: int, now: dt.datetime) -> list[Any]:
    """The users the roster has on call for the ward now (empty when nobody is rostered)."""
    users: list[Any] = []
    for shift in (
        OnCallShift.objects.select_related("user")
        .filter(ward_id=ward_id, starts_at__lte=now, ends_at__gt=now, user__is_active=True)
        .order_by("starts_at", "id")
    ):
        if shift.user not in users:
            users.append(shift.user)
    return users


def shifts_of_ward(*, ward: Ward, start: dt.datetime, end: dt.datetime) -> list[OnCallShift]:
    """The ward's shifts that overlap [start, end), in order."""
    qs = OnCallShift.objects.select_related("user").filter(ward=ward, ends_at__gt=start, starts_at__lt=end)
    return list(qs.order_by("starts_at", "id"))


def roster_candidates(ward: Ward) -> list[Any]:
    """Active on-call and clinician staff of the ward: who may be put on its roster."""
    users = get_user_model().objects.filter(is_active=True, groups__name__in=ROSTER_ROLES, staff__wards=ward)
    return list(users.distinct().order_by("username"))


# --- notification outbox -----------------------------------------------------------------------


def alarm_deliveries(alarm: Alarm) -> list[Delivery]:
    """The alarm's outbox rows with their attempt logs, oldest first."""
    return list(alarm.deliveries.select_related("recipient").prefetch_related("log").order_by("id"))
