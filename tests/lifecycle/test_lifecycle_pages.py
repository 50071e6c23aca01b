"""The legal-hold and retention pages: set and release with a reason, audited, shown; a second
open hold on the same target refused and audited; the retention job's findings shown."""

from __future__ import annotations

import datetime as dt

import pytest

from audit.models import AuditEvent
from telemetry.checks import retention_horizon_check
from telemetry.lifecycle.models import LegalHold, RetentionDay
from tests import factories, personas

pytestmark = pytest.mark.django_db


def test_compliance_sets_shows_and_releases_a_hold(ward_a, compliance_officer):
    factories.device("icu-a", patient="p-h1")
    client = personas.verified_client(compliance_officer)
    response = client.post("/lifecycle/holds/", {"pseudonym": "p-h1", "reason": "subpoena 42"})
    assert response.status_code == 302
    hold = LegalHold.objects.get()
    assert (hold.scope, hold.patient.pseudonym, hold.reason, hold.set_by) == (
        "patient",
        "p-h1",
        "subpoena 42",
        "compliance-officer",
    )
    event = AuditEvent.objects.filter(action="legal_hold.set").get()
    assert (event.subject, event.purpose, event.outcome) == ("p-h1", "subpoena 42", "allowed")

    # One open hold per patient: a second is refused, and the refusal audited.
    client.post("/lifecycle/holds/", {"pseudonym": "p-h1", "reason": "again"})
    assert LegalHold.objects.count() == 1
    assert AuditEvent.objects.filter(action="legal_hold.set", outcome="denied").count() == 1

    page = client.get("/lifecycle/holds/")
    assert page.status_code == 200 and b"subpoena 42" in page.content and b"patient p-h1" in page.content

    # Released only with a reason.
    client.post(f"/lifecycle/holds/{hold.pk}/release", {"reason": ""})
    hold.refresh_from_db()
    assert hold.released_at is None
    client.post(f"/lifecycle/holds/{hold.pk}/release", {"reason": "case closed"})
    hold.refresh_from_db()
    assert (hold.released_by, hold.release_reason) == ("compliance-officer", "case closed")
    assert hold.released_at is not None
    released = AuditEvent.objects.filter(action="legal_hold.released", outcome="allowed").get()
    assert (released.subject, released.purpose) == ("p-h1", "case closed")


def test_a_ward_hold_and_the_target_rules(ward_a, compliance_officer):
    client = personas.verified_client(compliance_officer)
    assert client.post("/lifecycle/holds/", {"ward": "icu-a", "reason": "inquiry"}).status_code == 302
    assert LegalHold.objects.get().ward == ward_a
    # Both a patient and a ward, or neither: refused.
    assert client.post("/lifecycle/holds/", {"ward": "icu-a", "pseudonym": "x", "reason": "r"}).status_code == 400
    assert client.post("/lifecycle/holds/", {"ward": "nowhere", "reason": "r"}).status_code == 302
    assert LegalHold.objects.count() == 1


def test_the_retention_page_shows_classes_and_ward_days(admin):
    RetentionDay.objects.create(
        day=dt.date(2026, 11, 1),
        ward="icu-a",
        archived=True,
        verified=True,
        held=True,
        hot_readings=510,
        checked_at=dt.datetime.now(dt.UTC),
    )
    page = personas.verified_client(admin).get("/lifecycle/retention/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "PERFUSE_RETENTION_READINGS_DAYS" in text and "never deleted by Perfuse" in text
    assert "2026-11-01" in text and "held" in text
    assert AuditEvent.objects.filter(action="retention.view").count() == 1


def test_the_deploy_check_warns_of_a_retention_inside_the_ingest_horizon(settings):
    settings.PERFUSE_INGEST_MAX_AGE_DAYS = 30
    settings.PERFUSE_RETENTION_READINGS_DAYS = 30
    assert [w.id for w in retention_horizon_check(None)] == ["telemetry.W102"]
    settings.PERFUSE_RETENTION_READINGS_DAYS = 31
    assert retention_horizon_check(None) == []
