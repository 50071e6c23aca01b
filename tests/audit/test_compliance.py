"""Compliance officer's questions, break-glass, identity reveal, device administration."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle

from audit.access.policy import (
    actor_from_request,
    patient_access,
    patient_access_audited,
    patients_visible_to,
    user_role,
)
from audit.models import AuditEvent, BreakGlassGrant
from audit.trail import Actor, audit_record
from telemetry.models import DeviceKey, Patient, PatientIdentity
from tests import factories, personas

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    factories.ward("ward-a")
    factories.ward("ward-b")
    dev = factories.device("ward-a", patient="pt-a")
    PatientIdentity.objects.create(
        patient=Patient.objects.get(pseudonym="pt-a"),
        name="Ada Example",
        mrn="MRN-1",
        date_of_birth=dt.date(1950, 1, 2),
    )
    return {
        "device": dev,
        "clinician": personas.staff("dr-a", "clinician", ["ward-a"]),
        "oncall": personas.staff("nurse-a", "oncall", ["ward-a"]),
        "other": personas.staff("dr-b", "clinician", ["ward-b"]),
        "compliance": personas.staff("officer", "compliance"),
        "devadmin": personas.staff("devadmin", "device_admin"),
    }


def _actor(user, address="10.0.0.1") -> Actor:
    return Actor(user.pk, user.username, user_role(user), address, "ua")


# ---- break glass ----------------------------------------------------------------------------


def test_break_glass_grants_time_limited_access_to_one_patient(world):
    officer = world["compliance"]
    client = personas.verified_client(officer)
    patient = Patient.objects.get(pseudonym="pt-a")
    assert patient_access(_verified(officer), patient).allowed is False
    r = client.post(
        "/audit/break-glass/",
        {"pseudonym": "pt-a", "reason": "privacy_investigation", "purpose": "Complaint 2026-17 review", "minutes": 30},
    )
    assert r.status_code == 302 and r["Location"] == "/patients/pt-a/"
    grant = BreakGlassGrant.objects.get()
    assert 29 * 60 < (grant.expires_at - grant.granted_at).total_seconds() <= 30 * 60
    event = AuditEvent.objects.get(action="break_glass.granted")
    assert event.break_glass and event.subject == "pt-a" and event.purpose == "Complaint 2026-17 review"
    decision = patient_access(_verified(officer), patient)
    assert decision.allowed and decision.break_glass
    _, audited = patient_access_audited(
        user=_verified(officer), actor=_actor(officer), pseudonym="pt-a", action="patient.chart"
    )
    assert audited.break_glass and AuditEvent.objects.filter(action="patient.chart").get().break_glass
    # Another patient stays closed; and the grant expires.
    factories.device("ward-b", patient="pt-b")
    assert not patient_access(_verified(officer), Patient.objects.get(pseudonym="pt-b")).allowed
    BreakGlassGrant.objects.update(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert not patient_access(_verified(officer), patient).allowed
    # Highlighted in the audit trail.
    page = client.get("/audit/?break_glass=1").content.decode()
    assert "BREAK-GLASS" in page and 'class="break-glass"' in page


@pytest.mark.parametrize(
    "data",
    [
        {"pseudonym": "pt-a", "reason": "emergency_care", "purpose": "short", "minutes": 30},
        {"pseudonym": "pt-a", "reason": "because", "purpose": "A long enough purpose", "minutes": 30},
        {"pseudonym": "nobody", "reason": "emergency_care", "purpose": "A long enough purpose", "minutes": 30},
        {"pseudonym": "pt-a", "reason": "emergency_care", "purpose": "A long enough purpose", "minutes": 100000},
    ],
)
def test_break_glass_refusals_are_audited_and_grant_nothing(world, data):
    client = personas.verified_client(world["compliance"])
    r = client.post("/audit/break-glass/", data)
    assert r.status_code == 400
    assert not BreakGlassGrant.objects.exists()
    event = AuditEvent.objects.get(action="break_glass.requested")
    assert event.outcome == "denied" and event.break_glass


def _grant(officer) -> BreakGlassGrant:
    r = personas.verified_client(officer).post(
        "/audit/break-glass/",
        {"pseudonym": "pt-a", "reason": "incident_review", "purpose": "Incident 2026-31 review", "minutes": 60},
    )
    assert r.status_code == 302
    return BreakGlassGrant.objects.get(user=officer)


def _fresh(user):
    return _verified(type(user).objects.get(pk=user.pk))


def test_a_grant_is_honoured_only_while_the_role_still_breaks_the_glass(world):
    officer = world["compliance"]
    _grant(officer)
    patient = Patient.objects.get(pseudonym="pt-a")
    assert patient_access(_fresh(officer), patient).break_glass
    # The role loses the capability (a group changed by hand, not through staff_upsert).
    officer.groups.set([Group.objects.get(name="device_admin")])
    decision = patient_access(_fresh(officer), patient)
    assert not decision.allowed and decision.reason == "role_device_admin"
    assert "pt-a" not in {p.pseudonym for p in patients_visible_to(_fresh(officer))}


def test_a_change_of_role_ends_the_grants_and_audits_it(world):
    officer = world["compliance"]
    grant = _grant(officer)
    personas.staff("officer", "compliance")  # the same role again: the grant stays
    grant.refresh_from_db()
    assert grant.ended_at is None
    personas.staff("officer", "admin")  # admins break the glass too, but this grant was not theirs
    grant.refresh_from_db()
    assert grant.ended_at is not None
    ended = AuditEvent.objects.get(action="break_glass.ended")
    assert (
        ended.subject == "pt-a" and ended.break_glass and ended.detail == {"grant": grant.id, "cause": "role_changed"}
    )
    assert not patient_access(_fresh(officer), Patient.objects.get(pseudonym="pt-a")).allowed


def _verified(user):
    """The user as a verified request would carry it."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user.otp_device = TOTPDevice.objects.get(user=user)
    user.is_verified = lambda: True
    return user


# ---- identity ------------------------------------------------------------------------------


def _reveal(client, pseudonym="pt-a", purpose="bedside check"):
    return client.post(f"/api/v1/patients/{pseudonym}/identity", {"purpose": purpose}, content_type="application/json")


def test_ward_clinician_reveals_identity_with_purpose(world):
    r = _reveal(personas.verified_client(world["clinician"]))
    assert r.status_code == 200
    assert r.json() == {"pseudonym": "pt-a", "name": "Ada Example", "mrn": "MRN-1", "date_of_birth": "1950-01-02"}
    event = AuditEvent.objects.get(action="identity.reveal")
    assert (event.outcome, event.subject, event.purpose) == ("allowed", "pt-a", "bedside check")


@pytest.mark.parametrize(
    "who, purpose, status, code",
    [
        ("clinician", "", 400, "purpose_required"),
        ("oncall", "bedside check", 403, "forbidden"),
        ("other", "bedside check", 403, "forbidden"),
        ("compliance", "bedside check", 403, "forbidden"),
        ("devadmin", "bedside check", 403, "forbidden"),
    ],
)
def test_identity_refusals_are_audited(world, who, purpose, status, code):
    r = _reveal(personas.verified_client(world[who]), purpose=purpose)
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert "Ada" not in r.content.decode()
    assert AuditEvent.objects.get(action="identity.reveal").outcome == "denied"


def test_identity_for_break_glass_holder_is_flagged(world):
    officer = world["compliance"]
    client = personas.verified_client(officer)
    client.post(
        "/audit/break-glass/",
        {"pseudonym": "pt-a", "reason": "patient_request", "purpose": "Subject access request 88", "minutes": 10},
    )
    r = _reveal(client, purpose="Subject access request 88")
    assert r.status_code == 200
    assert AuditEvent.objects.get(action="identity.reveal").break_glass


def test_unknown_pseudonym_answers_like_a_forbidden_one(world):
    r = _reveal(personas.verified_client(world["clinician"]), pseudonym="no-such")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# ---- who looked at patient X last week, and why ---------------------------------------------


def _reads(world):
    for who, purpose in (("clinician", "morning round"), ("oncall", ""), ("other", "")):
        user = _verified(world[who])
        patient_access_audited(user=user, actor=_actor(user), pseudonym="pt-a", action="patient.chart", purpose=purpose)


def test_who_accessed_report_answers_who_and_why(world):
    _reads(world)
    today = dt.date.today()
    client = personas.verified_client(world["compliance"])
    page = client.get(f"/audit/patients/pt-a/?start={today - dt.timedelta(days=7)}&end={today}").content.decode()
    for name in ("dr-a", "nurse-a", "dr-b"):
        assert name in page
    assert "morning round" in page
    # Yesterday-only range excludes today's reads.
    quiet = client.get(f"/audit/patients/pt-a/?end={today - dt.timedelta(days=1)}").content.decode()
    assert "Nobody accessed this patient" in quiet


def test_disclosure_accounting_lists_allowed_reads_with_purpose(world):
    _reads(world)
    client = personas.verified_client(world["compliance"])
    page = client.get("/audit/patients/pt-a/disclosures/").content.decode()
    assert "dr-a (clinician)" in page and "morning round" in page and "Treatment (ward care)" in page
    assert "dr-b" not in page  # the other ward's clinician was refused: nothing was disclosed
    rows = list(csv.reader(io.StringIO(client.get("/audit/patients/pt-a/disclosures/?format=csv").content.decode())))
    assert rows[0] == ["date", "recipient", "description", "purpose"]
    assert [r[1] for r in rows[1:]] == ["dr-a (clinician)", "nurse-a (oncall)"]


def test_reads_through_the_chart_and_its_api_are_accounted_as_disclosures(world):
    clinician = personas.verified_client(world["clinician"])
    assert clinician.get("/patients/pt-a/").status_code == 200
    assert clinician.get("/api/v1/patients/pt-a/series?metric=tissue_o2").status_code == 200
    assert clinician.get("/api/v1/patients/pt-a/annotations").status_code == 200
    officer = personas.verified_client(world["compliance"])
    rows = list(csv.reader(io.StringIO(officer.get("/audit/patients/pt-a/disclosures/?format=csv").content.decode())))
    assert [(r[1], r[2]) for r in rows[1:]] == [
        ("dr-a (clinician)", "Viewed the patient chart"),
        ("dr-a (clinician)", "Read the patient's telemetry (history API)"),
        ("dr-a (clinician)", "Read the patient's chart annotations"),
    ]


def test_audit_search_filters_and_paginates(world):
    _reads(world)
    client = personas.verified_client(world["compliance"])
    page = client.get("/audit/?user=dr-b&outcome=denied").content.decode()
    assert "other_ward" in page and "morning round" not in page
    assert "verified" in page  # chain status
    for i in range(60):
        audit_record(actor=Actor(None, "system", "system"), action="bulk.event", detail={"i": i})
    assert "Page 1 of 2" in client.get("/audit/?action=bulk").content.decode()
    assert client.get("/audit/?start=not-a-date").status_code == 200
    assert "not a date" in client.get("/audit/?start=not-a-date").content.decode()


def test_exports_csv_and_valid_fhir_r4_bundle(world):
    _reads(world)
    client = personas.verified_client(world["compliance"])
    body = b"".join(client.get("/audit/export.csv?patient=pt-a").streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert {r["actor_username"] for r in rows} >= {"dr-a", "nurse-a", "dr-b"}
    assert all(r["subject"] == "pt-a" for r in rows)
    r = client.get("/audit/export.fhir.json?patient=pt-a")
    assert r["Content-Type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(json.loads(r.content))
    assert len(bundle.entry) == len(rows) + 1  # + the CSV export itself, an access about pt-a
    events = [FhirAuditEvent.model_validate(e.resource.model_dump()) for e in bundle.entry]
    denied = [e for e in events if e.outcome == "4"]
    assert len(denied) == 1 and denied[0].agent[0].who.display == "dr-b"
    assert all(e.entity[0].what.identifier.value == "pt-a" for e in events)


def test_audit_events_api(world):
    _reads(world)
    client = personas.verified_client(world["compliance"])
    r = client.get("/api/v1/audit/events?patient=pt-a&action=patient.chart&limit=2")
    assert r.status_code == 200
    first = r.json()
    assert len(first["results"]) == 2 and first["next_before_id"] is not None
    rest = client.get(
        f"/api/v1/audit/events?patient=pt-a&action=patient.chart&limit=2&before_id={first['next_before_id']}"
    ).json()
    assert [e["actor_username"] for e in first["results"] + rest["results"]] == ["dr-b", "nurse-a", "dr-a"]
    bad = client.get("/api/v1/audit/events?start=yesterday-ish&limit=x")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"


# ---- devices ------------------------------------------------------------------------------


def test_device_admin_sees_devices_and_unassigned_counts_but_no_values(world):
    dev = factories.device("ward-a")  # no patient
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value,"
            " raw_unit, ingest_time, ingest_txid) SELECT id, NULL, 'tissue_o2', g,"
            " now() - g * interval '1 second', 41.237, 41.237, '%%', now(), 1"
            " FROM telemetry_device, generate_series(1, 7) g WHERE device_id = %s",
            [dev.device_id],
        )
    client = personas.verified_client(world["devadmin"])
    page = client.get("/devices/").content.decode()
    assert dev.device_id in page and world["device"].key_id in page
    assert "41.2" not in page and "pt-a" not in page
    assert "<td>7</td>" in page
    r = client.post(f"/devices/keys/{world['device'].key_id}/revoke")
    assert r.status_code == 302
    assert DeviceKey.objects.get(key_id=world["device"].key_id).revoked_at is not None
    event = AuditEvent.objects.get(action="device.key_revoked")
    assert event.actor_username == "devadmin" and event.subject == world["device"].device_id


def test_actor_source_address_trusts_only_the_rightmost_proxy_hop(rf, settings):
    request = rf.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="6.6.6.6, 192.0.2.7")
    settings.PERFUSE_TRUSTED_PROXIES = []
    assert actor_from_request(request).source_address == "10.0.0.5"
    settings.PERFUSE_TRUSTED_PROXIES = ["10.0.0.5"]
    assert actor_from_request(request).source_address == "192.0.2.7"
