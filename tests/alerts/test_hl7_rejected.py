"""The technical alarm of the results feed (alerts/integration.py): raised by the engine's tick for
each dead letter once, shown like any alarm (console list, explain page, detail API) to the
patient's ward, and cleared when the EHR accepts a later message of the patient."""

from __future__ import annotations

import datetime as dt

import pytest

from alerts.integration import IntegrationAlarmProcessor, hl7_rejections_alarm
from alerts.models import Alarm
from alerts.vocabulary import Kind
from telemetry.hl7.outbox import control_id_for
from telemetry.models import OruMessage, Patient
from tests import factories
from tests.alarm_factories import staff, verified_client

pytestmark = pytest.mark.django_db
NOW = dt.datetime.now(dt.UTC)


def _message(patient: Patient, pk: int, state: str) -> OruMessage:
    return OruMessage.objects.create(
        id=pk,
        control_id=control_id_for(pk),
        patient=patient,
        interval_start=NOW,
        interval_end=NOW + dt.timedelta(minutes=1),
        payload={"pseudonym": patient.pseudonym, "ward": patient.ward.code, "bed": "", "observations": []},
        state=state,
        created_at=NOW,
        next_attempt_at=NOW,
        last_error="ERR||PID^1^3|204^Unknown key identifier^HL70357|E",
    )


def test_each_dead_letter_raises_or_extends_one_alarm_shown_to_the_ward_and_a_later_aa_clears_it() -> None:
    ward = factories.ward("icu-rej")
    factories.device(ward_code="icu-rej", patient="pt-rej")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-rej")
    _message(patient, 9001, "dead")
    assert hl7_rejections_alarm(now=NOW) == 1
    assert hl7_rejections_alarm(now=NOW) == 0  # alarmed once
    _message(patient, 9002, "dead")
    IntegrationAlarmProcessor().tick(now=NOW + dt.timedelta(seconds=1))
    [alarm] = Alarm.objects.filter(kind=Kind.HL7_REJECTED)
    assert alarm.explain["control_ids"] == [control_id_for(9001), control_id_for(9002)]
    assert "Unknown key identifier" in alarm.explain["error"]

    clinician = staff("rej-clinician", "clinician", [ward])
    client = verified_client(clinician)
    page = client.get(f"/alarms/{alarm.pk}/")
    assert page.status_code == 200 and "Results rejected by the EHR" in page.content.decode()
    detail = client.get(f"/api/v1/alarms/{alarm.pk}").json()["alarm"]
    assert (detail["kind"], detail["category"], detail["priority"]) == ("hl7_rejected", "technical", "low")

    _message(patient, 9003, "done")
    hl7_rejections_alarm(now=NOW + dt.timedelta(seconds=2))
    alarm.refresh_from_db()
    assert not alarm.condition_present and alarm.state != "resolved"  # the timers resolve it later


def test_the_tick_skips_the_check_only_when_nothing_is_dead_or_open() -> None:
    # The tick's cheap gate (alerts/integration.py _work): a dead letter or an open condition
    # each make it run the full check; with neither it writes nothing.
    factories.ward("icu-gate")
    factories.device(ward_code="icu-gate", patient="pt-gate")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-gate")
    processor = IntegrationAlarmProcessor()
    _message(patient, 9101, "done")
    processor.tick(now=NOW)
    assert not Alarm.objects.filter(kind=Kind.HL7_REJECTED).exists()
    _message(patient, 9102, "dead")
    processor.tick(now=NOW + dt.timedelta(seconds=1))
    [alarm] = Alarm.objects.filter(kind=Kind.HL7_REJECTED)
    assert alarm.condition_present
    _message(patient, 9103, "done")  # accepted after the rejection: only the open condition is left
    processor.tick(now=NOW + dt.timedelta(seconds=2))
    alarm.refresh_from_db()
    assert not alarm.condition_present
