"""The series selector on plain PostgreSQL: resolution by span, merged devices, min/max envelope,
and rollups plus the not-yet-rolled-up tail adding up to what the raw readings say."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from typing import Any

import pytest
from django.db import connection, transaction

from telemetry.engine import RollupProcessor, engine_batch
from telemetry.selectors import bucket_floor, patient_series
from tests.readings import Row, insert_readings, signal

PATIENT = 77
START = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(seconds=10)


def _two_devices() -> list[Row]:
    """Two devices on one patient for 6 hours, plus a 30-second desaturation to 13 % on one."""
    rows = signal(device_id=1, patient_id=PATIENT, start=START, count=2160, step=STEP, seed=1) + signal(
        device_id=2, patient_id=PATIENT, start=START + dt.timedelta(seconds=5), count=2160, step=STEP, seed=2
    )
    dip = START + dt.timedelta(hours=3, minutes=17)
    rows += [Row(1, PATIENT, "tissue_o2", 10_000 + i, dip + i * STEP, 15.0 - i, 0.9) for i in range(3)]
    return rows


def _expected(rows: list[Row], resolution: str, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    """Whole buckets whose start lies in [floor(start), end), computed from the readings."""
    buckets: dict[dt.datetime, list[Row]] = defaultdict(list)
    lo = bucket_floor(start, resolution)
    for row in rows:
        bucket = bucket_floor(row.sample_time, resolution)
        if row.patient_id == PATIENT and lo <= bucket < end:
            buckets[bucket].append(row)
    out = []
    for t in sorted(buckets):
        values = [r.value for r in buckets[t]]
        qualities = [r.quality for r in buckets[t] if r.quality is not None]
        out.append(
            {
                "t": t,
                "avg": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
                "count": len(values),
                "quality": sum(qualities) / len(qualities) if qualities else None,
            }
        )
    return out


def _assert_points(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got["t"] == want["t"] and got["count"] == want["count"]
        assert got["min"] == want["min"] and got["max"] == want["max"]
        assert math.isclose(got["avg"], want["avg"], rel_tol=1e-9)
        assert math.isclose(got["quality"], want["quality"], rel_tol=1e-6)  # stored as real


@pytest.mark.django_db
def test_resolution_follows_the_span_and_keeps_the_envelope() -> None:
    rows = _two_devices()
    with connection.cursor() as cursor:
        insert_readings(cursor, rows)

    short = patient_series(patient_id=PATIENT, metric="tissue_o2", start=START, end=START + dt.timedelta(minutes=10))
    assert short.resolution == "raw"
    assert len(short.points) == 120  # both devices, interleaved by time
    assert [p["t"] for p in short.points] == sorted(p["t"] for p in short.points)
    assert set(short.points[0]) == {"t", "value", "quality"}

    end = START + dt.timedelta(hours=6)
    minutes = patient_series(patient_id=PATIENT, metric="tissue_o2", start=START, end=end, max_points=1000)
    assert minutes.resolution == "1m"
    assert len(minutes.points) == 360
    _assert_points(minutes.points, _expected(rows, "1m", START, end))

    hours = patient_series(patient_id=PATIENT, metric="tissue_o2", start=START, end=end, max_points=100)
    assert hours.resolution == "1h"
    assert len(hours.points) == 6
    _assert_points(hours.points, _expected(rows, "1h", START, end))
    # A 30-second desaturation is still visible in a 1-hour bucket.
    assert min(p["min"] for p in hours.points) == 13.0

    assert patient_series(patient_id=PATIENT + 1, metric="tissue_o2", start=START, end=end).points == []
    with pytest.raises(ValueError, match="timezone-aware"):
        patient_series(patient_id=PATIENT, metric="tissue_o2", start=START.replace(tzinfo=None), end=end)


@pytest.mark.django_db(transaction=True)
def test_rollups_and_the_unprocessed_tail_add_up_to_the_raw_readings() -> None:
    rows = _two_devices()
    half = len(rows) // 2
    window = {"patient_id": PATIENT, "metric": "tissue_o2", "start": START + dt.timedelta(minutes=7, seconds=3)}
    window["end"] = START + dt.timedelta(hours=5, minutes=59)

    def check(visible: list[Row]) -> None:
        minutes = patient_series(**window, max_points=1000)
        hours = patient_series(**window, max_points=100)
        assert (minutes.resolution, hours.resolution) == ("1m", "1h")
        _assert_points(minutes.points, _expected(visible, "1m", window["start"], window["end"]))
        _assert_points(hours.points, _expected(visible, "1h", window["start"], window["end"]))

    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, rows[:half])
    check(rows[:half])  # nothing rolled up yet: all from the raw tail
    engine_batch([RollupProcessor()], now=START)
    check(rows[:half])  # all from the rollups
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, rows[half:] + rows[:10])  # with a retransmit of stored readings
    check(rows)  # rollups plus tail
    engine_batch([RollupProcessor()], now=START)
    check(rows)
