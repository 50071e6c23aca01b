"""Step 3, store: one device's valid rows in one transaction, counted from what it committed.

Three independent reads go out in one round trip (pipeline mode): the device's state row (locked,
created if needed), the patient assignments spanning the batch, and the device's calibrations.
The rows are then COPYed into a per-connection temporary table (telemetry/db.py creates it) and
moved with `INSERT … ON CONFLICT DO NOTHING RETURNING`, together with the engine's work-queue row
(telemetry_ingest_log), so a retransmit stores nothing twice and the answer counts exactly the
rows this transaction committed. Provenance (firmware, calibration) is recorded in the same
transaction (telemetry/ingest/provenance.py), and so is the signed batch itself
(telemetry/ingest/keep.py), sent in the same round trip as the move.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from telemetry.calibrations import CALIBRATED_METRIC, coefficients_apply, coefficients_for
from telemetry.ingest.auth import DeviceKeyRow
from telemetry.ingest.keep import KeptBatch, Signed, batches_keep
from telemetry.ingest.provenance import AnnotationRow, Span, patient_at, provenance_record
from telemetry.ingest.validate import Row
from telemetry.schemas import BatchIn, TypedBatchIn

STAGE_COLUMNS = (
    "device_id, patient_id, metric, seq, sample_time, value, raw_value, raw_unit, "
    "signal_quality, calibration_id, firmware"
)
# Locks (creating if needed) the device's state row and records when it was last heard from. The
# RETURNING values are the firmware and calibration known *before* this batch (not updated here).
_LOCK_DEVICE_SQL = (
    "INSERT INTO telemetry_devicestate (device_id, firmware, calibration_id, last_seen_at, last_sample_time) "
    "VALUES (%s, '', '', %s, %s) ON CONFLICT (device_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at, "
    "last_sample_time = GREATEST(telemetry_devicestate.last_sample_time, EXCLUDED.last_sample_time) "
    "RETURNING firmware, calibration_id"
)
_SPANS_SQL = (
    "SELECT a.patient_id, a.start, a.end, p.pseudonym, w.code FROM telemetry_assignment a "
    "JOIN telemetry_patient p ON p.id = a.patient_id JOIN telemetry_ward w ON w.id = p.ward_id "
    "WHERE a.device_id = %s AND a.start <= %s AND (a.end IS NULL OR a.end > %s) ORDER BY a.start"
)
_CALIBRATIONS_SQL = (
    "SELECT calibration_id, coefficients, effective_from FROM telemetry_calibration "
    "WHERE device_id = %s ORDER BY effective_from"
)
_INSERT_SQL = (
    f"INSERT INTO telemetry_reading ({STAGE_COLUMNS}) SELECT {STAGE_COLUMNS} FROM ingest_stage "
    "ON CONFLICT DO NOTHING RETURNING patient_id, metric, seq, sample_time, value, signal_quality"
)
# The move and its work-queue entry for the engine in one round trip.
_MOVE_SQL = (
    f"WITH ins AS ({_INSERT_SQL}), logged AS ("
    "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
    "SELECT %s, min(sample_time), max(sample_time), count(*) FROM ins HAVING count(*) > 0) "
    "SELECT * FROM ins"
)


@dataclass
class Stored:
    inserted: list[tuple[Any, ...]]  # (patient_id, metric, seq, sample_time, value, signal_quality)
    patients: dict[int, tuple[str, str]]  # patient id -> (pseudonym, ward code)
    annotations: list[AnnotationRow]


async def readings_store(
    conn: AsyncConnection[Any],
    *,
    key: DeviceKeyRow,
    batch: BatchIn | TypedBatchIn,
    rows: list[Row],
    now: dt.datetime,
    signed: Signed,
) -> Stored:
    """Store `rows` (at least one) of the key's device and keep the batch `signed` they came in;
    what this transaction committed."""
    lo = min(r.sample_time for r in rows)
    hi = max(r.sample_time for r in rows)
    async with conn.transaction(), conn.cursor() as cur:
        # The first read locks the device's state row, creating it if needed, so that concurrent
        # batches of one device serialise here: a plain SELECT … FOR UPDATE locks nothing for a
        # device's first batches, and racing inserts of the same keys in different orders then
        # deadlock.
        async with conn.cursor() as spans_cur, conn.cursor() as cal_cur:
            async with conn.pipeline():
                await cur.execute(_LOCK_DEVICE_SQL, [key.device_pk, now, hi])
                await spans_cur.execute(_SPANS_SQL, [key.device_pk, hi, lo])
                await cal_cur.execute(_CALIBRATIONS_SQL, [key.device_pk])
            state = await cur.fetchone()
            spans: list[Span] = await spans_cur.fetchall()
            calibrations = await cal_cur.fetchall()
        by_id = {c[0]: c[1] for c in calibrations}
        async with cur.copy(f"COPY ingest_stage ({STAGE_COLUMNS}) FROM STDIN") as copy:
            await copy.write(copy_text(key.device_pk, batch.firmware, rows, spans, by_id, calibrations))
        async with conn.cursor() as keep_cur, conn.pipeline():
            await cur.execute(_MOVE_SQL, [key.device_pk])
            await batches_keep(keep_cur, [KeptBatch(key.device_pk, signed, rows, now)])
        inserted = await cur.fetchall()
        annotations = await provenance_record(
            cur, key=key, firmware=batch.firmware, rows=rows, state=state, spans=spans, known=by_id, now=now
        )
    patients = {s[0]: (s[3], s[4]) for s in spans}
    return Stored(inserted, patients, annotations)


_NULL = "\\N"  # NULL in COPY's text format


def _copy_field(text: str | None) -> str:
    """A text value in COPY's text format (NULs were rejected during validation)."""
    if text is None:
        return _NULL
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def copy_text(
    device_pk: int,
    firmware: str | None,
    rows: list[Row],
    spans: list[Span],
    by_id: dict[str, Any],
    calibrations: list[tuple[Any, ...]],
) -> str:
    """The whole batch as one COPY text payload: formatting it in one pass costs a fraction of
    psycopg's per-row `write_row`, the biggest single CPU item of the request before this.
    Metric and unit come from fixed sets; the free-text fields go through `_copy_field`."""
    head = f"{device_pk}\t"
    tail = f"\t{_copy_field(firmware)}\n"
    fields: dict[str | None, str] = {}
    lines = []
    for r in rows:
        patient = patient_at(spans, r.sample_time)
        calibration = fields.get(r.calibration_id)
        if calibration is None:
            calibration = fields[r.calibration_id] = _copy_field(r.calibration_id)
        lines.append(
            f"{head}{_NULL if patient is None else patient}\t{r.metric}\t{r.seq}\t{r.sample_time.isoformat()}\t"
            f"{_calibrate(r, by_id, calibrations)!r}\t{r.raw_value!r}\t{r.raw_unit}\t"
            f"{_NULL if r.quality is None else repr(r.quality)}\t{calibration}{tail}"
        )
    return "".join(lines)


def _calibrate(r: Row, by_id: dict[str, Any], calibrations: list[tuple[Any, ...]]) -> float:
    """Apply gain/offset of the reading's calibration (or the device's one in effect) to tissue O2."""
    if r.metric != CALIBRATED_METRIC or not calibrations:
        return r.value
    return coefficients_apply(r.value, coefficients_for(r.calibration_id, r.sample_time, by_id, calibrations))
