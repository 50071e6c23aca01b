"""History, annotation and patient-list APIs and the dashboard pages: scope, audit, parameters."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

import pytest
from django.test import Client

from telemetry.models import Annotation
from tests.live_support import audit_events, insert_readings, login, patient, persona

pytestmark = pytest.mark.django_db


def _q(**params: str) -> str:
    return "?" + urlencode(params)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_raw_series_for_short_span_is_audited(clinician, p1):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    insert_readings(*p1, [(now - dt.timedelta(seconds=60 - i), 60.0 + i / 10) for i in range(60)])
    client = Client()
    login(client, clinician)
    r = client.get(f"/api/v1/patients/p-one/series{_q(start=_iso(now - dt.timedelta(minutes=5)), end=_iso(now))}")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["resolution"] == "raw"
    assert len(body["points"]) == 60
    assert set(body["points"][0]) == {"t", "value", "quality"}
    assert body["points"][0]["value"] == 60.0
    events = audit_events("series.read")
    assert [(e.outcome, e.subject, e.actor_id) for e in events] == [("allowed", "p-one", clinician.user.pk)]


def test_day_view_keeps_a_short_desaturation_in_the_envelope(clinician, p1):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(hours=24)
    # One reading every 10 s for a day at 65 %, with a 20-second dip to 30 % six hours ago.
    dip = now - dt.timedelta(hours=6)
    points = []
    for i in range(0, 24 * 360):
        t = start + dt.timedelta(seconds=10 * i)
        points.append((t, 30.0 if dip <= t < dip + dt.timedelta(seconds=20) else 65.0))
    insert_readings(*p1, points)
    client = Client()
    login(client, clinician)
    r = client.get(f"/api/v1/patients/p-one/series{_q(start=_iso(start), end=_iso(now))}")
    body = r.json()
    assert body["resolution"] == "1m"
    assert len(body["points"]) <= 5000
    assert set(body["points"][0]) == {"t", "avg", "min", "max", "count", "quality"}
    assert min(p["min"] for p in body["points"]) == 30.0
    assert min(p["avg"] for p in body["points"]) > 30.0  # the average alone would hide how deep it went


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"metric": "blood_type"}, "invalid_metric"),
        ({"start": "yesterday"}, "invalid_time"),
        ({"start": "2026-01-01T00:00:00"}, "invalid_time"),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "invalid_range"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "range_too_long"),
        ({"max_points": "0000109999999"}, "invalid_max_points"),
        ({"max_points": "-5"}, "invalid_max_points"),
        ({"start": "9" * 500}, "invalid_time"),
        ({"end": "\x00"}, "invalid_parameter"),  # refused by config.middleware before the view
        ({"end": "0001-01-01T00:00:00+01:00"}, "invalid_time"),
        ({"end": "0001-01-01T00:00:00Z"}, "invalid_time"),
        ({"start": "9999-12-31T23:59:59-05:00"}, "invalid_time"),
    ],
)
def test_bad_parameters_are_400_with_stable_codes(clinician, p1, params, code):
    client = Client()
    login(client, clinician)
    r = client.get(f"/api/v1/patients/p-one/series{_q(**params)}")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code


def test_offset_with_unencoded_plus_is_accepted(clinician, p1):
    client = Client()
    login(client, clinician)
    r = client.get("/api/v1/patients/p-one/series?start=2026-01-01T00:00:00+01:00&end=2026-01-01T00:30:00+01:00")
    assert r.status_code == 200
    assert r.json()["start"] == "2025-12-31T23:00:00.000Z"


@pytest.mark.parametrize("path", ["series", "annotations"])
def test_denials_are_json_and_audited(ward_a, ward_b, p1, path):
    other = persona("clinician", ward_b)
    compliance = persona("compliance")
    unverified = persona("clinician", ward_a)
    cases = [(None, 401, "not_authenticated"), (other, 403, "forbidden"), (compliance, 403, "forbidden")]
    cases.append((unverified, 403, "mfa_required"))
    for who, status, code in cases:
        client = Client()
        if who is not None:
            login(client, who, verified=who is not unverified)
        r = client.get(f"/api/v1/patients/p-one/{path}")
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    action = "series.read" if path == "series" else "annotations.read"
    events = audit_events(action)
    assert [e.outcome for e in events] == ["denied"] * 4
    assert [e.detail["reason"] for e in events] == [
        "not_authenticated",
        "other_ward",
        "role_compliance",
        "mfa_required",
    ]


def test_unknown_patient_is_refused_like_a_forbidden_one(clinician):
    client = Client()
    login(client, clinician)
    r = client.get("/api/v1/patients/nobody/series")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert audit_events("series.read")[0].detail["reason"] == "unknown_patient"


def test_annotations_in_range(clinician, p1):
    now = dt.datetime.now(dt.UTC)
    patient_obj, device = p1
    Annotation.objects.create(patient=patient_obj, device=device, kind="firmware", time=now, text="fw 1 → 2")
    Annotation.objects.create(patient=patient_obj, kind="note", time=now - dt.timedelta(days=3), text="old")
    client = Client()
    login(client, clinician)
    r = client.get(f"/api/v1/patients/p-one/annotations{_q(start=_iso(now - dt.timedelta(hours=1)))}")
    body = r.json()
    assert [(a["kind"], a["text"]) for a in body["annotations"]] == [("firmware", "fw 1 → 2")]
    assert body["alarm_periods"] == []
    # The ward's default alarm rule (alerts.models.RULE_DEFAULTS) as value bands.
    assert [(t["low"], t["high"], t["priority"]) for t in body["thresholds"]] == [
        (0.0, 25.0, "high"),
        (25.0, 35.0, "medium"),
    ]
    assert audit_events("annotations.read")[0].outcome == "allowed"


def test_patient_list_is_ward_scoped_with_latest_trend_and_age(clinician, p1, ward_a, ward_b):
    now = dt.datetime.now(dt.UTC)
    patient("p-zero", ward_a)  # no data yet
    patient("p-elsewhere", ward_b)
    # Falling 2 %/min over the last five minutes.
    ages = [300 - 10 * i for i in range(30)]
    insert_readings(*p1, [(now - dt.timedelta(seconds=age), 70 + age / 30) for age in ages])
    client = Client()
    login(client, clinician)
    body = client.get("/api/v1/patients/").json()
    cards = {c["pseudonym"]: c for c in body["patients"]}
    assert list(cards) == ["p-one", "p-zero"]
    one = cards["p-one"]
    assert one["unit"] == "%" and one["quality"] == pytest.approx(0.95)
    assert one["value"] == pytest.approx(70 + 10 / 30, abs=0.01)
    assert one["trend"]["direction"] == "down"
    assert one["stale"] is False and one["age_seconds"] < 30
    assert 9 <= len(one["sparkline"]) <= 11
    assert cards["p-zero"]["value"] is None and cards["p-zero"]["stale"] is True
    event = audit_events("patients.list")[0]
    assert event.outcome == "allowed" and event.detail["patients"] == ["p-one", "p-zero"]


def test_chart_page_is_audited_and_scoped(clinician, p1, ward_b):
    client = Client()
    login(client, clinician)
    r = client.get("/patients/p-one/")
    assert r.status_code == 200
    assert b"vendor/plotly.min.js" in r.content and b"chart-config" in r.content
    other = Client()
    login(other, persona("clinician", ward_b))
    assert other.get("/patients/p-one/").status_code == 403
    anonymous = Client().get("/patients/p-one/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    assert [e.outcome for e in audit_events("chart.view")] == ["allowed", "denied", "denied"]


def test_overview_page_lists_cards_and_redirects_unverified(clinician, p1, ward_a):
    client = Client()
    login(client, clinician)
    r = client.get("/")
    assert r.status_code == 200 and b'"pseudonym": "p-one"' in r.content
    unverified = Client()
    login(unverified, persona("clinician", ward_a), verified=False)
    assert unverified.get("/").status_code == 302
    assert [e.outcome for e in audit_events("ward.view")] == ["allowed", "denied"]


def test_openapi_documents_the_dashboard_api(clinician):
    r = Client().get("/api/schema/")
    text = r.content.decode()
    for path in (
        "/api/v1/patients/",
        "/api/v1/patients/{pseudonym}/series",
        "/api/v1/patients/{pseudonym}/annotations",
    ):
        assert f"{path}:" in text


def test_open_alarms_sort_cards_and_shade_the_chart(clinician, p1, ward_a):
    from alerts.models import Kind
    from alerts.services import alarm_raise, rule_effective

    now = dt.datetime.now(dt.UTC)
    two, _ = patient("p-two", ward_a)
    three, _ = patient("p-three", ward_a)
    onset = now - dt.timedelta(minutes=3)
    alarm_raise(patient=two, rule=rule_effective(two), kind=Kind.LOW, onset=onset, now=now, explain={})
    critical = alarm_raise(
        patient=three, rule=rule_effective(three), kind=Kind.CRITICAL_LOW, onset=onset, now=now, explain={}
    )
    alarm_raise(patient=three, rule=rule_effective(three), kind=Kind.SIGNAL_QUALITY, onset=onset, now=now, explain={})
    client = Client()
    login(client, clinician)
    cards = client.get("/api/v1/patients/").json()["patients"]
    assert [c["pseudonym"] for c in cards] == ["p-three", "p-two", "p-one"]
    assert cards[0]["alarm"] == {
        "priority": "high",
        "state": "active_unacknowledged",
        "count": 2,
        "label": "Tissue O2 critically low",
        "since": selectors_iso(now),
    }
    assert cards[1]["alarm"]["priority"] == "medium" and cards[2]["alarm"] is None

    r = client.post(f"/api/v1/alarms/{critical.pk}/acknowledge", {"note": "seen"}, content_type="application/json")
    assert r.status_code == 200, r.content
    body = client.get(f"/api/v1/patients/p-three/annotations{_q(start=_iso(now - dt.timedelta(hours=1)))}").json()
    periods = sorted((p["priority"], p["end"]) for p in body["alarm_periods"])
    assert periods == [("high", None), ("low", None)]
    kinds = [a["kind"] for a in body["annotations"]]
    assert "alarm" in kinds and "acknowledgement" in kinds
    cards = client.get("/api/v1/patients/").json()["patients"]
    assert cards[0]["alarm"]["state"] == "acknowledged"


def selectors_iso(t: dt.datetime) -> str:
    from dashboard.selectors import iso

    return iso(t)
