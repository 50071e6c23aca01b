"""Property-based tests of the ingest validator (hypothesis): no input makes it raise or answer 5xx,
every item is either accepted or rejected with a known code, and valid items round-trip."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.ingest.answers import IngestError
from telemetry.ingest.validate import Row, parse_batch, validate_readings
from telemetry.schemas import REJECTION_CODES, BatchIn
from telemetry.units import METRICS
from tests import factories
from tests.ingest_helpers import post

NOW = dt.datetime(2026, 1, 18, 14, 0, tzinfo=dt.UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

# Readings that are nearly valid: each field may be replaced by something arbitrary or dropped.
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "seq": st.integers(min_value=-5, max_value=2**64),
    "sample_time": st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.timezones()
    ).map(lambda t: t.isoformat())
    | st.text(max_size=30),
    "metric": st.sampled_from([*METRICS, "x", "tissue_o2\x00", ""]),
    "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(min_value=-(2**70), max_value=2**70),
    "unit": st.sampled_from(["%", "percent", "mmHg", "kPa", "Cel", "degC", "degF", "mV", "K", "\ud800"]),
    "signal_quality": st.none() | st.floats(min_value=-1, max_value=2),
    "calibration_id": st.none() | st.text(max_size=70),
}
near_valid = st.fixed_dictionaries(
    {}, optional={name: strategy | json_values for name, strategy in _FIELDS.items()}
) | st.fixed_dictionaries({name: strategy for name, strategy in _FIELDS.items()})
items = st.lists(near_valid | json_values, max_size=12)


def encode(value: Any) -> bytes:
    # The standard library writes what orjson refuses: big integers and lone surrogates (escaped).
    return json.dumps(value).encode()


def check_partition(batch: BatchIn, rows: list[Row], rejected: list[Any]) -> None:
    indices = sorted([r.index for r in rows] + [r.index for r in rejected])
    assert indices == list(range(len(batch.readings)))
    assert {r.code for r in rejected} <= set(REJECTION_CODES)
    for r in rows:
        metric = METRICS[r.metric]
        assert metric.low <= r.value <= metric.high
        assert r.sample_time.tzinfo is dt.UTC
        assert 0 <= r.seq < 2**63


@given(st.binary(max_size=300) | json_values.map(encode))
@settings(max_examples=300, deadline=None)
def test_parse_batch_takes_any_bytes(body: bytes):
    try:
        batch = parse_batch(body)
    except IngestError as exc:
        assert exc.answer.status == 400
        assert exc.answer.body["error"]["code"] in {"malformed_json", "wrong_schema", "invalid_batch"}
        return
    rows, rejected = validate_readings(batch, NOW)
    check_partition(batch, rows, rejected)


@given(items)
@settings(max_examples=250, deadline=None)
def test_every_item_is_accepted_or_rejected_with_a_code(readings: list[Any]):
    body = encode({"schema": "perfuse.readings/1", "device_id": "d", "readings": readings})
    batch = parse_batch(body)
    rows, rejected = validate_readings(batch, NOW)
    check_partition(batch, rows, rejected)
    for r in rejected:
        assert r.detail
        item = readings[r.index]
        if isinstance(item, dict) and type(item.get("seq")) is int and 0 <= item["seq"] < 2**63:
            assert r.seq == item["seq"]


valid_reading = st.fixed_dictionaries(
    {
        "seq": st.integers(min_value=0, max_value=2**63 - 1),
        "sample_time": st.datetimes(
            # Inside the ingest horizon (30 days back from NOW, 300 s ahead) whatever the zone's
            # offset (-12 h to +14 h): bounds apply to the local time.
            min_value=dt.datetime(2025, 12, 21),
            max_value=dt.datetime(2026, 1, 18, 1),
            timezones=st.timezones(),
        ),
        "metric": st.sampled_from(["tissue_o2", "spo2"]),
        "value": st.floats(min_value=0, max_value=100),
        "unit": st.sampled_from(["%", "percent"]),
        "signal_quality": st.none() | st.floats(min_value=0, max_value=1),
        "calibration_id": st.none()
        | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=64),
    }
)


@given(st.lists(valid_reading, max_size=20))
@settings(max_examples=200, deadline=None)
def test_valid_items_round_trip(readings: list[dict[str, Any]]):
    wire = [{**r, "sample_time": r["sample_time"].isoformat()} for r in readings]
    batch = parse_batch(encode({"schema": "perfuse.readings/1", "device_id": "d", "readings": wire}))
    rows, rejected = validate_readings(batch, NOW)
    assert rejected == []
    assert len(rows) == len(readings)
    for row, sent, on_wire in zip(rows, readings, wire, strict=True):
        assert (row.seq, row.metric, row.value, row.raw_value, row.raw_unit) == (
            sent["seq"],
            sent["metric"],
            sent["value"],
            sent["value"],
            sent["unit"],
        )
        # Compared with the instant on the wire (a zoned time in a DST fold compares oddly).
        assert row.sample_time == dt.datetime.fromisoformat(on_wire["sample_time"])
        assert row.sample_time.utcoffset() == dt.timedelta(0)
        assert row.quality == sent["signal_quality"] and row.calibration_id == sent["calibration_id"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
@given(readings=items)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_endpoint_never_answers_5xx_to_arbitrary_items(readings: list[Any]):
    dev = await _device()
    body = encode({"schema": "perfuse.readings/1", "device_id": dev.device_id, "readings": readings})
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["accepted"] + result["duplicates"] + len(result["rejected"]) == len(readings)


_devices: dict[str, factories.SimDevice] = {}


@sync_to_async
def _device() -> factories.SimDevice:
    # One device per test run: provisioning it for each example would dominate the run time.
    from telemetry.models import DeviceKey

    cached = _devices.get("d")
    if cached is None or not DeviceKey.objects.filter(key_id=cached.key_id).exists():
        cached = _devices["d"] = factories.device(patient="p-prop")
    return cached
