"""Alarm history (alerts/history/views.py): who responded and how fast, how far an alarm reached; the
filters; the ward scope of the alarm console; the CSV export (formulas neutralised, audited as a
disclosure before a row leaves); the JSON API with the contract's errors."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any

import pytest
import time_machine
from django.test import Client

from alerts.models import Alarm
from alerts.services import (
    alarm_accept,
    alarm_acknowledge,
    alarm_condition_clear,
    alarm_decline,
    alarm_raise,
    alarm_timers,
    rule_current_ward,
)
from audit.models import AuditEvent
from audit.selectors import patient_disclosures
from audit.trail import Actor
from telemetry.models import Patient
from tests import factories
from tests.alarm_factories import staff, verified, verified_client

pytestmark = pytest.mark.django_db
_TOKEN = re.compile(rb"[A-Za-z0-9]{64}")  # masked CSRF tokens differ on every page
# Every page echoes the URL it was asked for (the display form's `next`): the asker's own input.
_ECHO = re.compile(rb'name="next" value="[^"]*"')
FORMULA = '=HYPERLINK("http://evil.example","open")'


def _at(base: dt.datetime, seconds: float) -> dt.datetime:
    return base + dt.timedelta(seconds=seconds)


def _raise(pseudonym: str, kind: str, at: dt.datetime) -> Alarm:
    patient = Patient.objects.select_related("ward").get(pseudonym=pseudonym)
    return alarm_raise(patient=patient, rule=rule_current_ward(patient.ward), kind=kind, onset=at, now=at, explain={})


@pytest.fixture
def world() -> dict[str, Any]:
    ward_a, ward_b = factories.ward("icu-a"), factories.ward("icu-b")
    for ward, pseudonym in (("icu-a", "pt-a"), ("icu-b", "pt-b"), ("icu-a", "pt-c")):
        factories.device(ward_code=ward, patient=pseudonym)
    people = {
        "clinician": staff("clin-a", "clinician", [ward_a]),
        "other": staff("clin-b", "clinician", [ward_b]),
        "oncall": staff("oncall-a", "oncall", [ward_a]),
        "oncall_b": staff("oncall-b", "oncall", [ward_b]),
        "admin": staff("admin", "admin"),
        "compliance": staff("comp", "compliance"),
    }
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)
    with time_machine.travel(base, tick=False) as clock:
        # a1: tissue O2 low, acknowledged by the ward's clinician after 45 s, cleared, resolved.
        low = _raise("pt-a", "low", base)
        clock.move_to(_at(base, 45))
        alarm_acknowledge(
            alarm_id=low.pk,
            user=verified(people["clinician"]),
            actor=_actor(people["clinician"]),
            note="repositioned sensor",
        )
        alarm_condition_clear(alarm_id=low.pk, cleared_at=_at(base, 60), now=_at(base, 60))
        alarm_timers(alarm_id=low.pk, now=_at(base, 200))
        # a2: critically low, escalated (timed), declined by another ward's on-call nurse,
        # accepted and acknowledged (with a note a spreadsheet would run) by the ward's.
        high = _raise("pt-a", "critical_low", _at(base, 600))
        alarm_timers(alarm_id=high.pk, now=_at(base, 720))
        clock.move_to(_at(base, 750))
        alarm_decline(
            alarm_id=high.pk, user=verified(people["oncall_b"]), actor=_actor(people["oncall_b"]), reason="other ward"
        )
        clock.move_to(_at(base, 800))
        alarm_accept(alarm_id=high.pk, user=verified(people["oncall"]), actor=_actor(people["oncall"]))
        clock.move_to(_at(base, 810))
        alarm_acknowledge(
            alarm_id=high.pk, user=verified(people["oncall"]), actor=_actor(people["oncall"]), note=FORMULA
        )
        # a3: SpO2 low on the other ward.
        other = _raise("pt-b", "spo2_low", _at(base, 300))
    # a4: a low battery ten days ago.
    old = _raise("pt-c", "battery_low", base - dt.timedelta(days=10))
    return {**people, "base": base, "a1": low, "a2": high, "a3": other, "a4": old}


def _actor(user: Any) -> Actor:
    return Actor(user.pk, user.username, "staff")


def _page(world: dict[str, Any], who: str, query: str = "") -> Any:
    return verified_client(world[who]).get(f"/alarms/history/{query}")


def _ids(response: Any) -> list[int]:
    return [row.alarm.pk for row in response.context["rows"]]


def test_history_shows_responses_response_times_and_escalation(world: dict[str, Any]) -> None:
    page = _page(world, "clinician")
    assert page.status_code == 200
    assert _ids(page) == [world["a2"].pk, world["a1"].pk]  # newest first, own ward, last 7 days
    high, low = page.context["rows"]
    assert [(k.by, k.note) for k in low.acknowledgements] == [("clin-a", "repositioned sensor")]
    assert (low.seconds_to_acknowledge, low.seconds_to_accept, low.highest_level) == (45.0, None, 0)
    assert low.alarm.state == "resolved"
    assert (high.accepted_by, high.seconds_to_accept, high.seconds_to_acknowledge) == ("oncall-a", 200.0, 210.0)
    assert [(e.level, e.cause, e.by) for e in high.escalations] == [
        (1, "escalated", "system"),
        (2, "declined", "oncall-b"),
    ]
    html = page.content.decode()
    assert "repositioned sensor" in html and "declined by oncall-b" in html and "ack 45 s" in html
    [event] = AuditEvent.objects.filter(action="alarm.history_viewed")
    assert (event.outcome, event.subject, event.detail["count"], event.detail["patients"]) == (
        "allowed",
        "",
        2,
        ["pt-a"],
    )
    assert event.detail["format"] == "html" and event.detail["filters"]["state"] == "all"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?priority=high", ["a2"]),
        ("?priority=high&priority=medium", ["a2", "a1"]),
        ("?kind=low", ["a1"]),
        ("?state=resolved", ["a1"]),
        ("?state=open", ["a2"]),
        ("?state=acknowledged", ["a2"]),
        ("?ward=icu-a&patient=pt-a", ["a2", "a1"]),
        ("?patient=pt-c", []),  # on the ward, but its only alarm is older than the span
        ("?start={days11}", ["a2", "a1", "a4"]),
        ("?start={days11}&end={days9}", ["a4"]),
        ("?ward=icu-b", []),  # filters only narrow what the scope shows
    ],
)
def test_filters_narrow_by_priority_kind_state_ward_patient_and_time(
    world: dict[str, Any], query: str, expected: list[str]
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    query = query.format(days11=today - dt.timedelta(days=11), days9=today - dt.timedelta(days=9))
    page = _page(world, "clinician", query)
    assert page.status_code == 200
    assert _ids(page) == [world[name].pk for name in expected]


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("other", ["a3"]),
        ("oncall_b", ["a2", "a3"]),  # its own ward, and what escalated to every on-call user
        ("admin", ["a2", "a3", "a1"]),
    ],
)
def test_history_is_scoped_like_the_alarm_console(world: dict[str, Any], who: str, expected: list[str]) -> None:
    assert _ids(_page(world, who)) == [world[name].pk for name in expected]


def test_a_patient_history_outside_the_scope_is_refused_like_an_unknown_patient(world: dict[str, Any]) -> None:
    outside = _page(world, "other", "?patient=pt-a")
    unknown = _page(world, "other", "?patient=pt-nobody")
    assert outside.status_code == unknown.status_code == 404
    assert _ECHO.sub(b"", _TOKEN.sub(b"", outside.content)) == _ECHO.sub(b"", _TOKEN.sub(b"", unknown.content))
    denied = AuditEvent.objects.filter(action="alarm.history_viewed", outcome="denied").order_by("id")
    assert [e.subject for e in denied] == ["pt-a", "pt-nobody"]
    # An on-call nurse of the other ward sees the patient's escalated alarm only.
    assert _ids(_page(world, "oncall_b", "?patient=pt-a")) == [world["a2"].pk]


def test_roles_without_an_alarm_console_are_refused_and_audited(world: dict[str, Any]) -> None:
    assert _page(world, "compliance").status_code == 403
    assert Client().get("/alarms/history/").status_code == 302  # to the login page
    assert AuditEvent.objects.filter(action="alarm.history_viewed", outcome="denied").count() == 2


def test_bad_filters_are_shown_not_guessed(world: dict[str, Any]) -> None:
    for query, field in (
        ("?start=yesterday", "start"),
        ("?start=2026-01-01T00:00:00", "start"),  # a time without an offset
        ("?state=lost", "state"),
        ("?priority=urgent", "priority"),
        ("?kind=fever", "kind"),
        ("?start=2020-01-01&end=2026-01-01", "start"),  # longer than a year
    ):
        page = _page(world, "clinician", query)
        assert page.status_code == 400 and field in page.context["errors"], query
    assert not AuditEvent.objects.filter(action="alarm.history_viewed").exists()


def test_csv_export_is_audited_before_a_row_leaves_and_neutralises_formulas(world: dict[str, Any]) -> None:
    response = verified_client(world["clinician"]).get("/alarms/history.csv?patient=pt-a")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    [event] = AuditEvent.objects.filter(action="alarm.history_exported")  # before the body is read
    assert (event.outcome, event.subject, event.detail["rows"], event.detail["patients"]) == (
        "allowed",
        "pt-a",
        2,
        ["pt-a"],
    )
    assert event.detail["format"] == "csv" and event.detail["patients_complete"] is True
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(r["id"]) for r in rows] == [world["a2"].pk, world["a1"].pk]
    high, low = rows
    assert high["note"] == "'" + FORMULA  # shown as text, never run
    assert (high["first_accepted_by"], high["seconds_to_accept"], high["highest_escalation_level"]) == (
        "oncall-a",
        "200.0",
        "2",
    )
    assert "declined by oncall-b" in high["escalations"]
    assert (low["first_acknowledged_by"], low["seconds_to_acknowledge"], low["first_accepted_by"]) == (
        "clin-a",
        "45.0",
        "",
    )
    assert all(not cell.startswith(("=", "+", "@")) for row in rows for cell in row.values())


def test_a_patient_export_is_in_the_patient_accounting_of_disclosures(world: dict[str, Any]) -> None:
    verified_client(world["clinician"]).get("/alarms/history.csv?patient=pt-a")
    disclosures = patient_disclosures(pseudonym="pt-a", start=None, end=None)
    assert [(d["recipient"], d["description"]) for d in disclosures] == [
        ("clin-a (clinician)", "Exported the patient's alarm history")
    ]


def test_a_ward_export_names_every_patient_it_covers(world: dict[str, Any]) -> None:
    response = verified_client(world["admin"]).get(
        f"/alarms/history.csv?start={dt.date.today() - dt.timedelta(days=11)}"
    )
    assert len(list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))) == 1 + 4
    [event] = AuditEvent.objects.filter(action="alarm.history_exported")
    assert (event.subject, event.detail["rows"], event.detail["patients"]) == ("", 4, ["pt-a", "pt-b", "pt-c"])


def test_json_api_pages_the_same_rows_and_answers_contract_errors(world: dict[str, Any]) -> None:
    client = verified_client(world["clinician"])
    body = client.get("/api/v1/alarms/history?priority=high").json()
    assert (body["count"], body["page"], body["pages"]) == (1, 1, 1)
    [row] = body["alarms"]
    assert (row["id"], row["kind"], row["kind_label"], row["priority"]) == (
        world["a2"].pk,
        "critical_low",
        "Tissue O2 critically low",
        "high",
    )
    assert (row["first_accepted_by"], row["seconds_to_accept"], row["highest_escalation_level"]) == (
        "oncall-a",
        200.0,
        2,
    )
    assert (row["responsible"], row["note"], row["state"]) == ("oncall-a", FORMULA, "acknowledged")  # as the alarm API
    assert [a["note"] for a in row["acknowledgements"]] == [FORMULA]  # JSON is not a spreadsheet
    assert [e["cause"] for e in row["escalations"]] == ["escalated", "declined"]
    [event] = AuditEvent.objects.filter(action="alarm.history_viewed")
    assert event.detail["format"] == "json" and event.detail["count"] == 1
    bad = client.get("/api/v1/alarms/history?state=lost")
    assert (
        bad.status_code == 400 and bad.json()["error"]["code"] == "invalid" and "state" in bad.json()["error"]["detail"]
    )
    refused = verified_client(world["other"]).get("/api/v1/alarms/history?patient=pt-a")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    forbidden = verified_client(world["compliance"]).get("/api/v1/alarms/history")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"


def test_the_console_and_the_chart_link_to_the_history(world: dict[str, Any]) -> None:
    client = verified_client(world["clinician"])
    assert b'href="/alarms/history/"' in client.get("/alarms/").content
    assert b'href="/alarms/history/?patient=pt-a"' in client.get("/patients/pt-a/").content
