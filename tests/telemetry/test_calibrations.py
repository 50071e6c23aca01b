"""Calibrations managed by staff (command and page), applied at ingest, and reprocessing of a
corrected calibration's span: values recomputed from raw, old values kept, rollups rebuilt without
double counting, a chart mark, one audit event, alarms of the span re-explained and kept."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection, transaction
from django.test import AsyncClient

from alerts.models import AlarmTransition
from alerts.services.alarms import alarm_raise
from alerts.services.rules import rule_current_ward
from audit.models import AuditEvent
from telemetry.calibrations import calibration_add, calibration_correct, readings_reprocess
from telemetry.engine import RollupProcessor, engine_batch
from telemetry.models import Annotation, Calibration, CalibrationRevision, Device, Patient, ReadingRevision
from telemetry.selectors import patient_series
from telemetry.services import RegistryError
from tests import factories, personas
from tests.ingest_helpers import ago, send, stored
from tests.readings import insert_readings, signal

T0 = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(seconds=10)


def _values(device_pk: int, metric: str = "tissue_o2") -> list[tuple[float, float]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT value, raw_value FROM telemetry_reading WHERE device_id = %s::bigint AND metric = %s ORDER BY seq",
            [device_pk, metric],
        )
        return cursor.fetchall()


def _world(count: int = 720) -> tuple[Device, Patient, list]:
    dev = factories.device(patient="p-cal")
    device = Device.objects.get(device_id=dev.device_id)
    patient = Patient.objects.get(pseudonym="p-cal")
    rows = signal(device_id=device.pk, patient_id=patient.pk, start=T0, count=count, step=STEP, seed=7)
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, rows)
    engine_batch([RollupProcessor()], now=T0 + dt.timedelta(hours=3))
    return device, patient, rows


@pytest.mark.django_db(transaction=True)
async def test_a_staff_calibration_is_applied_at_ingest() -> None:
    dev = await sync_to_async(factories.device)(patient="p-ingest")
    await sync_to_async(calibration_add)(
        device_id=dev.device_id,
        calibration_id="bench-2026-12",
        gain=1.2,
        offset=-3.0,
        effective_from=ago(3600),
        reason="bench calibration against the reference oximeter",
    )
    response = await send(AsyncClient(), dev, [factories.reading(1, ago(5), value=50.0)])
    assert response.status_code == 200
    (row,) = await stored(dev.device_id)
    assert row[3] == pytest.approx(1.2 * 50.0 - 3.0)
    assert row[4] == 50.0  # the raw value stays as sent


@pytest.mark.django_db(transaction=True)
def test_correction_reprocesses_from_raw_keeps_old_values_and_rebuilds_rollups() -> None:
    device, patient, rows = _world()
    calibration_add(
        device_id=device.device_id, calibration_id="c1", gain=1.0, offset=0.0, effective_from=T0, reason="initial"
    )
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient,
        rule=rule_current_ward(patient.ward),
        kind="low",
        onset=T0 + dt.timedelta(minutes=20),
        now=now,
        explain={"samples": []},
    )
    before = _values(device.pk)

    calibration, reprocessing = calibration_correct(
        device_id=device.device_id, calibration_id="c1", gain=1.1, offset=-2.0, reason="reference drift found"
    )

    after = _values(device.pk)
    assert [v for v, _ in after] == pytest.approx([1.1 * raw - 2.0 for _, raw in before])
    assert reprocessing.changed == reprocessing.examined == len(rows)
    kept = ReadingRevision.objects.filter(reprocessing=reprocessing).order_by("seq")
    assert [r.old_value for r in kept] == pytest.approx([v for v, _ in before])
    assert [r.new_value for r in kept] == pytest.approx([v for v, _ in after])
    assert CalibrationRevision.objects.get(calibration=calibration).coefficients == {"gain": 1.0, "offset": 0.0}

    # Rollups rebuilt: as many readings counted as stored (none twice), extremes from the new values.
    series = patient_series(
        patient_id=patient.pk, metric="tissue_o2", start=T0, end=T0 + dt.timedelta(hours=2), max_points=500
    )
    assert series.resolution == "1m"
    assert sum(p["count"] for p in series.points) == len(rows)
    assert min(p["min"] for p in series.points) == pytest.approx(min(v for v, _ in after))
    assert max(p["max"] for p in series.points) == pytest.approx(max(v for v, _ in after))

    mark = Annotation.objects.get(patient=patient, kind=Annotation.Kind.REPROCESSING)
    assert mark.data["reprocessing"] == reprocessing.pk
    (event,) = AuditEvent.objects.filter(action__in=["calibration.corrected", "readings.reprocessed"])
    assert (event.action, event.subject, event.detail["changed"]) == ("calibration.corrected", device.device_id, 720)

    # The alarm stays (same state, not resolved) and says what changed under it.
    alarm.refresh_from_db()
    assert alarm.is_open
    (note,) = alarm.explain["reprocessed"]
    assert note["reprocessing"] == reprocessing.pk and note["changed"] > 0
    assert note["new_min"] == pytest.approx(min(v for v, _ in after[120:]))
    assert AlarmTransition.objects.filter(alarm=alarm, cause="reprocessed", to_state=alarm.state).count() == 1


@pytest.mark.django_db(transaction=True)
def test_reprocessing_twice_changes_nothing_the_second_time() -> None:
    device, _, rows = _world(count=60)
    calibration_add(
        device_id=device.device_id, calibration_id="c1", gain=0.9, offset=1.0, effective_from=T0, reason="initial"
    )
    end = T0 + dt.timedelta(hours=1)
    first = readings_reprocess(device_id=device.device_id, start=T0, end=end, reason="apply c1 to old data")
    values = _values(device.pk)
    second = readings_reprocess(device_id=device.device_id, start=T0, end=end, reason="again")
    assert (first.changed, second.changed, second.examined) == (len(rows), 0, len(rows))
    assert _values(device.pk) == values  # from raw each time: never compounds
    assert AuditEvent.objects.filter(action="readings.reprocessed").count() == 2


@pytest.mark.django_db
def test_calibration_rules() -> None:
    dev = factories.device()
    common = {"device_id": dev.device_id, "effective_from": T0, "reason": "r"}
    with pytest.raises(RegistryError, match="gain"):
        calibration_add(calibration_id="x", gain=0.0, offset=0.0, **common)
    with pytest.raises(RegistryError, match="finite"):
        calibration_add(calibration_id="x", gain=float("nan"), offset=0.0, **common)
    with pytest.raises(RegistryError, match="reason"):
        calibration_add(
            calibration_id="x", gain=1.0, offset=0.0, device_id=dev.device_id, effective_from=T0, reason=" "
        )
    calibration_add(calibration_id="x", gain=1.0, offset=0.0, **common)
    with pytest.raises(RegistryError, match="correct it instead"):
        calibration_add(calibration_id="x", gain=1.1, offset=0.0, **common)
    with pytest.raises(RegistryError, match="unknown device"):
        calibration_add(calibration_id="y", gain=1.0, offset=0.0, **{**common, "device_id": "nope"})


@pytest.mark.django_db
def test_a_calibration_the_device_reported_gets_its_coefficients() -> None:
    dev = factories.device()
    device = Device.objects.get(device_id=dev.device_id)
    Calibration.objects.create(device=device, calibration_id="dev-cal", coefficients={}, effective_from=T0)
    calibration_add(
        device_id=dev.device_id, calibration_id="dev-cal", gain=1.05, offset=0.5, effective_from=T0, reason="sheet"
    )
    calibration = Calibration.objects.get(device=device, calibration_id="dev-cal")
    assert (calibration.coefficients, calibration.source) == ({"gain": 1.05, "offset": 0.5}, "staff")


@pytest.mark.django_db
def test_command_adds_and_corrects_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    dev = factories.device(patient="p-cmd")  # admitted two days ago
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0).isoformat()
    call_command(
        "add_calibration", dev.device_id, "--id", "c9", "--gain", "1.1", "--offset", "0",
        "--effective-from", when, "--reason", "monthly check", "--json",
    )  # fmt: skip
    added = json.loads(capsys.readouterr().out)
    assert added == {
        "device_id": dev.device_id,
        "calibration_id": "c9",
        "coefficients": {"gain": 1.1, "offset": 0.0},
        "effective_from": when,
    }
    assert Annotation.objects.get(patient__pseudonym="p-cmd", kind="calibration").data["calibration_id"] == "c9"
    call_command(
        "add_calibration", dev.device_id, "--id", "c9", "--gain", "1.0", "--offset", "1",
        "--reason", "typo in gain", "--correct", "--json",
    )  # fmt: skip
    corrected = json.loads(capsys.readouterr().out)
    assert corrected["coefficients"] == {"gain": 1.0, "offset": 1.0}
    assert corrected["changed"] == corrected["examined"] == 0


@pytest.mark.django_db
def test_the_page_adds_and_corrects() -> None:
    dev = factories.device(patient="p-page")
    client = personas.verified_client(personas.staff("devadmin", "device_admin"))
    url = f"/devices/{dev.device_id}/calibrations"
    assert client.get(url).status_code == 200
    response = client.post(
        url,
        {"calibration_id": "c-ui", "gain": "1.2", "offset": "-1", "effective_from": "2026-03-01T06:00", "reason": "x"},
    )
    assert response.status_code == 302
    calibration = Calibration.objects.get(device__device_id=dev.device_id, calibration_id="c-ui")
    assert calibration.coefficients == {"gain": 1.2, "offset": -1.0}
    assert calibration.effective_from == T0
    assert calibration.created_by == "devadmin"
    response = client.post(f"{url}/c-ui/correct", {"gain": "1.1", "offset": "-1", "reason": "re-measured"})
    assert response.status_code == 302
    page = client.get(url).content.decode()
    assert "re-measured" in page and "gain 1.2, offset -1.0" in page  # the replaced coefficients shown
    assert client.get("/devices/unknown-device/calibrations").status_code == 404
    invalid = client.post(url, {"calibration_id": "c-bad", "gain": "50", "offset": "0", "effective_from": "x"})
    assert invalid.status_code == 200 and not Calibration.objects.filter(calibration_id="c-bad").exists()
