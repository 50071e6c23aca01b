"""Reads of stored telemetry: the series of one patient's metric over a time range.

One query module serves both storage backends (docs/storage.md). The bucket sources have the
same columns: TimescaleDB's real-time continuous aggregates `telemetry_reading_{1m,1h}`, or on
plain PostgreSQL the engine's rollup tables `telemetry_rollup_{1m,1h}`. On plain PostgreSQL the
rollups lag the raw table by up to one engine loop (or longer if the engine is stopped), so the
query adds partials computed from the raw readings of ingest transactions the engine has not
processed yet (at or past its watermark, found through telemetry_ingest_log). Both parts are read
in one statement, hence from one snapshot: a batch is in exactly one of them.

Buckets from several devices of the same patient are merged per bucket (sums and counts add,
min/max combine), and every bucket carries its min/max so a short desaturation is never averaged
away. A bucket is returned when its start lies in [floor(start), end).

Integer parameters compared with telemetry_reading columns are cast to bigint in the SQL: psycopg
sends a small Python int as smallint, and TimescaleDB's bloom-filter check on compressed chunks
then hashes the smallint and silently skips matching rows (seen on the TimescaleDB test server).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, NamedTuple

from django.db import connection

from telemetry.storage import timescale_in_use

Resolution = Literal["raw", "1m", "1h"]

BUCKET_SECONDS: dict[str, int] = {"1m": 60, "1h": 3600}
ENGINE_CURSOR = "engine"  # the cursor telemetry/engine.py advances (rollups included)
# Origin of the UTC-aligned buckets (time_bucket and date_bin agree with it); shared with rollups.
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class Series(NamedTuple):
    resolution: Resolution
    points: list[dict[str, Any]]


def bucket_floor(t: dt.datetime, resolution: str) -> dt.datetime:
    """Start of the bucket holding `t` (UTC-aligned, the same as time_bucket and date_bin)."""
    width = dt.timedelta(seconds=BUCKET_SECONDS[resolution])
    return EPOCH + ((t - EPOCH) // width) * width


def patient_series(
    *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, max_points: int = 5000
) -> Series:
    """Series of `metric` for the patient in [start, end), at the finest resolution that keeps the
    trace under `max_points` points: raw readings when there are few enough, else 1-minute
    buckets when the span has at most `max_points` minutes, else 1-hour buckets."""
    with connection.cursor() as cursor:
        return series_on(
            cursor,
            timescale=timescale_in_use(),
            patient_id=patient_id,
            metric=metric,
            start=start,
            end=end,
            max_points=max_points,
        )


def series_on(
    cursor: Any,
    *,
    timescale: bool,
    patient_id: int,
    metric: str,
    start: dt.datetime,
    end: dt.datetime,
    max_points: int = 5000,
) -> Series:
    """patient_series on an explicit DB-API cursor (Django's or psycopg's) and backend."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end <= start:
        return Series("raw", [])
    resolution = choose_resolution(
        cursor, patient_id=patient_id, metric=metric, start=start, end=end, max_points=max_points
    )
    if resolution == "raw":
        return Series("raw", _raw_points(cursor, patient_id=patient_id, metric=metric, start=start, end=end))
    points = _bucket_points(
        cursor, timescale=timescale, resolution=resolution, patient_id=patient_id, metric=metric, start=start, end=end
    )
    return Series(resolution, points)


def choose_resolution(
    cursor: Any, *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, max_points: int
) -> Resolution:
    # Counting stops at max_points + 1 rows, so the probe costs at most one small index range.
    cursor.execute(
        "SELECT count(*) FROM (SELECT 1 FROM telemetry_reading WHERE patient_id = %s::bigint AND metric = %s "
        "AND sample_time >= %s AND sample_time < %s LIMIT %s) AS probe",
        [patient_id, metric, start, end, max_points + 1],
    )
    if cursor.fetchone()[0] <= max_points:
        return "raw"
    if (end - start).total_seconds() / BUCKET_SECONDS["1m"] <= max_points:
        return "1m"
    return "1h"


def _raw_points(
    cursor: Any, *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    cursor.execute(
        "SELECT sample_time, value, signal_quality FROM telemetry_reading "
        "WHERE patient_id = %s::bigint AND metric = %s AND sample_time >= %s AND sample_time < %s "
        "ORDER BY sample_time, device_id, seq",
        [patient_id, metric, start, end],
    )
    return [{"t": t, "value": value, "quality": quality} for t, value, quality in cursor.fetchall()]


_PARTIAL_COLUMNS = "bucket, n, value_sum, value_min, value_max, quality_sum, quality_n"

_MERGE = f"""
    SELECT bucket, sum(n)::bigint, sum(value_sum) / sum(n), min(value_min), max(value_max),
           sum(quality_sum) / NULLIF(sum(quality_n), 0)
    FROM ({{parts}}) AS parts ({_PARTIAL_COLUMNS})
    GROUP BY bucket ORDER BY bucket
"""

_STORED_PARTS = f"""
    SELECT {_PARTIAL_COLUMNS} FROM {{table}}
    WHERE patient_id = %(patient)s::bigint AND metric = %(metric)s AND bucket >= %(lo)s AND bucket < %(hi)s
"""

# Readings of ingest transactions at or past the engine's watermark: not in the rollups yet. The
# join walks the primary key (device_id, metric, sample_time) from each log row.
_UNROLLED_PARTS = f"""
    SELECT date_bin(%(width)s, r.sample_time, %(epoch)s), count(*), sum(r.value), min(r.value), max(r.value),
           coalesce(sum(r.signal_quality::float8), 0), count(r.signal_quality)
    FROM telemetry_ingest_log AS l
    JOIN telemetry_reading AS r
      ON r.device_id = l.device_id AND r.metric = %(metric)s AND r.ingest_txid = l.txid
     AND r.sample_time BETWEEN l.min_sample_time AND l.max_sample_time
    WHERE l.txid >= coalesce((SELECT position FROM telemetry_enginecursor WHERE name = '{ENGINE_CURSOR}'), 0)
      AND l.max_sample_time >= %(lo)s AND l.min_sample_time < %(rows_hi)s
      AND r.patient_id = %(patient)s::bigint AND r.sample_time >= %(lo)s AND r.sample_time < %(rows_hi)s
    GROUP BY r.device_id, 1
"""


def _bucket_points(
    cursor: Any,
    *,
    timescale: bool,
    resolution: str,
    patient_id: int,
    metric: str,
    start: dt.datetime,
    end: dt.datetime,
) -> list[dict[str, Any]]:
    if timescale:
        parts = _STORED_PARTS.format(table=f"telemetry_reading_{resolution}")
    else:
        parts = _STORED_PARTS.format(table=f"telemetry_rollup_{resolution}") + " UNION ALL " + _UNROLLED_PARTS
    width = dt.timedelta(seconds=BUCKET_SECONDS[resolution])
    params = {
        "patient": patient_id,
        "metric": metric,
        "lo": bucket_floor(start, resolution),
        "hi": end,
        # Buckets are whole: the raw tail takes every reading of the last bucket that starts before end.
        "rows_hi": bucket_floor(end - dt.timedelta(microseconds=1), resolution) + width,
        "width": width,
        "epoch": EPOCH,
    }
    cursor.execute(_MERGE.format(parts=parts), params)
    return [
        {"t": bucket, "avg": avg, "min": low, "max": high, "count": n, "quality": quality}
        for bucket, n, avg, low, high, quality in cursor.fetchall()
    ]
