"""Alarm routes for the authorization matrix (tests/authz_registry.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.authz_registry import Route

CONSOLE = frozenset({"clinician", "oncall", "admin"})
CARE = frozenset({"clinician", "oncall"})


def _alarm(world: Any) -> dict[str, str]:
    """An open low alarm for the clinicians' patient."""
    from alerts.services import alarm_raise, rule_current_ward
    from telemetry.models import Patient

    patient = Patient.objects.select_related("ward").get(pseudonym=world.patient)
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(patient.ward), kind="low", onset=now, now=now, explain={}
    )
    return {"alarm": str(alarm.pk)}


ROUTES: list[Route] = [
    Route("alarm console", "page", "GET", "/alarms/", CONSOLE),
    Route("alarm fatigue page", "page", "GET", "/alarms/fatigue/", CONSOLE),
    Route("alarm fatigue csv", "page", "GET", "/alarms/fatigue.csv", CONSOLE),
    Route("alarm rules editor", "page", "GET", "/alarms/rules/", frozenset({"admin"})),
    Route("alarm list api", "api", "GET", "/api/v1/alarms/?state=active", CONSOLE),
    Route(
        "alarm explain page",
        "page",
        "GET",
        "/alarms/{alarm}/",
        CONSOLE,
        patient_data=True,
        ward_scoped=True,
        setup=_alarm,
    ),
    Route(
        "alarm detail api",
        "api",
        "GET",
        "/api/v1/alarms/{alarm}",
        CONSOLE,
        patient_data=True,
        ward_scoped=True,
        setup=_alarm,
    ),
    Route(
        "alarm acknowledge api",
        "api",
        "POST",
        "/api/v1/alarms/{alarm}/acknowledge",
        CARE,
        patient_data=True,
        ward_scoped=True,
        data={"note": "seen"},
        setup=_alarm,
    ),
    Route(
        "alarm accept api",
        "api",
        "POST",
        "/api/v1/alarms/{alarm}/accept",
        frozenset({"oncall"}),
        patient_data=True,
        ward_scoped=True,
        setup=_alarm,
    ),
    Route(
        "alarm decline api",
        "api",
        "POST",
        "/api/v1/alarms/{alarm}/decline",
        frozenset({"oncall"}),
        patient_data=True,
        ward_scoped=True,
        data={"reason": "in theatre"},
        setup=_alarm,
    ),
    Route(
        "alarm pause api",
        "api",
        "POST",
        "/api/v1/alarms/pauses",
        CARE,
        patient_data=True,
        ward_scoped=True,
        data={"patient": "pt-a", "seconds": 60},
    ),
    Route("alarm console socket", "ws", "GET", "/ws/alarms/live", CONSOLE),
]
