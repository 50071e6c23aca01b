"""Reads of stored telemetry. The storage layout (tables, partitions, rollups, hypertables, the
ingest log) is known to telemetry only: the other apps read readings, device state and the
engine's progress through these functions (dashboard cards and snapshots, the alarm engine's
replays and no-data check, the device-administration page, /metrics and /readyz).

The series of one patient's metric over a time range: one query serves both storage backends
(docs/storage.md). The bucket sources have the
same columns: TimescaleDB's real-time continuous aggregates `telemetry_reading_{1m,1h}`, or on
plain PostgreSQL the engine's rollup tables `telemetry_rollup_{1m,1h}`. On plain PostgreSQL the
rollups lag the raw table by up to one engine loop (or longer if the engine is stopped), so the
query adds partials computed from the raw readings of ingest transactions the engine has not
processed yet (at or past its watermark, found through telemetry_ingest_log). Both parts are read
in one statement, hence from one snapshot: a batch is in exactly one of them.

Buckets from several devices of the same patient are merged per bucket (sums and counts add,
min/max combine), and every bucket carries its min/max so a short desaturation is never averaged
away. A bucket is returned when its start lies in [floor(start), end).

The history, FHIR and export selectors below read through config.replica.read_alias(): the
primary, unless their caller runs them with `on_replica` (docs/replica.md); the readings the
ward overview, live snapshots and the alarm engine use always read the primary.

Integer parameters compared with telemetry_reading columns are cast to bigint in the SQL: psycopg
sends a small Python int as smallint, and TimescaleDB's bloom-filter check on compressed chunks
then hashes the smallint and silently skips matching rows (seen on the TimescaleDB test server).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from django.conf import settings
from django.db import connection, connections

from config.replica import read_alias
from telemetry.models import (
    Annotation,
    Assignment,
    Calibration,
    Device,
    DeviceState,
    Patient,
    PatientIdentity,
    PatientStay,
    Reprocessing,
)
from telemetry.storage import timescale_in_use

Resolution = Literal["raw", "1m", "1h"]

BUCKET_SECONDS: dict[str, int] = {"1m": 60, "1h": 3600}
ENGINE_CURSOR = "engine"  # the single cursor of engines before partitions; now the cursors' name prefix
# Origin of the UTC-aligned buckets (time_bucket and date_bin agree with it); shared with rollups.
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


# The engine's partitions (telemetry/engine.py): a reading belongs to partition
# mod(patient id, P), or mod(device id, P) while it has no patient, and each partition has its own
# watermark, the EngineCursor "engine:<p>/<P>". A reading is processed (rolled up) once its ingest
# txid is below its partition's watermark.
def engine_partitions() -> int:
    return int(settings.PERFUSE_ENGINE_PARTITIONS)


def engine_cursor_name(partition: int, partitions: int) -> str:
    return f"{ENGINE_CURSOR}:{partition}/{partitions}"


def partition_of(*, patient_id: int | None, device_id: int, partitions: int) -> int:
    """The partition of a reading, as partition_sql computes it in SQL."""
    return (device_id if patient_id is None else patient_id) % partitions


def partition_sql(alias: str = "") -> str:
    """The partition of a telemetry_reading row (`alias` with its dot, e.g. "r.")."""
    return f"mod(coalesce({alias}patient_id, {alias}device_id), {engine_partitions()})"


def rolled_up_sql(alias: str = "") -> str:
    """True for a reading the engine has processed; one parameter: engine_positions()."""
    return f"{alias}ingest_txid < (%s::bigint[])[{partition_sql(alias)} + 1]"


def engine_positions(cursor: Any, *, for_update: bool = False) -> list[int]:
    """The watermark of each partition, by partition number (0 for one never processed).
    `for_update` locks the cursor rows for the transaction, so no engine batch interleaves."""
    partitions = engine_partitions()
    names = [engine_cursor_name(p, partitions) for p in range(partitions)]
    cursor.execute(
        "SELECT name, position FROM telemetry_enginecursor WHERE name = ANY(%s) ORDER BY name"
        + (" FOR UPDATE" if for_update else ""),
        [names],
    )
    found = dict(cursor.fetchall())
    return [int(found.get(name, 0)) for name in names]


class ReadingRow(NamedTuple):
    """A stored reading as the engine hands it to processors and replays give it back."""

    device_id: int
    patient_id: int | None
    metric: str
    seq: int
    sample_time: dt.datetime
    value: float
    signal_quality: float | None
    calibration_id: str | None
    firmware: str | None


READING_ROW_COLUMNS = ", ".join(f"r.{name}" for name in ReadingRow._fields)


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
    with connections[read_alias()].cursor() as cursor:
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

# Readings of ingest transactions at or past the watermark of the patient's engine partition: not in
# the rollups yet. The join walks the primary key (device_id, metric, sample_time) from each log row.
_UNROLLED_PARTS = """
    SELECT date_bin(%(width)s, r.sample_time, %(epoch)s), count(*), sum(r.value), min(r.value), max(r.value),
           coalesce(sum(r.signal_quality::float8), 0), count(r.signal_quality)
    FROM telemetry_ingest_log AS l
    JOIN telemetry_reading AS r
      ON r.device_id = l.device_id AND r.metric = %(metric)s AND r.ingest_txid = l.txid
     AND r.sample_time BETWEEN l.min_sample_time AND l.max_sample_time
    WHERE l.txid >= coalesce((SELECT position FROM telemetry_enginecursor WHERE name = %(cursor)s), 0)
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
        "cursor": engine_cursor_name(
            partition_of(patient_id=patient_id, device_id=0, partitions=engine_partitions()), engine_partitions()
        ),
    }
    cursor.execute(_MERGE.format(parts=parts), params)
    return [
        {"t": bucket, "avg": avg, "min": low, "max": high, "count": n, "quality": quality}
        for bucket, n, avg, low, high, quality in cursor.fetchall()
    ]


# ---- readings one by one, with their device and provenance (FHIR Observation, Provenance, export) --


class StoredReading(NamedTuple):
    device_pk: int
    device_id: str  # the device's public id
    patient_id: int | None
    metric: str
    seq: int
    sample_time: dt.datetime
    value: float
    signal_quality: float | None
    calibration_id: str | None
    firmware: str | None
    ingest_time: dt.datetime


_STORED_SQL = (
    "SELECT r.device_id, d.device_id, r.patient_id, r.metric, r.seq, r.sample_time, r.value, r.signal_quality, "
    "r.calibration_id, r.firmware, r.ingest_time FROM telemetry_reading AS r JOIN telemetry_device AS d "
    "ON d.id = r.device_id "
)


def series_resolution(
    *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, max_points: int = 5000
) -> Resolution:
    """The resolution the history API picks for this series (`patient_series`'s choice)."""
    if end <= start:
        return "raw"
    with connections[read_alias()].cursor() as cursor:
        return choose_resolution(
            cursor, patient_id=patient_id, metric=metric, start=start, end=end, max_points=max_points
        )


def series_buckets(
    *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, resolution: Resolution
) -> list[dict[str, Any]]:
    """The buckets of `patient_series` at a given resolution ("1m" or "1h"), oldest first."""
    if resolution == "raw":
        raise ValueError("series_buckets takes a bucket resolution")
    with connections[read_alias()].cursor() as cursor:
        return _bucket_points(
            cursor,
            timescale=timescale_in_use(),
            resolution=resolution,
            patient_id=patient_id,
            metric=metric,
            start=start,
            end=end,
        )


def readings_count(*, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime) -> int:
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM telemetry_reading WHERE patient_id = %s::bigint AND metric = %s "
            "AND sample_time >= %s AND sample_time < %s",
            [patient_id, metric, start, end],
        )
        return int(cursor.fetchone()[0])


def readings_page(
    *, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, offset: int, limit: int
) -> list[StoredReading]:
    """The patient's raw readings of `metric` in [start, end) in the history API's order (sample
    time, device, seq), from `offset`, at most `limit`."""
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            _STORED_SQL + "WHERE r.patient_id = %s::bigint AND r.metric = %s AND r.sample_time >= %s "
            "AND r.sample_time < %s ORDER BY r.sample_time, r.device_id, r.seq OFFSET %s LIMIT %s",
            [patient_id, metric, start, end, offset, limit],
        )
        return [StoredReading(*row) for row in cursor.fetchall()]


def reading_get(*, device_pk: int, metric: str, seq: int, sample_time: dt.datetime) -> StoredReading | None:
    """One stored reading by its idempotency key."""
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            _STORED_SQL + "WHERE r.device_id = %s::bigint AND r.metric = %s AND r.sample_time = %s "
            "AND r.seq = %s::bigint",
            [device_pk, metric, sample_time, seq],
        )
        row = cursor.fetchone()
    return StoredReading(*row) if row else None


class ReadingSource(NamedTuple):
    device_id: str
    firmware: str | None
    calibration_id: str | None
    readings: int


def readings_sources(*, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime) -> list[ReadingSource]:
    """Which device, firmware and calibration produced the patient's readings of `metric` in
    [start, end): the provenance of a bucket."""
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            "SELECT d.device_id, r.firmware, r.calibration_id, count(*) FROM telemetry_reading AS r "
            "JOIN telemetry_device AS d ON d.id = r.device_id WHERE r.patient_id = %s::bigint AND r.metric = %s "
            "AND r.sample_time >= %s AND r.sample_time < %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            [patient_id, metric, start, end],
        )
        return [ReadingSource(*row) for row in cursor.fetchall()]


ReadingKey = tuple[dt.datetime, int, int]  # (sample_time, device pk, seq): the export's keyset position


def readings_after(
    *,
    patient_id: int,
    metric: str,
    ingested_since: dt.datetime | None,
    after: ReadingKey | None,
    until: dt.datetime,
    limit: int,
) -> list[StoredReading]:
    """The patient's readings of `metric` after keyset position `after` (None: from the first)
    and sampled before `until`, in (sample time, device, seq) order, ingested at or after
    `ingested_since` when given: a bulk export's next page. The sample-time bounds are what the
    (patient, metric, sample time) index range is walked by, so a page costs at most the
    readings between them, however few pass the ingest-time filter."""
    where = ["r.patient_id = %s::bigint", "r.metric = %s", "r.sample_time < %s"]
    params: list[Any] = [patient_id, metric, until]
    if after is not None:
        where.append("r.sample_time >= %s AND (r.sample_time, r.device_id, r.seq) > (%s, %s::bigint, %s::bigint)")
        params.extend([after[0], *after])
    if ingested_since is not None:
        where.append("r.ingest_time >= %s")
        params.append(ingested_since)
    params.append(limit)
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            _STORED_SQL + "WHERE " + " AND ".join(where) + " ORDER BY r.sample_time, r.device_id, r.seq LIMIT %s",
            params,
        )
        return [StoredReading(*row) for row in cursor.fetchall()]


def reading_next_time(*, patient_id: int, metric: str, after: ReadingKey | None) -> dt.datetime | None:
    """The sample time of the patient's first reading of `metric` after keyset position `after`."""
    where = ""
    params: list[Any] = [patient_id, metric]
    if after is not None:
        where = " AND sample_time >= %s AND (sample_time, device_id, seq) > (%s, %s::bigint, %s::bigint)"
        params.extend([after[0], *after])
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            "SELECT sample_time FROM telemetry_reading WHERE patient_id = %s::bigint AND metric = %s"
            + where
            + " ORDER BY sample_time LIMIT 1",
            params,
        )
        row = cursor.fetchone()
    return row[0] if row else None


# ---- readings behind the ward overview and the live snapshot -----------------------------------


class LatestReading(NamedTuple):
    sample_time: dt.datetime
    value: float
    quality: float | None


def readings_latest(*, patient_ids: list[int], metric: str) -> dict[int, LatestReading]:
    """Each patient's newest reading of `metric` (one index probe per patient)."""
    if not patient_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.id, r.sample_time, r.value, r.signal_quality FROM unnest(%s::bigint[]) AS p(id) "
            "CROSS JOIN LATERAL (SELECT sample_time, value, signal_quality FROM telemetry_reading "
            "WHERE patient_id = p.id AND metric = %s ORDER BY sample_time DESC LIMIT 1) r",
            [patient_ids, metric],
        )
        return {pid: LatestReading(t, value, quality) for pid, t, value, quality in cursor.fetchall()}


def readings_bucket_averages(
    *, patient_ids: list[int], metric: str, start: dt.datetime, end: dt.datetime, width: dt.timedelta
) -> dict[int, list[tuple[dt.datetime, float]]]:
    """Per patient, the average of `metric` in each `width` bucket (UTC-aligned) of [start, end],
    oldest first; a patient without readings there gets an empty list."""
    lines: dict[int, list[tuple[dt.datetime, float]]] = {pid: [] for pid in patient_ids}
    if not patient_ids:
        return lines
    params: list[Any] = [width, EPOCH, patient_ids, metric, start, end]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT patient_id, date_bin(%s, sample_time, %s) AS bucket, avg(value) FROM telemetry_reading "
            "WHERE patient_id = ANY(%s::bigint[]) AND metric = %s AND sample_time >= %s AND sample_time <= %s "
            "GROUP BY patient_id, bucket ORDER BY patient_id, bucket",
            params,
        )
        for pid, bucket, avg in cursor.fetchall():
            lines[pid].append((bucket, avg))
    return lines


class RecentReading(NamedTuple):
    sample_time: dt.datetime
    metric: str
    value: float
    quality: float | None
    seq: int


def readings_recent(*, patient_id: int, metric: str, since: dt.datetime, limit: int) -> list[RecentReading]:
    """The patient's raw readings of `metric` from `since`, in sample-time order, at most `limit`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sample_time, metric, value, signal_quality, seq FROM telemetry_reading "
            "WHERE patient_id = %s::bigint AND metric = %s AND sample_time >= %s ORDER BY sample_time, seq LIMIT %s",
            [patient_id, metric, since, limit],
        )
        return [RecentReading(*row) for row in cursor.fetchall()]


class SeqRange(NamedTuple):
    device: str
    first: int
    last: int


def readings_seq_ranges(*, patient_id: int, since: dt.datetime) -> list[SeqRange]:
    """Per device (by device id), the lowest and highest seq the patient has stored from `since`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.device_id, min(r.seq), max(r.seq) FROM telemetry_reading r "
            "JOIN telemetry_device d ON d.id = r.device_id WHERE r.patient_id = %s::bigint AND r.sample_time >= %s "
            "GROUP BY d.device_id ORDER BY d.device_id",
            [patient_id, since],
        )
        return [SeqRange(*row) for row in cursor.fetchall()]


def annotations_between(*, patient_id: int, start: dt.datetime, end: dt.datetime, limit: int) -> list[Annotation]:
    """The patient's chart marks with time in [start, end), oldest first, at most `limit`."""
    rows = Annotation.objects.using(read_alias()).filter(patient_id=patient_id, time__gte=start, time__lt=end)
    rows = rows.order_by("time", "id")
    return list(rows[:limit])


# ---- readings behind the alarm engine ----------------------------------------------------------


def readings_window(
    *, patient_ids: list[int], metric: str, start: dt.datetime, end: dt.datetime
) -> dict[int, list[ReadingRow]]:
    """Per patient, the readings of `metric` with sample time in [start, end], in sample-time
    (then seq) order: what an alarm evaluator is rebuilt from."""
    windows: dict[int, list[ReadingRow]] = {}
    if not patient_ids:
        return windows
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {READING_ROW_COLUMNS} FROM telemetry_reading AS r WHERE r.patient_id = ANY(%s::bigint[]) "
            "AND r.metric = %s AND r.sample_time >= %s AND r.sample_time <= %s "
            "ORDER BY r.patient_id, r.sample_time, r.seq",
            [patient_ids, metric, start, end],
        )
        for row in cursor.fetchall():
            reading = ReadingRow(*row)
            windows.setdefault(reading.patient_id or 0, []).append(reading)
    return windows


class LastHeard(NamedTuple):
    patient_id: int
    last: dt.datetime  # newest of the devices' last sample times and the assignments' starts
    devices: list[str]  # device ids assigned now


def patients_last_heard(*, heard_before: dt.datetime, patient_ids: list[int]) -> list[LastHeard]:
    """Monitored patients (an open assignment, not discharged) last heard at or before
    `heard_before`, and those of `patient_ids` whenever they were last heard: the candidates of
    the no-data check, so the rest never leave the database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.patient_id, greatest(max(a.start), max(ds.last_sample_time)) AS last, "
            "array_agg(d.device_id) "
            "FROM telemetry_assignment a JOIN telemetry_patient p ON p.id = a.patient_id "
            "JOIN telemetry_device d ON d.id = a.device_id "
            "LEFT JOIN telemetry_devicestate ds ON ds.device_id = a.device_id "
            'WHERE a."end" IS NULL AND p.discharged_at IS NULL GROUP BY a.patient_id '
            "HAVING greatest(max(a.start), max(ds.last_sample_time)) <= %s OR a.patient_id = ANY(%s::bigint[])",
            [heard_before, patient_ids],
        )
        return [LastHeard(*row) for row in cursor.fetchall()]


def calibration_find(*, device_pk: int, calibration_id: str) -> Calibration | None:
    return Calibration.objects.filter(device_id=device_pk, calibration_id=calibration_id).first()


# ---- the device-administration page -----------------------------------------------------------


@dataclass(frozen=True)
class UnassignedReadings:
    device_id: str
    count: int
    first: dt.datetime
    last: dt.datetime


def readings_unassigned_counts() -> list[UnassignedReadings]:
    """Readings stored without a patient, per device: ids and counts only, never values."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.device_id, count(*), min(r.sample_time), max(r.sample_time) "
            "FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
            "WHERE r.patient_id IS NULL GROUP BY d.device_id ORDER BY d.device_id"
        )
        return [UnassignedReadings(*row) for row in cursor.fetchall()]


# ---- operations: /readyz and /metrics ---------------------------------------------------------

# Readings stored in the last minute: walk the ingest log backwards by txid (its only index) in
# pages, stopping at the first page older than the window; the cap bounds a scrape's cost.
RECENT_PAGE_ROWS = 20_000
RECENT_MAX_PAGES = 25


def readings_table_present() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('telemetry_reading') IS NOT NULL")
        (present,) = cursor.fetchone()
    return bool(present)


class EngineLag(NamedTuple):
    transactions: int  # ingest-log rows at or past the watermark of the engine's slowest partition
    seconds: float  # age of the oldest of them (0 when caught up)


def engine_lag() -> EngineLag:
    """The worst partition's lag. The ingest log knows devices, not partitions, so every log row
    from the slowest watermark on counts, including rows whose readings faster partitions have
    done: an upper bound, exact when that partition is the one holding everything up (a stopped
    or killed engine whose partitions nobody took over)."""
    with connection.cursor() as cursor:
        # The watermark goes in as a value, not a subquery, so the planner sees a short range of
        # the txid index rather than guessing and scanning the whole log.
        slowest = min(engine_positions(cursor))
        cursor.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM telemetry_ingest_log "
            "WHERE txid >= %s",
            [slowest],
        )
        behind, seconds = cursor.fetchone()
    return EngineLag(int(behind), max(0.0, float(seconds)))


# One page: the txid range of the next RECENT_PAGE_ROWS log rows below `before` (whole txids,
# so no row is split between pages), and what in that range started inside the window.
_RECENT_PAGE_SQL = """
WITH page AS (
    SELECT min(txid) AS lo FROM (
        SELECT txid FROM telemetry_ingest_log WHERE txid < %(before)s ORDER BY txid DESC LIMIT %(rows)s
    ) AS newest
)
SELECT page.lo, count(l.id), coalesce(sum(l.accepted), 0)
FROM page LEFT JOIN telemetry_ingest_log AS l
  ON l.txid >= page.lo AND l.txid < %(before)s AND l.created_at >= %(cutoff)s
GROUP BY page.lo
"""


class IngestCounts(NamedTuple):
    readings: int  # committed by ingest transactions that started in the last 60 seconds
    transactions: int


def ingest_counts_last_minute() -> IngestCounts:
    readings = transactions = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT now() - interval '60 seconds'")
        (cutoff,) = cursor.fetchone()
        before = 2**63 - 1
        for _ in range(RECENT_MAX_PAGES):
            cursor.execute(_RECENT_PAGE_SQL, {"before": before, "rows": RECENT_PAGE_ROWS, "cutoff": cutoff})
            lo, count, accepted = cursor.fetchone()
            readings += accepted
            transactions += count
            # txid order follows transaction start closely, not exactly: stop only after a page
            # with nothing inside the window, so a slightly out-of-order row is still counted.
            if lo is None or count == 0:
                break
            before = lo
    return IngestCounts(int(readings), int(transactions))


# ---- device registry (the device-administration page: ids, keys and counts, never a value tied
# to a patient) ----------------------------------------------------------------------------------


def devices_overview() -> list[dict[str, Any]]:
    rows = []
    for device in Device.objects.select_related("ward").prefetch_related("keys").order_by("device_id"):
        state = DeviceState.objects.filter(device=device).first()
        rows.append(
            {
                "device_id": device.device_id,
                "ward": device.ward.code,
                "keys": sorted(device.keys.all(), key=lambda k: k.created_at),
                "last_seen": state.last_seen_at if state else None,
                "firmware": state.firmware if state else "",
                "calibration_id": state.calibration_id if state else "",
            }
        )
    return rows


def device_calibrations(device_id: str) -> dict[str, Any] | None:
    """A device's calibrations (with the coefficients each correction replaced) and reprocessings."""
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        return None
    calibrations = list(
        Calibration.objects.filter(device=device).prefetch_related("revisions").order_by("effective_from")
    )
    return {
        "calibrations": [
            {"calibration": c, "revisions": sorted(c.revisions.all(), key=lambda r: r.replaced_at)}
            for c in calibrations
        ],
        "reprocessings": list(Reprocessing.objects.filter(device=device).order_by("-at")[:50]),
    }


# ---- patient flow -------------------------------------------------------------------------------


def patient_by_mrn(mrn: str) -> Patient | None:
    """The patient whose identity carries this MRN (the ADT listener's lookup, as the system: the
    identity map is otherwise read only through audit.access.identity's audited reveal)."""
    if not mrn:
        return None
    identity = PatientIdentity.objects.select_related("patient__ward").filter(mrn=mrn).first()
    return identity.patient if identity is not None else None


def patient_stays(*, patient_id: int) -> list[PatientStay]:
    """The patient's stays, oldest first."""
    return list(PatientStay.objects.filter(patient_id=patient_id).select_related("ward").order_by("start"))


def devices_by_patient(*, patient_ids: list[int]) -> dict[int, list[str]]:
    """The ids of the devices measuring each patient now."""
    out: dict[int, list[str]] = {pid: [] for pid in patient_ids}
    rows = Assignment.objects.filter(patient_id__in=patient_ids, end__isnull=True).values_list(
        "patient_id", "device__device_id"
    )
    for pid, device_id in rows.order_by("device__device_id"):
        out[pid].append(device_id)
    return out
