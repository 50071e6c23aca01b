"""Direct inserts of readings for storage and engine tests, the way ingest stores them (readings
plus one telemetry_ingest_log row per transaction and device), with plain INSERT so they also work
on the TimescaleDB test server, which cannot COPY. Works with Django's and psycopg's cursors."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any, NamedTuple


class Row(NamedTuple):
    device_id: int
    patient_id: int | None
    metric: str
    seq: int
    sample_time: dt.datetime
    value: float
    quality: float | None


def insert_readings(cursor: Any, rows: list[Row]) -> int:
    """Insert rows (duplicates ignored) and log the transaction for the engine; return rows stored.
    Call it inside a transaction: the log row must carry the readings' transaction id."""
    if not rows:
        return 0
    columns = list(zip(*rows, strict=True))
    cursor.execute(
        "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, "
        "raw_unit, signal_quality) "
        "SELECT d, p, m, s, t, v, v, '%%', q FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::bigint[], "
        "%s::timestamptz[], %s::float8[], %s::real[]) AS u(d, p, m, s, t, v, q) "
        "ON CONFLICT DO NOTHING RETURNING device_id, sample_time",
        [list(c) for c in columns],
    )
    stored = cursor.fetchall()
    spans: dict[int, list[dt.datetime]] = {}
    for device_id, t in stored:
        spans.setdefault(device_id, []).append(t)
    for device_id, times in spans.items():
        cursor.execute(
            "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
            "VALUES (%s, %s, %s, %s)",
            [device_id, min(times), max(times), len(times)],
        )
    return len(stored)


def signal(
    *,
    device_id: int,
    patient_id: int | None,
    start: dt.datetime,
    count: int,
    step: dt.timedelta,
    seed: int,
    metric: str = "tissue_o2",
    first_seq: int = 1,
) -> list[Row]:
    """A tissue-O2-like trace with noise, a short desaturation and some readings without quality."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        value = 65.0 + rng.gauss(0, 2.5) - (25.0 if i % 97 in (40, 41) else 0.0)
        quality = None if i % 13 == 0 else round(rng.uniform(0.3, 1.0), 3)
        rows.append(Row(device_id, patient_id, metric, first_seq + i, start + i * step, value, quality))
    return rows
