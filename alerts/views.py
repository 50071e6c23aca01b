"""Alarm pages: the console, an alarm's explanation, the rules editor and alarm-fatigue figures.

Thin: each page authorizes through alerts.selectors (or the capability of the page), audits the
view in the same transaction as its reads, and renders. A refusal is raised and answered by the
access layer's page helper (audit.access.answers.refusal_pages): the login page or a 403 page,
audited once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from alerts import selectors, services
from alerts.errors import RuleInvalid
from alerts.models import RULE_FIELDS, AlarmRule
from alerts.schemas import alarm_out
from alerts.vocabulary import KIND_METRIC
from audit.access.answers import refusal_pages
from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request, user_can
from audit.trail import audit_record
from config.csv import csv_writer
from config.refusal import Refusal
from telemetry.models import Patient, Ward
from telemetry.units import METRICS

RULE_LABELS: dict[str, tuple[str, str]] = {
    "low_threshold": ("Low tissue O2 threshold", "%"),
    "low_delay_s": ("Low: sustained for", "s"),
    "critical_threshold": ("Critically low threshold", "%"),
    "critical_delay_s": ("Critically low: sustained for", "s"),
    "rapid_fall_drop": ("Rapid fall: drop of", "%-points"),
    "rapid_fall_window_s": ("Rapid fall: within", "s"),
    "quality_level": ("Signal quality low below", "0..1"),
    "quality_delay_s": ("Signal quality low for", "s"),
    "no_data_delay_s": ("No data for", "s"),
    "clear_margin": ("Clear: recover past threshold by", "%-points"),
    "clear_delay_s": ("Clear: recovered for", "s"),
    "realert_interval_s": ("Re-alert after acknowledgement", "s"),
    "suppression_window_s": ("Suppression window", "s"),
    "escalation_delay_s": ("Escalate unacknowledged after", "s"),
    "max_pause_s": ("Longest pause allowed", "s"),
    "spo2_low_threshold": ("SpO2 low threshold", "%"),
    "spo2_low_delay_s": ("SpO2 low: sustained for", "s"),
    "spo2_critical_threshold": ("SpO2 critically low threshold", "%"),
    "spo2_critical_delay_s": ("SpO2 critically low: sustained for", "s"),
    "spo2_clear_margin": ("SpO2 clear: recover past threshold by", "%-points"),
    "battery_low_threshold": ("Sensor battery low below", "mV"),
    "battery_low_delay_s": ("Battery low: sustained for", "s"),
}
# How the rules editor groups the fields: per metric, then what applies to every alarm.
RULE_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Tissue O2",
        ("low_threshold", "low_delay_s", "critical_threshold", "critical_delay_s", "rapid_fall_drop",
         "rapid_fall_window_s", "clear_margin", "quality_level", "quality_delay_s"),
    ),
    ("SpO2", ("spo2_low_threshold", "spo2_low_delay_s", "spo2_critical_threshold", "spo2_critical_delay_s",
              "spo2_clear_margin")),
    ("Sensor battery", ("battery_low_threshold", "battery_low_delay_s")),
    ("Every alarm", ("no_data_delay_s", "clear_delay_s", "realert_interval_s", "suppression_window_s",
                     "escalation_delay_s", "max_pause_s")),
)  # fmt: skip


@refusal_pages()
def console(request: HttpRequest) -> HttpResponse:
    scope = selectors.alarm_console(request.user, action="alarm.console_viewed")
    alarms = list(selectors.alarms_open_sorted(selectors.alarms_visible_to(request.user)))
    with transaction.atomic():
        audit_record(
            actor=actor_from_request(request),
            action="alarm.console_viewed",
            detail={"count": len(alarms), "patients": sorted({a.patient.pseudonym for a in alarms})[:100]},
        )
    notes = list(request.user.alarm_notifications.all()[:20])  # type: ignore[union-attr]
    return render(
        request,
        "alerts/console.html",
        {
            "alarms_json": [alarm_out(a) for a in alarms],
            "notes": notes,
            "oncall": selectors.shifts_now(now=timezone.now(), wards=scope.wards),
            "role": scope.role,
            "can_accept": scope.role == "oncall",
            "can_acknowledge": user_can(request.user, "acknowledge_alarms"),
        },
    )


@refusal_pages()
def explain(request: HttpRequest, alarm_id: int) -> HttpResponse:
    alarm, explanation = selectors.alarm_read(
        user=request.user, actor=actor_from_request(request), alarm_id=alarm_id, action="alarm.explained"
    )
    ex = explanation.explain
    metric = METRICS.get(ex.get("metric") or KIND_METRIC.get(alarm.kind, ""))
    rule = alarm.rule.values()  # the version that raised it (immutable), not today's rule
    rule_rows = [(RULE_LABELS[name][0], rule[name], RULE_LABELS[name][1]) for name in RULE_FIELDS]
    return render(
        request,
        "alerts/explain.html",
        {
            "alarm": alarm,
            "out": alarm_out(alarm),
            "ex": ex,
            "metric": metric,
            "samples": ex.get("samples", []),
            "values_shown": explanation.values_shown,
            "rule_rows": rule_rows,
            "first": ex.get("first"),
            "transitions": alarm.transitions.all(),
            "deliveries": selectors.alarm_deliveries(alarm),
        },
    )


def _rule_target(request: HttpRequest) -> tuple[Ward | None, Patient | None]:
    source = request.POST if request.method == "POST" else request.GET
    if pseudonym := source.get("patient"):
        patient = Patient.objects.select_related("ward").filter(pseudonym=pseudonym).first()
        return (patient.ward if patient else None), patient
    ward = Ward.objects.filter(code=source.get("ward", "")).first() or Ward.objects.order_by("code").first()
    return ward, None


@require_http_methods(["GET", "POST"])
@staff_page("edit_alarm_rules", "alarm_rule.viewed")
def rules(request: HttpRequest) -> HttpResponse:
    ward, patient = _rule_target(request)
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    if ward is not None and request.method == "POST":
        actor = actor_from_request(request)
        if request.POST.get("remove_override") and patient is not None:
            # Refused (no override left): audited; the page shows the patient as it is.
            with contextlib.suppress(Refusal):
                services.rule_override_remove(patient=patient, actor=actor, user=request.user)
            return redirect(f"{request.path}?patient={patient.pseudonym}")
        values = {name: request.POST.get(name, "") for name in RULE_FIELDS}
        try:
            services.rule_update(
                ward=ward,
                patient=patient,
                actor=actor,
                user=request.user,
                values=values,
                reason=request.POST.get("reason", ""),
            )
            target = f"patient={patient.pseudonym}" if patient else f"ward={ward.code}"
            return redirect(f"{request.path}?{target}&saved=1")
        except RuleInvalid as exc:
            errors = exc.detail
    current = None
    history: list[AlarmRule] = []
    override = None
    if ward is not None:
        current = services.rule_current_ward(ward)
        if patient is not None:
            override = selectors.rule_override(patient)
            current = override or current
            history = list(AlarmRule.objects.filter(patient=patient).order_by("-version")[:20])
        else:
            history = list(AlarmRule.objects.filter(ward=ward, patient__isnull=True).order_by("-version")[:20])
        with transaction.atomic():
            audit_record(
                actor=actor_from_request(request),
                action="alarm_rule.viewed",
                subject=patient.pseudonym if patient else ward.code,
            )
    shown = values or (current.values() if current else {})
    sections = [(title, [_rule_field(name, shown, errors) for name in names]) for title, names in RULE_SECTIONS]
    return render(
        request,
        "alerts/rules.html",
        {
            "wards": Ward.objects.order_by("code"),
            "ward": ward,
            "patient": patient,
            "patients": Patient.objects.filter(ward=ward, discharged_at__isnull=True).order_by("pseudonym")
            if ward
            else [],
            "current": current,
            "override": override,
            "sections": sections,
            "errors": errors,
            "general_error": errors.get("__all__", ""),
            "history": history,
            "saved": request.GET.get("saved") == "1",
        },
        status=400 if errors else 200,
    )


def _rule_field(name: str, shown: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    label, unit = RULE_LABELS[name]
    return {"name": name, "label": label, "unit": unit, "value": shown.get(name, ""), "error": errors.get(name, "")}


def _fatigue_span(request: HttpRequest) -> tuple[dt.datetime, dt.datetime, int]:
    try:
        days = min(max(int(request.GET.get("days", "7")), 1), 365)
    except ValueError:
        days = 7
    end = timezone.now()
    return end - dt.timedelta(days=days), end, days


@refusal_pages()
def fatigue(request: HttpRequest) -> HttpResponse:
    scope = selectors.alarm_console(request.user, action="alarm.fatigue_viewed")
    start, end, days = _fatigue_span(request)
    rows = selectors.alarm_fatigue(wards=scope.wards, start=start, end=end)
    with transaction.atomic():
        audit_record(
            actor=actor_from_request(request), action="alarm.fatigue_viewed", detail={"days": days, "rows": len(rows)}
        )
    if request.path.endswith(".csv"):
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="alarm-fatigue-{days}d.csv"'
        writer = csv_writer(response)
        writer.writerow(selectors.FATIGUE_COLUMNS)
        for row in rows:
            writer.writerow(row.as_row())
        return response
    return render(request, "alerts/fatigue.html", {"rows": rows, "days": days, "start": start, "end": end})
