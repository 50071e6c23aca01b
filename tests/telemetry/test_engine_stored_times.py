"""The stream engine and its alarm processor survive any time stored in telemetry_reading.

Ingest only stores sample times inside its horizon, but a row written another way (a restore, a
hand-made fix, a bug of an older release) can hold any time PostgreSQL accepts. A batch that
raises is rolled back and retried by the engine, so a row the processors cannot digest would be
retried for ever and hold every reading behind it; these tests commit such rows and ask that the
batch goes through and that alarms still work for the readings that follow.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection, transaction

from alerts.engine import AlarmProcessor
from alerts.models import Alarm
from telemetry.engine import RollupProcessor, engine_batch, engine_tick
from telemetry.models import Device, Patient
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def _commit_at(device: Device, patient: Patient, first: str, values: list[float], *, first_seq: int) -> None:
    """Readings one second apart from `first` (a PostgreSQL timestamptz literal), and their log row."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, "
            "raw_unit, signal_quality) SELECT %s, %s, 'tissue_o2', %s + i, "
            "%s::timestamptz + (i - 1) * interval '1 second', v, v, '%%', 0.95 "
            "FROM unnest(%s::float8[]) WITH ORDINALITY AS u(v, i)",
            [device.pk, patient.pk, first_seq - 1, first, values],
        )
        cursor.execute(
            "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
            "SELECT device_id, min(sample_time), max(sample_time), count(*) FROM telemetry_reading "
            "WHERE ingest_txid = pg_current_xact_id()::text::bigint GROUP BY device_id"
        )


@pytest.mark.parametrize(
    "stored_time",
    [
        "0001-01-01 00:00:00+00",  # the first instant Python can hold
        "1970-01-01 00:00:00+00",
        "9999-12-31 23:58:00+00",  # a desaturation that clears just before Python's last instant
        "20000-01-01 00:00:00+00",  # beyond Python's datetime, fine for PostgreSQL
        "infinity",
        "-infinity",
    ],
)
def test_a_batch_holding_any_stored_time_goes_through_and_alarms_still_work(stored_time: str) -> None:
    dev = factories.device(patient="pt-any-time")
    device = Device.objects.get(device_id=dev.device_id)
    patient = Patient.objects.get(pseudonym="pt-any-time")
    processors = [RollupProcessor(), AlarmProcessor()]
    now = dt.datetime.now(dt.UTC)
    # Critically low for 30 s, then normal for 60 s: raised and cleared within the odd stretch.
    _commit_at(device, patient, stored_time, [10.0] * 30 + [60.0] * 60, first_seq=1)

    batch = engine_batch(processors, now=now)
    engine_tick(processors, now=now)

    assert batch.caught_up and batch.transactions == 1
    assert engine_batch(processors, now=now).transactions == 0  # the watermark moved past it
    # Nothing raised from readings outside the horizon (the patient's silence is another matter).
    assert not Alarm.objects.filter(patient=patient).exclude(kind="no_data").exists()

    # The same processors still raise an alarm on a real desaturation that follows.
    start = now.replace(microsecond=0) - dt.timedelta(seconds=40)
    _commit_at(device, patient, start.isoformat(), [10.0] * 30, first_seq=1000)
    engine_batch(processors, now=now)
    engine_tick(processors, now=now)
    [alarm] = Alarm.objects.filter(patient=patient, kind="critical_low")
    assert alarm.condition_started_at == start
