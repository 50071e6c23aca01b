"""The SpO2 and battery fields of the alarm rules: shipped defaults, the rules editor (per ward and
per patient), validation and audit, the explanation page naming the metric."""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

import pytest

from alerts.models import RULE_DEFAULTS, RULE_FIELDS, AlarmRule
from alerts.services import alarm_raise, rule_current_ward, rule_validate
from alerts.views import RULE_LABELS, RULE_SECTIONS
from audit.models import AuditEvent
from telemetry.models import Patient
from tests import factories
from tests.alarm_factories import staff, verified_client

pytestmark = pytest.mark.django_db
VITAL_FIELDS = (
    "spo2_low_threshold",
    "spo2_low_delay_s",
    "spo2_critical_threshold",
    "spo2_critical_delay_s",
    "spo2_clear_margin",
    "battery_low_threshold",
    "battery_low_delay_s",
)


@pytest.fixture
def world() -> dict[str, Any]:
    ward = factories.ward("icu-a")
    factories.device(ward_code="icu-a", patient="pt-a")
    return {"ward": ward, "admin": staff("admin", "admin"), "clinician": staff("clin-a", "clinician", [ward])}


def test_shipped_defaults_and_the_migration_agree() -> None:
    migration = importlib.import_module("alerts.migrations.0003_vital_signs")
    assert {name: spec[1] for name, spec in migration.DEFAULTS.items()} == {f: RULE_DEFAULTS[f] for f in VITAL_FIELDS}
    assert (RULE_DEFAULTS["spo2_low_threshold"], RULE_DEFAULTS["spo2_critical_threshold"]) == (90.0, 80.0)
    clean, errors = rule_validate(dict(RULE_DEFAULTS))
    assert errors == {} and clean == RULE_DEFAULTS


def test_every_field_has_a_label_and_one_place_in_the_editor() -> None:
    placed = [name for _, names in RULE_SECTIONS for name in names]
    assert sorted(placed) == sorted(RULE_FIELDS) and len(placed) == len(set(placed))
    assert set(RULE_LABELS) == set(RULE_FIELDS)


def test_existing_wards_have_the_new_fields_at_their_defaults(world: dict[str, Any]) -> None:
    rule = rule_current_ward(world["ward"])
    assert {f: rule.values()[f] for f in VITAL_FIELDS} == {f: RULE_DEFAULTS[f] for f in VITAL_FIELDS}


def test_editor_shows_the_spo2_and_battery_fields_and_saves_a_version(world: dict[str, Any]) -> None:
    admin = verified_client(world["admin"])
    page = admin.get("/alarms/rules/?ward=icu-a").content.decode()
    for name in VITAL_FIELDS:
        assert f'name="{name}" value="{RULE_DEFAULTS[name]}"' in page
    assert ">SpO2</th>" in page and ">Sensor battery</th>" in page
    values = rule_current_ward(world["ward"]).values() | {"spo2_low_threshold": 88, "battery_low_delay_s": 300}
    saved = admin.post("/alarms/rules/", {"ward": "icu-a", **values, "reason": "COPD ward: SpO2 target 88-92 %"})
    assert saved.status_code == 302
    current = rule_current_ward(world["ward"])
    assert (current.version, current.spo2_low_threshold, current.battery_low_delay_s) == (2, 88.0, 300)
    event = AuditEvent.objects.get(action="alarm_rule.updated", outcome="allowed")
    assert event.detail["changes"] == {"spo2_low_threshold": [90.0, 88.0], "battery_low_delay_s": [60, 300]}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"spo2_critical_threshold": 90}, "spo2_critical_threshold", "must be below the low threshold"),
        ({"spo2_low_threshold": 99, "spo2_clear_margin": 2}, "spo2_clear_margin", "within 100 %"),
        ({"spo2_low_threshold": 40}, "spo2_low_threshold", "between 50 and 99"),
        ({"battery_low_threshold": 20}, "battery_low_threshold", "between 500 and 20000"),
        ({"spo2_low_delay_s": 2.5}, "spo2_low_delay_s", "whole number of seconds"),
        ({"battery_low_delay_s": ""}, "battery_low_delay_s", "a number is required"),
    ],
)
def test_invalid_vital_values_are_refused_field_by_field_and_audited(
    world: dict[str, Any], change: dict[str, Any], field: str, message: str
) -> None:
    admin = verified_client(world["admin"])
    values = rule_current_ward(world["ward"]).values() | change
    response = admin.post("/alarms/rules/", {"ward": "icu-a", **values})
    assert response.status_code == 400
    assert message in response.context["sections"][_section_of(field)][1][_index_in_section(field)]["error"]
    assert AlarmRule.objects.filter(ward=world["ward"], patient__isnull=True).count() == 1
    denied = AuditEvent.objects.get(action="alarm_rule.updated", outcome="denied")
    assert field in denied.detail["errors"]


def _section_of(field: str) -> int:
    return next(i for i, (_, names) in enumerate(RULE_SECTIONS) if field in names)


def _index_in_section(field: str) -> int:
    return RULE_SECTIONS[_section_of(field)][1].index(field)


def test_a_patient_override_carries_its_own_spo2_limit(world: dict[str, Any]) -> None:
    admin = verified_client(world["admin"])
    values = rule_current_ward(world["ward"]).values() | {"spo2_low_threshold": 85, "spo2_critical_threshold": 75}
    assert admin.post("/alarms/rules/", {"patient": "pt-a", **values}).status_code == 302
    override = AlarmRule.objects.get(patient__pseudonym="pt-a")
    assert (override.spo2_low_threshold, override.spo2_critical_threshold) == (85.0, 75.0)
    assert rule_current_ward(world["ward"]).spo2_low_threshold == 90.0


def test_explain_page_names_the_metric(world: dict[str, Any]) -> None:
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-a")
    now = dt.datetime.now(dt.UTC)
    explain = {
        "kind": "battery_low",
        "metric": "battery",
        "unit": "mV",
        "threshold": 3500.0,
        "delay_s": 60,
        "samples": [],
    }
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(world["ward"]), kind="battery_low", onset=now, now=now, explain=explain
    )
    page = verified_client(world["clinician"]).get(f"/alarms/{alarm.pk}/").content.decode()
    assert '<dd id="explain-metric">Sensor battery (mV)</dd>' in page
    assert "3500.0 mV" in page
