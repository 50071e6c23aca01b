"""Seeing an alarm is not reading the patient's telemetry: the explanation (API and page) carries
sample values only for users whom `patient_access` lets read that patient's series. An on-call
nurse of another ward (shown the alarm because it escalated) and an administrator (all-ward
console) get the rule, thresholds and times without values; a break-glass grant gives them back."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User

from alerts.engine import AlarmProcessor
from alerts.models import Alarm
from audit.models import AuditEvent
from telemetry.models import Device, Patient, Ward
from tests import factories
from tests.alarm_factories import insert, verified_client

pytestmark = pytest.mark.django_db

LOW_VALUE = 33.0  # the desaturation
QUALITY = 0.87
VALUE_CELL = b"<td>33.0</td>"  # a sample's value in the page's samples table


@pytest.fixture
def world(ward_a: Ward, ward_clinician: User, other_ward_nurse: User, admin: User) -> dict[str, Any]:
    dev = factories.device(ward_code=ward_a.code, patient="pt-a")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-a")
    device = Device.objects.get(device_id=dev.device_id)
    now = dt.datetime.now(dt.UTC)
    samples = [(now - dt.timedelta(seconds=31 - i), LOW_VALUE, QUALITY) for i in range(32)]
    AlarmProcessor().process(insert(patient, device, samples), now=now)
    alarm = Alarm.objects.get(patient=patient, kind="low")
    # Escalated to the on-call role, so every on-call user sees it (alerts/selectors.py).
    Alarm.objects.filter(pk=alarm.pk).update(escalation_level=1)
    return {
        "alarm": alarm,
        "clinician": ward_clinician,
        "oncall_b": other_ward_nurse,
        "admin": admin,
    }


def _values_in(explain: dict[str, Any]) -> list[Any]:
    return [s.get("value") for s in explain["samples"]] + [
        explain["signal_quality"].get("min"),
        explain["signal_quality"].get("mean"),
    ]


def test_ward_clinician_gets_the_sample_values(world: dict[str, Any]) -> None:
    pk = world["alarm"].pk
    client = verified_client(world["clinician"])
    explain = client.get(f"/api/v1/alarms/{pk}").json()["explain"]
    assert explain["samples"] and {s["value"] for s in explain["samples"]} == {LOW_VALUE}
    assert explain["signal_quality"]["min"] == QUALITY
    assert "values_withheld" not in explain
    page = client.get(f"/alarms/{pk}/")
    assert page.status_code == 200 and VALUE_CELL in page.content and b"min 0.87" in page.content
    events = AuditEvent.objects.filter(action__in=["alarm.viewed", "alarm.explained"], outcome="allowed")
    assert [e.detail["values"] for e in events.order_by("id")] == [True, True]


@pytest.mark.parametrize("who", ["oncall_b", "admin"])
def test_alarm_without_series_access_shows_rule_thresholds_and_times_only(world: dict[str, Any], who: str) -> None:
    alarm = world["alarm"]
    client = verified_client(world[who])
    body = client.get(f"/api/v1/alarms/{alarm.pk}")
    assert body.status_code == 200
    explain = body.json()["explain"]
    assert explain["values_withheld"] is True
    assert _values_in(explain) == [None] * (len(explain["samples"]) + 2)
    assert all("quality" not in s for s in explain["samples"])
    # What it still says: which rule, which thresholds, when.
    full = alarm.explain
    assert (explain["threshold"], explain["delay_s"], explain["onset"], explain["at"]) == (
        full["threshold"], full["delay_s"], full["onset"], full["at"],
    )  # fmt: skip
    assert explain["rule"] == full["rule"] and explain["signal_quality"] == {"level": full["signal_quality"]["level"]}
    assert [s["t"] for s in explain["samples"]] == [s["t"] for s in full["samples"]]
    assert b'"value"' not in body.content and b'"quality"' not in body.content and b'"mean"' not in body.content

    page = client.get(f"/alarms/{alarm.pk}/")
    assert page.status_code == 200
    assert b"values-withheld" in page.content and b"Threshold" in page.content
    assert VALUE_CELL not in page.content and b"min 0.87" not in page.content
    events = AuditEvent.objects.filter(action__in=["alarm.viewed", "alarm.explained"], outcome="allowed")
    assert [e.detail["values"] for e in events.order_by("id")] == [False, False]


def test_break_glass_gives_an_administrator_the_values(world: dict[str, Any]) -> None:
    client = verified_client(world["admin"])
    granted = client.post(
        "/audit/break-glass/",
        {"pseudonym": "pt-a", "reason": "incident_review", "purpose": "Review of alarm handling", "minutes": 10},
    )
    assert granted.status_code in (200, 302)
    explain = client.get(f"/api/v1/alarms/{world['alarm'].pk}").json()["explain"]
    assert {s["value"] for s in explain["samples"]} == {LOW_VALUE}
