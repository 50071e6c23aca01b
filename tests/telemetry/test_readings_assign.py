"""Unassigned readings can be given to a patient later; rollups follow on plain PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from audit.models import AuditEvent
from telemetry.engine import RollupProcessor, engine_batch
from telemetry.models import Device, Patient
from telemetry.selectors import patient_series
from telemetry.services import readings_assign
from tests import factories
from tests.readings import insert_readings, signal

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(seconds=10)


def _commit(rows):
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, rows)


def _unassigned_rolled_up(device_pk: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(n), 0) FROM telemetry_rollup_1m WHERE device_id = %s::bigint AND patient_id IS NULL",
            [device_pk],
        )
        return int(cursor.fetchone()[0])


def test_assigning_moves_readings_and_rebuilds_rollups_with_nothing_counted_twice():
    spare = factories.device(patient=None)
    factories.device(ward_code=spare.ward_code, patient="p-late")
    device = Device.objects.get(device_id=spare.device_id)
    patient = Patient.objects.get(pseudonym="p-late")
    rows = signal(device_id=device.pk, patient_id=None, start=T0, count=1080, step=STEP, seed=3)  # 3 h
    _commit(rows[:720])
    engine_batch([RollupProcessor()], now=T0 + dt.timedelta(hours=4))  # first two hours rolled up
    _commit(rows[720:])  # the third hour is not yet processed by the engine
    assert _unassigned_rolled_up(device.pk) == 720

    cut = T0 + dt.timedelta(minutes=30, seconds=5)  # mid-bucket: that minute is split
    end = T0 + dt.timedelta(hours=2, minutes=30)
    moved = readings_assign(device_id=device.device_id, pseudonym="p-late", start=cut, end=end)
    expected = [r for r in rows if cut <= r.sample_time < end]
    assert moved == len(expected)
    engine_batch([RollupProcessor()], now=T0 + dt.timedelta(hours=4))

    series = patient_series(
        patient_id=patient.pk, metric="tissue_o2", start=T0, end=T0 + dt.timedelta(hours=3), max_points=500
    )
    assert series.resolution == "1m"
    assert sum(p["count"] for p in series.points) == len(expected)
    assert min(p["min"] for p in series.points) == pytest.approx(min(r.value for r in expected))
    remaining = [r for r in rows if not cut <= r.sample_time < end]
    assert _unassigned_rolled_up(device.pk) == len(remaining)
    event = AuditEvent.objects.get(action="readings.assigned")
    assert (event.subject, event.detail["readings"]) == ("p-late", len(expected))


def test_command_prints_json(capsys):
    spare = factories.device(patient=None)
    factories.device(ward_code=spare.ward_code, patient="p-cmd")
    device = Device.objects.get(device_id=spare.device_id)
    _commit(signal(device_id=device.pk, patient_id=None, start=T0, count=6, step=STEP, seed=4))
    call_command(
        "assign_readings",
        spare.device_id,
        "p-cmd",
        "--from",
        "2026-03-01T00:00:00Z",
        "--to",
        "2026-03-02T00:00:00Z",
        "--json",
    )
    assert '"assigned": 6' in capsys.readouterr().out
    assert readings_assign(device_id=spare.device_id, pseudonym="p-cmd", start=T0, end=T0 + STEP * 10) == 0
