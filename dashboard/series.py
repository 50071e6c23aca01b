"""Local stand-in for `telemetry.selectors.patient_series` (storage helper), same signature.

Raw rows for short spans, `date_bin` buckets with the min/max envelope for longer ones. Replaced
by the storage selector (rollups / continuous aggregates) when that lands on main.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from django.db import connection

_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_BUCKETS: dict[str, dt.timedelta] = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1)}


@dataclass(frozen=True)
class Series:
    resolution: Literal["raw", "1m", "1h"]
    points: list[dict[str, Any]]


def _resolution(span: dt.timedelta, max_points: int) -> Literal["raw", "1m", "1h"]:
    # Devices sample at up to 1 Hz: a raw trace of `span` seconds has at most that many points.
    seconds = span.total_seconds()
    if seconds <= max_points:
        return "raw"
    if seconds / 60 <= max_points:
        return "1m"
    return "1h"


def patient_series(
    *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, max_points: int = 5000
) -> Series:
    resolution = _resolution(end - start, max_points)
    with connection.cursor() as cursor:
        if resolution == "raw":
            cursor.execute(
                "SELECT sample_time, value, signal_quality FROM telemetry_reading "
                "WHERE patient_id = %s AND metric = %s AND sample_time >= %s AND sample_time < %s "
                "ORDER BY sample_time LIMIT %s",
                [patient_id, metric, start, end, max_points],
            )
            return Series("raw", [{"t": t, "value": v, "quality": q} for t, v, q in cursor.fetchall()])
        params: list[Any] = [_BUCKETS[resolution], _ORIGIN, patient_id, metric, start, end]
        cursor.execute(
            "SELECT date_bin(%s, sample_time, %s) AS bucket, avg(value), min(value), max(value), count(*), "
            "avg(signal_quality) FROM telemetry_reading "
            "WHERE patient_id = %s AND metric = %s AND sample_time >= %s AND sample_time < %s "
            "GROUP BY bucket ORDER BY bucket",
            params,
        )
        points = [
            {"t": t, "avg": avg, "min": lo, "max": hi, "count": n, "quality": q}
            for t, avg, lo, hi, n, q in cursor.fetchall()
        ]
    return Series(resolution, points)
