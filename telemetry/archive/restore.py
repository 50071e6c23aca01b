"""`manage.py restore_archive`: an archived ward-day back into the hot store, row for row.

The archive is checked first (archive_day_check, without the hot-store comparison a partly
restored day would fail): a restore never writes what it cannot prove is what was archived.
The readings go back with every column as archived — ingest time and transaction included —
row group by row group: COPY into a staging table, then `INSERT … SELECT … ON CONFLICT DO
NOTHING`, so rows still in the hot store are kept as they are and counted as present; the
signed batches go back beside them. (Binding the rows as arrays instead cost seven times as
long: psycopg quotes each element in Python.) The archive's device and patient ids must still name the
same device and pseudonym, or nothing is restored.

Charts read the restored rows at once; their 1-minute and 1-hour buckets are rebuilt for the
day on plain PostgreSQL (the engine's watermark is locked first, as readings_assign does;
restored rows carry their old transaction ids, so the engine never folds them in a second
time), and TimescaleDB's continuous aggregates refresh from their invalidation log.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from django.db import connection, transaction

from audit.trail import SYSTEM, Actor, audit_record
from telemetry.archive.layout import TABLE_COLUMNS, ArchiveError, day_bounds, ward_prefix
from telemetry.archive.objects import ObjectStore
from telemetry.archive.verify import archive_day_check
from telemetry.archive.writer import archive_store, manifest_read
from telemetry.db import bound_cursor
from telemetry.ingest.keep import body_store
from telemetry.selectors import BUCKET_SECONDS, EPOCH, engine_positions, rolled_up_sql
from telemetry.storage import ensure_partition, timescale_in_use

# The restore's staging table: the readings' columns (LIKE), this transaction only.
_STAGE_DDL = "CREATE TEMP TABLE archive_restore_stage (LIKE telemetry_reading) ON COMMIT DROP"
_COLUMNS = ", ".join(TABLE_COLUMNS)
_INSERT_READINGS = (
    f"INSERT INTO telemetry_reading ({_COLUMNS}) SELECT {_COLUMNS} FROM archive_restore_stage ON CONFLICT DO NOTHING"
)
_BATCH_COLUMNS = (
    "id, device_id, key_id, signed_at, signature, body, body_codec, body_size, door, received_at, ingest_txid, "
    "readings, seq_min, seq_max, min_sample_time, max_sample_time"
)
# The arrays in binary (%b), as ingest keeps them (telemetry/ingest/keep.py): in text, psycopg
# quoted and escaped every element in Python — 33 of a one-reading ward-day's 48 s of restore.
_INSERT_BATCHES = (
    f"INSERT INTO telemetry_signed_batch ({_BATCH_COLUMNS}) SELECT * FROM unnest(%b::bigint[], %b::bigint[], "
    "%b::text[], %b::bigint[], %b::bytea[], %b::bytea[], %b::text[], %b::integer[], %b::text[], %b::timestamptz[], "
    "%b::bigint[], %b::integer[], %b::bigint[], %b::bigint[], %b::timestamptz[], %b::timestamptz[]) "
    "ON CONFLICT (id) DO NOTHING"
)


@dataclass(frozen=True)
class Restored:
    day: dt.date
    ward: str
    rows: int  # readings in the archive
    inserted: int  # of them, put back (the others were still in the hot store)
    batches: int

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "ward": self.ward,
            "rows": self.rows,
            "inserted": self.inserted,
            "present": self.rows - self.inserted,
            "batches": self.batches,
        }


def archive_restore(
    *, day: dt.date, ward_code: str, store: ObjectStore | None = None, actor: Actor = SYSTEM
) -> Restored:
    store = store or archive_store()
    check = archive_day_check(day=day, ward_code=ward_code, store=store)
    problems = [p for p in check.problems if not p.startswith("the hot store")]
    if problems:
        raise ArchiveError(f"{day} {ward_code}: not restorable: {'; '.join(problems)}")
    manifest = manifest_read(store, day, ward_code)
    assert manifest is not None  # the check read it
    prefix = ward_prefix(day, ward_code)
    readings = _parquet(store, prefix + manifest["readings"]["file"])
    batches = _parquet(store, prefix + manifest["batches"]["file"])
    with transaction.atomic(), connection.cursor() as cursor:
        _identities_check(cursor, readings.read(columns=["device_id", "device", "patient_id", "pseudonym"]))
        watermark = engine_positions(cursor, for_update=True)
        timescale = timescale_in_use()
        if not timescale:
            ensure_partition(cursor, "telemetry_reading", day)
        inserted = 0
        cursor.execute(_STAGE_DDL)
        for index in range(readings.num_row_groups):
            inserted += _readings_insert(cursor, readings.read_row_group(index, columns=TABLE_COLUMNS))
        for index in range(batches.num_row_groups):
            _batches_insert(cursor, batches.read_row_group(index))
        if not timescale:
            _rollups_day(cursor, day, [int(d["device_pk"]) for d in manifest["devices"]], watermark)
        audit_record(
            actor=actor,
            action="archive.restored",
            detail={
                "day": day.isoformat(),
                "ward": ward_code,
                "rows": check.rows,
                "inserted": inserted,
                "pseudonyms": sorted({p for d in manifest["devices"] for p in d["pseudonyms"]}),
                "url": store.url,
            },
        )
    return Restored(day, ward_code, check.rows, inserted, batches.metadata.num_rows)


def _parquet(store: ObjectStore, key: str) -> pq.ParquetFile:
    data = store.get(key)
    if data is None:
        raise ArchiveError(f"{key} is missing")
    return pq.ParquetFile(io.BytesIO(data))


def _identities_check(cursor: Any, table: pa.Table) -> None:
    """The archive's device and patient ids still name the same device and pseudonym here."""
    devices = {
        (pk, name) for pk, name in zip(*(table.column(c).to_pylist() for c in ("device_id", "device")), strict=True)
    }
    patients = {
        (pk, name)
        for pk, name in zip(*(table.column(c).to_pylist() for c in ("patient_id", "pseudonym")), strict=True)
        if pk is not None
    }
    cursor.execute("SELECT id, device_id FROM telemetry_device WHERE id = ANY(%s::bigint[])", [[d[0] for d in devices]])
    known_devices = set(cursor.fetchall())
    cursor.execute(
        "SELECT id, pseudonym FROM telemetry_patient WHERE id = ANY(%s::bigint[])", [[p[0] for p in patients]]
    )
    known_patients = set(cursor.fetchall())
    if devices - known_devices or patients - known_patients:
        raise ArchiveError("the archive's device or patient ids name other devices or patients in this database")


def _readings_insert(cursor: Any, group: pa.Table) -> int:
    """One row group through COPY (CSV written by pyarrow: doubles and floats in their shortest
    exact form, times to the microsecond) and the conflict-free move; how many were inserted."""
    sink = io.BytesIO()
    pacsv.write_csv(group, sink, write_options=pacsv.WriteOptions(include_header=False))
    with cursor.cursor.copy(f"COPY archive_restore_stage ({_COLUMNS}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(sink.getbuffer())
    cursor.execute(_INSERT_READINGS)
    moved = int(cursor.rowcount)
    cursor.execute("TRUNCATE archive_restore_stage")
    return moved


def _batches_insert(cursor: Any, group: pa.Table) -> None:
    bodies = [bytes(b) for b in group.column("body").to_pylist()]
    stored = [body_store(b) for b in bodies]
    # A server-side-binding cursor on the transaction's connection (telemetry/db.py): Django's
    # cursors bind on the client, where %b is quoted text all the same.
    with bound_cursor() as binding:
        binding.execute(
            _INSERT_BATCHES,
            [
                group.column("id").to_pylist(),
                group.column("device_id").to_pylist(),
                group.column("key_id").to_pylist(),
                group.column("signed_at").to_pylist(),
                group.column("signature").to_pylist(),
                [data for data, _ in stored],
                [codec for _, codec in stored],
                [len(b) for b in bodies],
                group.column("door").to_pylist(),
                group.column("received_at").to_pylist(),
                group.column("ingest_txid").to_pylist(),
                group.column("readings").to_pylist(),
                group.column("seq_min").to_pylist(),
                group.column("seq_max").to_pylist(),
                group.column("min_sample_time").to_pylist(),
                group.column("max_sample_time").to_pylist(),
            ],
        )


def _rollups_day(cursor: Any, day: dt.date, devices: list[int], watermark: list[int]) -> None:
    """The devices' 1-minute and 1-hour buckets of the day rebuilt from their readings (the day's
    bounds are bucket bounds), counting what the engine has folded in (txid below its partition's watermark),
    as services.readings_assign does for its span."""
    lo, hi = day_bounds(day)
    for resolution, seconds in BUCKET_SECONDS.items():
        table = f"telemetry_rollup_{resolution}"
        cursor.execute(
            f"DELETE FROM {table} WHERE device_id = ANY(%s::bigint[]) AND bucket >= %s AND bucket < %s",
            [devices, lo, hi],
        )
        cursor.execute(
            f"""
            INSERT INTO {table}
                (patient_id, device_id, metric, bucket, n, value_sum, value_min, value_max, quality_sum, quality_n)
            SELECT patient_id, device_id, metric, date_bin(%s, sample_time, %s), count(*), sum(value), min(value),
                   max(value), coalesce(sum(signal_quality::float8), 0), count(signal_quality)
            FROM telemetry_reading
            WHERE device_id = ANY(%s::bigint[]) AND {rolled_up_sql()} AND sample_time >= %s AND sample_time < %s
            GROUP BY 1, 2, 3, 4
            """,
            [dt.timedelta(seconds=seconds), EPOCH, devices, watermark, lo, hi],
        )
