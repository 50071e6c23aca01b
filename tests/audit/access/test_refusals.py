"""The one refusal primitive (config.refusal.Refusal) and the one alarm vocabulary."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
from django.test import Client

from alerts import lifecycle
from alerts.models import Alarm, AlarmPause
from alerts.selectors import alarms_open_timers
from alerts.services import alarm_raise, rule_current_ward
from alerts.vocabulary import KIND_PRIORITY, PRIORITY_RANK, Category, Kind, Priority, State
from audit.access.refusals import refusal_audit, refusals_audited
from audit.models import AuditEvent
from audit.trail import SYSTEM, Actor, audit_record
from config.refusal import Refusal
from telemetry.models import Patient
from tests import factories, personas

ROOT = Path(__file__).resolve().parents[3]


def _alarm(ward: str, pseudonym: str, kind: str) -> Alarm:
    factories.ward(ward)
    factories.device(ward, patient=pseudonym)
    patient = Patient.objects.select_related("ward").get(pseudonym=pseudonym)
    now = dt.datetime.now(dt.UTC)
    return alarm_raise(patient=patient, rule=rule_current_ward(patient.ward), kind=kind, onset=now, now=now, explain={})


@refusals_audited
def _half_done_act(*, actor: Actor) -> None:
    audit_record(actor=actor, action="test.partial_write")
    raise Refusal(action="test.act", reason="late_check", subject="pt-x", facts={"step": 2})


@pytest.mark.django_db
def test_a_refused_act_leaves_no_partial_write_and_its_denial_is_committed_once():
    with pytest.raises(Refusal) as refused:
        _half_done_act(actor=SYSTEM)
    assert not AuditEvent.objects.filter(action="test.partial_write").exists()
    denial = AuditEvent.objects.get(action="test.act")
    assert (denial.outcome, denial.subject, denial.detail) == ("denied", "pt-x", {"reason": "late_check", "step": 2})
    refusal_audit(refused.value, SYSTEM)  # a layer further up answering it again
    assert AuditEvent.objects.filter(action="test.act").count() == 1


@pytest.mark.django_db
def test_a_service_refusal_through_the_api_is_audited_once_with_the_contract_body(ward_a, ward_clinician):
    alarm = _alarm(ward_a.code, "pt-r", "low")
    client = personas.verified_client(ward_clinician)
    url = f"/api/v1/alarms/{alarm.pk}/acknowledge"
    assert client.post(url, {}, content_type="application/json").status_code == 200
    again = client.post(url, {}, content_type="application/json")
    assert again.status_code == 409
    assert again.json() == {"error": {"code": "already_acknowledged", "detail": "The alarm is acknowledged."}}
    denied = AuditEvent.objects.filter(action="alarm.acknowledged", outcome="denied")
    assert [e.detail["reason"] for e in denied] == ["already_acknowledged"]


@pytest.mark.django_db
def test_pages_answer_refusals_with_the_login_page_or_a_403_page(compliance_officer):
    assert Client().get("/alarms/").status_code == 302
    officer = personas.verified_client(compliance_officer)
    assert officer.get("/alarms/").status_code == 403
    event = AuditEvent.objects.filter(action="alarm.console_viewed").last()
    assert event is not None and event.detail == {"reason": "role_compliance", "path": "/alarms/"}


# ---- the alarm vocabulary ----------------------------------------------------------------------


def test_the_models_store_the_vocabulary():
    fields = {f.name: f for f in Alarm._meta.get_fields() if hasattr(f, "choices")}
    assert [v for v, _ in fields["kind"].choices] == [k.value for k in Kind]
    assert [v for v, _ in fields["priority"].choices] == [p.value for p in Priority]
    assert [v for v, _ in fields["category"].choices] == [c.value for c in Category]
    assert [v for v, _ in fields["state"].choices] == [s.value for s in State]
    assert AlarmPause._meta.get_field("priority").choices == Priority.choices()
    assert Alarm.State is State
    assert Kind("no_data").label == "No data from sensor" and State.ACKNOWLEDGED.label == "Acknowledged"
    assert sorted(Priority, key=PRIORITY_RANK.__getitem__) == [Priority.LOW, Priority.MEDIUM, Priority.HIGH]
    assert set(KIND_PRIORITY) == set(Kind)


@pytest.mark.parametrize("module", ["alerts/vocabulary.py", "alerts/evaluation.py", "alerts/lifecycle.py"])
def test_the_pure_alarm_modules_import_no_django(module):
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not [name for name in imported if name.split(".")[0] in {"django", "rest_framework", "channels"}]
    assert not [name for name in imported if name.startswith("alerts.") and name != "alerts.vocabulary"]


@pytest.mark.django_db
def test_one_alarm_view_of_a_row_and_of_the_engine_timer_row():
    alarm = _alarm("icu-v", "pt-v", "critical_low")
    [timers] = alarms_open_timers()
    assert lifecycle.AlarmView.of(alarm) == timers.view
    assert timers.view.latched and timers.priority_rank == PRIORITY_RANK[Priority.HIGH]
