"""The archive's packed binary reads (telemetry/archive/packed.py) against PostgreSQL's own
ordered SELECT of the same rows: every column, every row, in the archive's order — with the
awkward values (NaN, -0.0, the smallest subnormal, infinities, a NULL and a NaN quality), text
columns with several values in a day (packed as codes) and with one (left out of the records),
and kept batches of mixed signature lengths, doors and keys."""

from __future__ import annotations

import datetime as dt
import math
import struct
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from telemetry.archive.layout import day_bounds
from telemetry.archive.packed import batches_columns, batches_fetch, readings_columns, readings_fetch
from telemetry.ingest.keep import body_decompress
from tests import factories
from tests.archive.support import ingest, sql

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

_READING_COLUMNS = [
    "patient_id",
    "metric",
    "seq",
    "sample_time",
    "value",
    "raw_value",
    "raw_unit",
    "signal_quality",
    "calibration_id",
    "firmware",
    "ingest_time",
    "ingest_txid",
]
_BATCH_COLUMNS = [
    "id",
    "key_id",
    "signed_at",
    "signature",
    "body",
    "door",
    "received_at",
    "ingest_txid",
    "readings",
    "seq_min",
    "seq_max",
    "min_sample_time",
    "max_sample_time",
]


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN, and -0.0 told apart from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


def _packed_and_selected(device_pk: int, day: dt.date) -> tuple[list[tuple[Any, ...]], ...]:
    lo, hi = day_bounds(day)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        # A sequential scan: the aggregates see the rows in the heap's order, not an index's.
        cursor.execute("SET enable_indexscan = off; SET enable_bitmapscan = off")
        try:
            readings = readings_columns(readings_fetch(raw, device_pk, lo, hi))
            kept = batches_fetch(raw, device_pk, lo, hi)
        finally:
            cursor.execute("RESET enable_indexscan; RESET enable_bitmapscan")
        assert kept is not None
        batches = batches_columns(kept)
        pseudonyms = readings["pseudonym"].to_pylist()
        cursor.execute(
            f"SELECT {', '.join(f'r.{c}' for c in _READING_COLUMNS)}, p.pseudonym FROM telemetry_reading r "
            "LEFT JOIN telemetry_patient p ON p.id = r.patient_id "
            "WHERE r.device_id = %s AND r.sample_time >= %s AND r.sample_time < %s "
            'ORDER BY r.metric COLLATE "C", r.sample_time, r.seq',
            [device_pk, lo, hi],
        )
        expected_readings = cursor.fetchall()
        cursor.execute(
            f"SELECT {', '.join(_BATCH_COLUMNS)}, body_codec, body_size FROM telemetry_signed_batch "
            "WHERE device_id = %s AND max_sample_time >= %s AND min_sample_time < %s ORDER BY id",
            [device_pk, lo, hi],
        )
        body = _BATCH_COLUMNS.index("body")
        expected_batches = [
            (*row[:body], body_decompress(bytes(row[body]), size=row[-1], codec=row[-2]), *row[body + 1 : -2])
            for row in ([bytes(v) if isinstance(v, memoryview) else v for v in r] for r in cursor.fetchall())
        ]
    got_readings = [
        (*row, pseudonym)
        for row, pseudonym in zip(
            zip(*(readings[c].to_pylist() for c in _READING_COLUMNS), strict=True), pseudonyms, strict=True
        )
    ]
    got_batches = [row for part in batches for row in zip(*(part[c].to_pylist() for c in _BATCH_COLUMNS), strict=True)]
    return got_readings, expected_readings, got_batches, expected_batches


packed_and_selected = sync_to_async(_packed_and_selected)


def _real(value: float | None) -> float | None:
    """A `real` as the float32 it is (psycopg reads it from text into the nearest double)."""
    return None if value is None else struct.unpack("f", struct.pack("f", value))[0]


def _assert_rows(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    quality = _READING_COLUMNS.index("signal_quality")
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        e = (*e[:quality], _real(e[quality]), *e[quality + 1 :])
        assert [c for c, (a, b) in enumerate(zip(g, e, strict=True)) if not _same(a, b)] == [], (g, e)


def _assert_batches(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert [_BATCH_COLUMNS[c] for c, (a, b) in enumerate(zip(g, e, strict=True)) if a != b] == [], (g, e)


async def test_packed_rows_equal_the_ordered_select_with_awkward_values_and_codes(yesterday) -> None:
    await sync_to_async(factories.ward)("icu-a")
    dev = await sync_to_async(factories.device)("icu-a", patient="p-1")
    other = await sync_to_async(factories.device)("icu-a", patient="p-2")
    await ingest(dev, yesterday, batches=4, per_batch=5)
    await ingest(other, yesterday, batches=2, per_batch=3)
    [(dev_pk,)] = await sql("SELECT id FROM telemetry_device WHERE device_id = %s", [dev.device_id])
    [(other_pk,)] = await sql("SELECT id FROM telemetry_device WHERE device_id = %s", [other.device_id])
    lo, hi = day_bounds(yesterday)
    where = "device_id = %s AND sample_time >= %s AND sample_time < %s"
    # Awkward doubles and qualities; a second firmware, a second patient (the device moved) and a
    # calibration on part of the day: several values of a text column, packed as codes.
    await sql(
        f"UPDATE telemetry_reading SET value = CASE mod(seq, 5) WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-0'::float8 "
        "WHEN 2 THEN 5e-324 WHEN 3 THEN '-Infinity'::float8 ELSE 1.0000000000000002 END, "
        "signal_quality = CASE mod(seq, 3) WHEN 0 THEN NULL WHEN 1 THEN 'NaN'::real ELSE signal_quality END, "
        f"firmware = CASE WHEN seq > 10 THEN 'fw-2.5\n\"b\"' ELSE firmware END WHERE {where}",
        [dev_pk, lo, hi],
    )
    await sql(
        f"UPDATE telemetry_reading SET patient_id = NULL, calibration_id = 'cal-ß' WHERE {where} AND seq > 15",
        [dev_pk, lo, hi],
    )
    # Kept batches: a shorter signature (not every one 64 bytes), another door and key.
    await sql(
        "UPDATE telemetry_signed_batch SET signature = '\\x0102'::bytea, door = 'mqtt', key_id = 'k-2' "
        "WHERE id = (SELECT min(id) FROM telemetry_signed_batch WHERE device_id = %s)",
        [dev_pk],
    )
    # Rows stored against the archive's order (the aggregates read them in the heap's order).
    for table in ("telemetry_reading", "telemetry_signed_batch"):
        await sql(f"CREATE TEMP TABLE shuffled AS SELECT * FROM {table} WHERE device_id = %s", [dev_pk])
        await sql(f"DELETE FROM {table} WHERE device_id = %s", [dev_pk])
        key = "id" if table == "telemetry_signed_batch" else "sample_time, metric"
        await sql(f"INSERT INTO {table} SELECT * FROM shuffled ORDER BY {key.replace(',', ' DESC,')} DESC")
        await sql("DROP TABLE shuffled")
    got, expected, got_batches, expected_batches = await packed_and_selected(dev_pk, yesterday)
    assert {row[-1] for row in got} == {"p-1", None} and len({row[9] for row in got}) == 2
    _assert_rows(got, expected)
    assert len(got_batches) == 4
    _assert_batches(got_batches, expected_batches)
    assert {len(row[3]) for row in got_batches} == {2, 64}
    assert {row[-1] for row in await sql("SELECT body_codec FROM telemetry_signed_batch")} == {"zstd"}

    # A device-day whose text columns have one value each: no codes packed, the same rows back.
    got, expected, got_batches, expected_batches = await packed_and_selected(other_pk, yesterday)
    assert len({(row[1], row[9], row[-1]) for row in got}) == 3  # three metrics, one firmware, one patient
    _assert_rows(got, expected)
    assert len(got_batches) == 2
    _assert_batches(got_batches, expected_batches)
