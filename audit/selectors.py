"""Reads of the audit trail for the compliance views and API."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from audit.models import AuditEvent

# Actions that read or reveal patient data (for the disclosure accounting).
READ_ACTIONS_LABELS = {
    # What the dashboard records when a patient's data is read (dashboard/views.py, api.py,
    # consumers.py):
    "chart.view": "Viewed the patient chart",
    "series.read": "Read the patient's telemetry (history API)",
    "annotations.read": "Read the patient's chart annotations",
    "live.subscribe": "Watched the patient's live telemetry",
    # The ward workflow's confirmation step (dashboard/flow/): ward, bed and devices.
    "ward.flow.confirm": "Viewed the patient's bed and devices before a ward act",
    # The FHIR API's reads and bulk export (dashboard/fhir/views.py, exports.py):
    "patient.fhir.read": "Read the patient's FHIR Patient resource",
    "patient.fhir.observations": "Read the patient's telemetry (FHIR Observation search)",
    "patient.fhir.observation": "Read one of the patient's FHIR Observations",
    "patient.fhir.provenance": "Read the provenance of the patient's FHIR Observation",
    "patient.fhir.export": "Exported the patient's data (FHIR bulk export)",
    # Older or synthetic names of the same reads, kept so earlier events stay accounted for:
    "patient.chart": "Viewed the patient chart",
    "patient.series": "Read the patient's telemetry (history API)",
    "patient.annotations": "Read the patient's chart annotations",
    "patient.live": "Watched the patient's live telemetry",
    "patient.export": "Exported the patient's data",
    "alarm.history_exported": "Exported the patient's alarm history",
    "identity.reveal": "Revealed the patient's identity",
    "break_glass.granted": "Emergency (break-glass) access opened",
    # A de-identified research export the patient is in (telemetry/lifecycle/research.py):
    "research.export": "Disclosed de-identified for research (research export)",
    # Results sent to the hospital's record (telemetry/hl7/outbox.py), actor `hl7-oru`:
    "hl7.oru_sent": "Results sent to the EHR (HL7 ORU^R01)",
}


@dataclass(frozen=True)
class AuditFilters:
    user: str = ""
    patient: str = ""
    action: str = ""
    outcome: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    break_glass: bool = False
    errors: list[str] = field(default_factory=list)

    def as_detail(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, dt.datetime) else v)
            for k, v in {
                "user": self.user,
                "patient": self.patient,
                "action": self.action,
                "outcome": self.outcome,
                "start": self.start,
                "end": self.end,
                "break_glass": self.break_glass,
            }.items()
            if v
        }


def _parse_time(raw: str, *, end: bool) -> dt.datetime | None:
    """ISO-8601 time, or a date: a start date means its midnight, an end date includes the day."""
    day = parse_date(raw) if len(raw) == 10 else None
    if day is not None:
        value = dt.datetime.combine(day, dt.time.min) + (dt.timedelta(days=1) if end else dt.timedelta())
    else:
        parsed = parse_datetime(raw)
        if parsed is None:
            raise ValueError(raw)
        value = parsed
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def audit_filters_from(params: Any) -> AuditFilters:
    """Parse query parameters; bad values are reported in `errors`, never raised."""
    errors: list[str] = []
    times: dict[str, dt.datetime | None] = {"start": None, "end": None}
    for name in times:
        raw = (params.get(name) or "").strip()
        if raw:
            try:
                times[name] = _parse_time(raw, end=name == "end")
            except (ValueError, OverflowError):
                errors.append(f"{name}: not a date or ISO-8601 time")
    outcome = (params.get("outcome") or "").strip()
    if outcome and outcome not in AuditEvent.Outcome.values:
        errors.append("outcome: allowed or denied")
        outcome = ""
    return AuditFilters(
        user=(params.get("user") or "").strip()[:150],
        patient=(params.get("patient") or "").strip()[:80],
        action=(params.get("action") or "").strip()[:60],
        outcome=outcome,
        start=times["start"],
        end=times["end"],
        break_glass=(params.get("break_glass") or "") in {"1", "true", "on"},
        errors=errors,
    )


def audit_events(filters: AuditFilters) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.all()
    if filters.user:
        qs = qs.filter(actor_username__iexact=filters.user)
    if filters.patient:
        qs = qs.filter(subject=filters.patient)
    if filters.action:
        qs = qs.filter(Q(action=filters.action) | Q(action__startswith=filters.action.rstrip(".") + "."))
    if filters.outcome:
        qs = qs.filter(outcome=filters.outcome)
    if filters.start:
        qs = qs.filter(occurred_at__gte=filters.start)
    if filters.end:
        qs = qs.filter(occurred_at__lt=filters.end)
    if filters.break_glass:
        qs = qs.filter(break_glass=True)
    return qs.order_by("-id")


def patient_accessors(*, pseudonym: str, start: dt.datetime | None, end: dt.datetime | None) -> list[dict[str, Any]]:
    """Who accessed this patient: one row per user, with counts, first/last time and purposes."""
    qs = audit_events(AuditFilters(patient=pseudonym, start=start, end=end)).exclude(actor_username="system")
    rows = (
        qs.values("actor_username", "role")
        .annotate(
            attempts=Count("id"),
            denied=Count("id", filter=Q(outcome="denied")),
            break_glass=Count("id", filter=Q(break_glass=True)),
            first=Min("occurred_at"),
            last=Max("occurred_at"),
        )
        .order_by("-last")
    )
    result = []
    for row in rows:
        purposes = (
            qs.filter(actor_username=row["actor_username"])
            .exclude(purpose="")
            .values_list("purpose", flat=True)
            .distinct()[:5]
        )
        result.append({**row, "purposes": list(purposes)})
    return result


def patient_disclosures(*, pseudonym: str, start: dt.datetime | None, end: dt.datetime | None) -> list[dict[str, Any]]:
    """Accounting of disclosures: each allowed read of the patient's data (date, recipient,
    description, purpose). Ward care without a stated purpose is accounted as treatment."""
    qs = (
        audit_events(AuditFilters(patient=pseudonym, start=start, end=end, outcome="allowed"))
        .filter(action__in=list(READ_ACTIONS_LABELS))
        .order_by("occurred_at", "id")
    )
    rows = []
    for event in qs.iterator(chunk_size=2000):
        default = "Emergency access (break-glass)" if event.break_glass else "Treatment (ward care)"
        rows.append(
            {
                "id": event.id,
                "date": event.occurred_at,
                "recipient": f"{event.actor_username} ({event.role})",
                "description": READ_ACTIONS_LABELS.get(event.action, event.action),
                "purpose": event.purpose or default,
                "break_glass": event.break_glass,
            }
        )
    return rows
