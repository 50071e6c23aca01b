"""What the ingest stores: canonical units with raw values kept, unassigned readings, provenance
annotations, late and out-of-order batches at their real sample time."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from telemetry.models import Annotation, Calibration, DeviceState, FirmwareRecord
from telemetry.units import MMHG_PER_KPA
from tests import factories
from tests.ingest_helpers import ago, send, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)


async def test_units_are_converted_and_raw_value_and_unit_kept():
    dev = await make_device(patient="p-units")
    t = ago(30)
    items = [
        factories.reading(1, t, metric="tissue_po2", value=5.0, unit="kPa"),
        factories.reading(2, t, metric="tissue_po2", value=40.0, unit="mmHg"),
        factories.reading(3, t, metric="skin_temp", value=98.6, unit="degF"),
        factories.reading(4, t, metric="skin_temp", value=36.5, unit="degC"),
        factories.reading(5, t, metric="tissue_o2", value=55.0, unit="percent"),
        factories.reading(6, t, metric="battery", value=3650, unit="mV"),
        factories.reading(7, t, metric="skin_temp", value=212.0, unit="degF"),  # 100 °C: not skin
    ]
    response = await send(AsyncClient(), dev, items)
    assert response.status_code == 200
    assert response.json()["accepted"] == 6
    assert [r["code"] for r in response.json()["rejected"]] == ["out_of_range"]
    rows = {r[0]: r for r in await stored(dev.device_id)}
    assert rows[1][3] == pytest.approx(5.0 * MMHG_PER_KPA) and rows[1][4:6] == (5.0, "kPa")
    assert rows[2][3] == 40.0 and rows[2][4:6] == (40.0, "mmHg")
    assert rows[3][3] == pytest.approx(37.0) and rows[3][4:6] == (98.6, "degF")
    assert rows[4][3] == 36.5 and rows[4][4:6] == (36.5, "degC")
    assert rows[5][3] == 55.0 and rows[5][4:6] == (55.0, "percent")
    assert rows[6][3] == 3650.0 and rows[6][4:6] == (3650.0, "mV")
    assert all(r[2] == t.replace(microsecond=t.microsecond) for r in rows.values())


async def test_unassigned_device_readings_are_stored_with_no_patient():
    dev = await make_device()  # provisioned, never admitted to a patient
    response = await send(AsyncClient(), dev, factories.series(1, 5))
    assert response.status_code == 200 and response.json()["accepted"] == 5
    rows = await stored(dev.device_id)
    assert len(rows) == 5 and {r[6] for r in rows} == {None}


async def test_readings_go_to_the_patient_assigned_at_their_sample_time():
    dev = await make_device(patient="p-assigned")  # assigned since two days ago
    before = ago(3 * 86400)  # sampled before the assignment began
    response = await send(AsyncClient(), dev, [factories.reading(1, before), factories.reading(2, ago(5))])
    assert response.json()["accepted"] == 2
    rows = await stored(dev.device_id)
    assert rows[0][6] is None and rows[1][6] is not None


def _annotations(pseudonym: str) -> list[tuple[str, str, dict]]:
    return [(a.kind, a.text, a.data) for a in Annotation.objects.filter(patient__pseudonym=pseudonym).order_by("id")]


async def test_firmware_and_calibration_changes_annotate_the_patient():
    dev = await make_device(patient="p-prov")
    client = AsyncClient()
    first = [factories.reading(1, ago(30), calibration_id="cal-1")]
    assert (await send(client, dev, first, firmware="fw-1.0")).json()["accepted"] == 1
    # First sighting is provenance, not a change: no annotation yet.
    assert await sync_to_async(_annotations)("p-prov") == []

    assert (
        await send(client, dev, [factories.reading(2, ago(20), calibration_id="cal-1")], firmware="fw-1.1")
    ).status_code == 200
    assert (
        await send(client, dev, [factories.reading(3, ago(10), calibration_id="cal-2")], firmware="fw-1.1")
    ).status_code == 200
    notes = await sync_to_async(_annotations)("p-prov")
    assert [(kind, data["from"], data["to"]) for kind, _, data in notes] == [
        ("firmware", "fw-1.0", "fw-1.1"),
        ("calibration", "cal-1", "cal-2"),
    ]
    assert all(data["device"] == dev.device_id for _, _, data in notes)

    firmware = await sync_to_async(lambda: list(FirmwareRecord.objects.values_list("version", flat=True)))()
    assert firmware == ["fw-1.0", "fw-1.1"]
    calibrations = await sync_to_async(lambda: sorted(Calibration.objects.values_list("calibration_id", flat=True)))()
    assert calibrations == ["cal-1", "cal-2"]
    state = await sync_to_async(DeviceState.objects.get)(device__device_id=dev.device_id)
    assert (state.firmware, state.calibration_id) == ("fw-1.1", "cal-2")
    rows = await stored(dev.device_id)
    assert [(r[7], r[8]) for r in rows] == [("cal-1", "fw-1.0"), ("cal-1", "fw-1.1"), ("cal-2", "fw-1.1")]


async def test_late_and_out_of_order_batches_are_stored_at_their_sample_time():
    dev = await make_device(patient="p-late")
    client = AsyncClient()
    now_batch = factories.series(1000, 10, start=ago(10))
    late_batch = factories.series(400, 60, start=ago(20 * 60))  # a gateway offline for 20 minutes
    older = factories.series(100, 10, start=ago(6 * 3600))
    for batch in (now_batch, late_batch, older):
        response = await send(client, dev, batch)
        assert response.status_code == 200 and response.json()["accepted"] == len(batch)
    rows = await stored(dev.device_id)
    assert len(rows) == 80
    by_seq = {r[0]: r[2] for r in rows}
    for item in (*now_batch, *late_batch, *older):
        assert by_seq[item["seq"]] == dt.datetime.fromisoformat(item["sample_time"])
    # Older data arriving after newer data does not move the device's last sample time back.
    state = await sync_to_async(DeviceState.objects.get)(device__device_id=dev.device_id)
    assert state.last_sample_time == max(by_seq.values())


async def test_sample_time_offsets_are_normalised_to_utc():
    dev = await make_device()
    local = dt.datetime.now(dt.timezone(dt.timedelta(hours=-5))) - dt.timedelta(minutes=1)
    response = await send(AsyncClient(), dev, [{**factories.reading(1), "sample_time": local.isoformat()}])
    assert response.json()["accepted"] == 1
    (row,) = await stored(dev.device_id)
    assert row[2] == local.astimezone(dt.UTC)


async def test_free_text_fields_survive_the_copy_format():
    dev = await make_device()
    awkward = "cal\t1\\N\nx\r\\"  # tab, a literal backslash-N, newline, CR, trailing backslash
    firmware = "fw\\2\t"
    items = [factories.reading(1, ago(5), calibration_id=awkward), factories.reading(2, ago(4))]
    response = await send(AsyncClient(), dev, items, firmware=firmware)
    assert response.json()["accepted"] == 2
    rows = await stored(dev.device_id)
    assert [(r[7], r[8]) for r in rows] == [(awkward, firmware), (None, firmware)]
