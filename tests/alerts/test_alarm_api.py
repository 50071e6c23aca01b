"""Alarm API and pages: who may see and act on which alarm (each row of the matrix audited)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from alerts.models import Alarm, AlarmRule
from alerts.services import alarm_raise, rule_current_ward
from audit.models import AuditEvent
from telemetry.models import Patient, Ward
from tests import factories
from tests.alarm_factories import staff, verified_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(ward_a: Ward, ward_b: Ward, other_ward_nurse: User, compliance_officer: User, admin: User) -> dict[str, Any]:
    factories.device(ward_code=ward_a.code, patient="pt-a")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-a")
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(ward_a), kind="low", onset=now, now=now, explain={"samples": []}
    )
    return {
        "alarm": alarm,
        "patient": patient,
        "clinician": staff("clin-a", "clinician", [ward_a]),
        "other": staff("clin-b", "clinician", [ward_b]),
        "oncall": staff("oncall-a", "oncall", [ward_a]),
        "oncall_b": other_ward_nurse,
        "compliance": compliance_officer,
        "admin": admin,
        "unverified": staff("clin-a2", "clinician", [ward_a]),
    }


def client_for(world: dict[str, Any], who: str) -> Client:
    if who == "anonymous":
        return Client()
    if who == "unverified":
        client = Client()
        client.force_login(world["unverified"])
        return client
    return verified_client(world[who])


def denied(username: str, action: str) -> int:
    return AuditEvent.objects.filter(actor_username=username, action=action, outcome="denied").count()


@pytest.mark.parametrize(
    ("who", "status", "count", "code"),
    [
        ("clinician", 200, 1, None),
        ("oncall", 200, 1, None),
        ("admin", 200, 1, None),
        ("other", 200, 0, None),
        ("oncall_b", 200, 0, None),
        ("compliance", 403, None, "forbidden"),
        ("unverified", 403, None, "mfa_required"),
        ("anonymous", 403, None, "not_authenticated"),
    ],
)
def test_alarm_list_is_ward_scoped_and_audited(
    world: dict[str, Any], who: str, status: int, count: int | None, code: str | None
) -> None:
    response = client_for(world, who).get("/api/v1/alarms/?state=active")
    assert response.status_code == status
    body = response.json()
    if status == 200:
        assert len(body["alarms"]) == count
        assert AuditEvent.objects.filter(action="alarm.listed", outcome="allowed").count() == 1
    else:
        assert body["error"]["code"] == code
        assert AuditEvent.objects.filter(action="alarm.listed", outcome="denied").count() == 1


def test_list_fields_and_state_filter(world: dict[str, Any]) -> None:
    client = verified_client(world["clinician"])
    [alarm] = client.get("/api/v1/alarms/?state=active").json()["alarms"]
    assert alarm["patient"] == "pt-a" and alarm["state"] == "active_unacknowledged" and alarm["rule_version"] == 1
    assert alarm["chart_url"].startswith("/patients/pt-a/?at=")
    assert client.get("/api/v1/alarms/?state=resolved").json()["alarms"] == []
    assert client.get("/api/v1/alarms/?state=bogus").json()["error"]["code"] == "invalid"


def test_escalated_alarm_is_shown_to_every_oncall_user(world: dict[str, Any]) -> None:
    Alarm.objects.filter(pk=world["alarm"].pk).update(escalation_level=1, ever_escalated=True)
    assert len(verified_client(world["oncall_b"]).get("/api/v1/alarms/").json()["alarms"]) == 1
    assert verified_client(world["other"]).get("/api/v1/alarms/").json()["alarms"] == []


def test_acknowledge_through_the_api(world: dict[str, Any]) -> None:
    url = f"/api/v1/alarms/{world['alarm'].pk}/acknowledge"
    other = verified_client(world["other"]).post(url, {"note": "not mine"}, content_type="application/json")
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert denied("clin-b", "alarm.acknowledged") == 1
    client = verified_client(world["clinician"])
    ok = client.post(url, {"note": "repositioned"}, content_type="application/json")
    assert ok.status_code == 200
    assert ok.json()["state"] == "acknowledged" and ok.json()["note"] == "repositioned"
    again = verified_client(world["oncall"]).post(url, {}, content_type="application/json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_acknowledged"
    assert denied("oncall-a", "alarm.acknowledged") == 1


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("{not json", "application/json"), ('["a list"]', "application/json"), ('{"note": 5}', "application/json"),
     ('{"note": "' + "x" * 501 + '"}', "application/json"), ("note=hi", "text/plain")],
)  # fmt: skip
def test_malformed_acknowledgements_get_json_4xx(world: dict[str, Any], body: str, content_type: str) -> None:
    response = verified_client(world["clinician"]).post(
        f"/api/v1/alarms/{world['alarm'].pk}/acknowledge", body, content_type=content_type
    )
    assert 400 <= response.status_code < 500
    assert "code" in response.json()["error"]
    assert Alarm.objects.get(pk=world["alarm"].pk).state == "active_unacknowledged"


def test_unknown_alarm_is_404_json(world: dict[str, Any]) -> None:
    response = verified_client(world["clinician"]).post("/api/v1/alarms/999999/acknowledge", {}, "application/json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_accept_and_decline_are_for_oncall(world: dict[str, Any]) -> None:
    pk = world["alarm"].pk
    clin = verified_client(world["clinician"]).post(f"/api/v1/alarms/{pk}/accept")
    assert clin.status_code == 403 and denied("clin-a", "alarm.accepted") == 1
    oncall = verified_client(world["oncall"])
    assert oncall.post(f"/api/v1/alarms/{pk}/accept").json()["responsible"] == "oncall-a"
    second = verified_client(staff("oncall-a2", "oncall", [world["patient"].ward])).post(f"/api/v1/alarms/{pk}/accept")
    assert second.status_code == 409 and second.json()["error"]["code"] == "already_accepted"
    declined = oncall.post(f"/api/v1/alarms/{pk}/decline", {"reason": "busy"}, content_type="application/json")
    assert declined.status_code == 200
    assert (declined.json()["escalation_level"], declined.json()["responsible"]) == (1, None)


def test_pause_api_enforces_ward_maximum(world: dict[str, Any]) -> None:
    client = verified_client(world["clinician"])
    ok = client.post("/api/v1/alarms/pauses", {"patient": "pt-a", "seconds": 120}, content_type="application/json")
    assert ok.status_code == 201 and ok.json()["priority"] == "medium"
    long = client.post("/api/v1/alarms/pauses", {"patient": "pt-a", "seconds": 7200}, content_type="application/json")
    assert long.status_code == 400 and long.json()["error"]["code"] == "pause_too_long"
    other = verified_client(world["other"]).post(
        "/api/v1/alarms/pauses", {"patient": "pt-a", "seconds": 60}, content_type="application/json"
    )
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("who", "status"),
    [("clinician", 200), ("oncall", 200), ("admin", 200), ("compliance", 403), ("unverified", 302), ("anonymous", 302)],
)
def test_console_page_access(world: dict[str, Any], who: str, status: int) -> None:
    response = client_for(world, who).get("/alarms/")
    assert response.status_code == status
    if status == 200:
        assert b"alarm-initial" in response.content and b"pt-a" in response.content
        assert AuditEvent.objects.filter(action="alarm.console_viewed", outcome="allowed").count() == 1
    else:  # refusals are audited, anonymous ones too
        assert AuditEvent.objects.filter(action="alarm.console_viewed", outcome="denied").count() == 1


def test_explain_page_shows_why_and_is_ward_scoped(world: dict[str, Any]) -> None:
    pk = world["alarm"].pk
    page = verified_client(world["clinician"]).get(f"/alarms/{pk}/")
    assert page.status_code == 200 and b"version 1" in page.content
    assert AuditEvent.objects.filter(action="alarm.explained", outcome="allowed", subject="pt-a").count() == 1
    assert verified_client(world["other"]).get(f"/alarms/{pk}/").status_code == 403
    detail = verified_client(world["clinician"]).get(f"/api/v1/alarms/{pk}").json()
    assert [t["cause"] for t in detail["transitions"]] == ["raised"]


def test_rules_editor_versions_validates_and_audits(world: dict[str, Any]) -> None:
    admin = verified_client(world["admin"])
    assert admin.get("/alarms/rules/?ward=icu-a").status_code == 200
    assert verified_client(world["clinician"]).get("/alarms/rules/").status_code == 403
    values = rule_current_ward(world["patient"].ward).values() | {"low_threshold": 40}
    saved = admin.post("/alarms/rules/", {"ward": "icu-a", **values, "reason": "post-op ward"})
    assert saved.status_code == 302
    current = rule_current_ward(world["patient"].ward)
    assert (current.version, current.low_threshold) == (2, 40)
    event = AuditEvent.objects.get(action="alarm_rule.updated", outcome="allowed")
    assert event.detail["changes"] == {"low_threshold": [35.0, 40.0]}
    bad = admin.post("/alarms/rules/", {"ward": "icu-a", **values, "critical_threshold": 50})
    assert bad.status_code == 400 and b"must be below the low threshold" in bad.content
    assert AlarmRule.objects.filter(ward__code="icu-a", patient__isnull=True).count() == 2
    override = admin.post("/alarms/rules/", {"patient": "pt-a", **values, "no_data_delay_s": 300})
    assert override.status_code == 302
    assert AlarmRule.objects.get(patient=world["patient"]).no_data_delay_s == 300
    # The alarm keeps pointing at the version that raised it.
    assert Alarm.objects.get(pk=world["alarm"].pk).rule.version == 1


def test_fatigue_figures_page_and_csv(world: dict[str, Any]) -> None:
    client = verified_client(world["clinician"])
    page = client.get("/alarms/fatigue/?days=7")
    assert page.status_code == 200
    csv_text = client.get("/alarms/fatigue.csv?days=7").content.decode()
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("scope,ward,patient,alarms,patient_days,alarms_per_patient_day")
    ward_row = next(line for line in lines if line.startswith("ward,icu-a"))
    assert ward_row.split(",")[3] == "1"  # one alarm on icu-a
    assert not any(line.startswith("ward,icu-b") for line in lines)  # not the clinician's ward
    assert verified_client(world["compliance"]).get("/alarms/fatigue.csv").status_code == 403


def test_openapi_documents_the_alarm_endpoints(world: dict[str, Any]) -> None:
    schema = Client().get("/api/schema/?format=json").json()
    for path in ("/api/v1/alarms/", "/api/v1/alarms/{alarm_id}/acknowledge", "/api/v1/alarms/{alarm_id}/accept"):
        assert path in schema["paths"]


def test_chart_overlay_and_ward_badges_come_from_alarms(world: dict[str, Any]) -> None:
    from dashboard.selectors import patient_alarm_badges, patient_alarm_overlay

    patient = world["patient"]
    now = dt.datetime.now(dt.UTC)
    badge = patient_alarm_badges(patient_ids=[patient.pk])[patient.pk]
    assert (badge.priority, badge.state, badge.count, badge.label) == (
        "medium",
        "active_unacknowledged",
        1,
        "Tissue O2 low",
    )
    overlay = patient_alarm_overlay(patient_id=patient.pk, start=now - dt.timedelta(hours=1), end=now)
    assert [t["high"] for t in overlay.thresholds] == [25.0, 35.0]
    [period] = overlay.periods
    assert period["end"] is None and period["priority"] == "medium"
    assert [a["id"] for a in overlay.current] == [world["alarm"].pk]
    client = verified_client(world["clinician"])
    span = {"start": (now - dt.timedelta(hours=1)).isoformat(), "end": (now + dt.timedelta(minutes=1)).isoformat()}
    marks = client.get("/api/v1/patients/pt-a/annotations", span)  # the chart's source of alarm marks
    assert marks.status_code == 200, marks.content
    assert len(marks.json()["alarm_periods"]) == 1 and len(marks.json()["thresholds"]) == 2
