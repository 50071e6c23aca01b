"""`manage.py verify_batch`: prove again, from what was kept, that the stored readings are what a
device signed.

For each kept batch (the hot store's telemetry_signed_batch, or a day's batch files in the
archive): the device's Ed25519 signature over `TIMESTAMP + "\\n" + BODY` with the public key
of the key id it was sent with (a key revoked later still verifies what it signed before), the
body naming that device, and then the readings. The body is validated again exactly as ingest
did when the batch arrived (telemetry.ingest.validate with the time of receipt), which gives the
rows ingest stored; each must be found — by its idempotency key (device, metric, seq, sample
time) — with the raw value, raw unit, signal quality, calibration id and firmware the device
sent, and for metrics that take no calibration the same canonical value. Rows committed by the
batch's transaction for the device that no kept batch of that transaction contains are named
as extra. Readings come from the same place as the batch: the hot store, or the archive's
readings file of the ward-day.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.db import connection

from telemetry.archive.layout import ArchiveError, day_bounds, ward_prefix
from telemetry.archive.objects import ObjectStore
from telemetry.archive.writer import archive_store, day_manifests
from telemetry.ingest import ed25519
from telemetry.ingest.answers import IngestError
from telemetry.ingest.keep import body_decompress
from telemetry.ingest.validate import Row, parse_batch, validate_readings
from telemetry.models import Device, DeviceKey

Source = Literal["hot", "archive"]
ReadingKey = tuple[str, int, dt.datetime]  # metric, seq, sample_time
# Stored: raw_value, raw_unit, signal_quality, calibration_id, firmware, value, ingest_txid
StoredRow = tuple[float, str, float | None, str | None, str | None, float, int]

_HOT_BATCH_COLUMNS = (
    "b.id, b.device_id, d.device_id, b.key_id, b.signed_at, b.signature, b.body, b.body_codec, b.body_size, "
    "b.received_at, b.ingest_txid, b.seq_min, b.seq_max, b.min_sample_time, b.max_sample_time"
)
_HOT_BATCHES = (
    f"SELECT {_HOT_BATCH_COLUMNS} FROM telemetry_signed_batch b JOIN telemetry_device d ON d.id = b.device_id"
)
_HOT_READINGS = (
    "SELECT metric, seq, sample_time, raw_value, raw_unit, signal_quality, calibration_id, firmware, value, "
    "ingest_txid "
    "FROM telemetry_reading WHERE device_id = %s::bigint AND sample_time >= %s AND sample_time <= %s"
)
_UNCALIBRATED = frozenset({"tissue_po2", "spo2", "skin_temp", "battery"})


class BatchNotFound(Exception):
    """No kept batch matches what was asked."""


@dataclass(frozen=True)
class KeptRecord:
    id: int
    device_pk: int
    device: str
    key_id: str
    signed_at: int
    signature: bytes
    body: bytes
    received_at: dt.datetime
    ingest_txid: int
    seq_min: int
    seq_max: int
    min_sample_time: dt.datetime
    max_sample_time: dt.datetime


@dataclass
class BatchCheck:
    record: KeptRecord
    signature_valid: bool = False
    readings: int = 0
    matched: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.signature_valid and not self.problems

    def as_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": r.id,
            "device_id": r.device,
            "key_id": r.key_id,
            "signed_at": r.signed_at,
            "received_at": r.received_at.isoformat(),
            "ingest_txid": r.ingest_txid,
            "signature_valid": self.signature_valid,
            "readings": self.readings,
            "matched": self.matched,
            "problems": self.problems,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Query:
    batch_id: int | None = None
    device_id: str | None = None
    seq: int | None = None
    metric: str | None = None
    sample_time: dt.datetime | None = None


# ---- the kept batches and their readings, from either source -----------------------------------


class HotSource:
    def batches(self, query: Query) -> list[KeptRecord]:
        with connection.cursor() as cursor:
            if query.batch_id is not None:
                cursor.execute(f"{_HOT_BATCHES} WHERE b.id = %s", [query.batch_id])
            else:
                cursor.execute(
                    f"{_HOT_BATCHES} WHERE d.device_id = %s AND b.seq_max >= %s AND b.seq_min <= %s ORDER BY b.id",
                    [query.device_id, query.seq, query.seq],
                )
            return [_hot_record(row) for row in cursor.fetchall()]

    def siblings(self, record: KeptRecord) -> list[KeptRecord]:
        """Kept batches of the same device committed in the same transaction (group commit)."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"{_HOT_BATCHES} WHERE b.device_id = %s AND b.ingest_txid = %s AND b.max_sample_time >= %s "
                "AND b.id <> %s",
                [record.device_pk, record.ingest_txid, record.min_sample_time, record.id],
            )
            return [_hot_record(row) for row in cursor.fetchall()]

    def readings(self, record: KeptRecord) -> dict[ReadingKey, StoredRow]:
        with connection.cursor() as cursor:
            cursor.execute(_HOT_READINGS, [record.device_pk, record.min_sample_time, record.max_sample_time])
            return {(m, s, t): tuple(rest) for m, s, t, *rest in cursor.fetchall()}


def _hot_record(row: tuple[Any, ...]) -> KeptRecord:
    (
        pk,
        device_pk,
        device,
        key_id,
        signed_at,
        signature,
        body,
        codec,
        size,
        received_at,
        txid,
        seq_min,
        seq_max,
        t_min,
        t_max,
    ) = row
    return KeptRecord(
        pk,
        device_pk,
        device,
        key_id,
        signed_at,
        bytes(signature),
        body_decompress(bytes(body), size=size, codec=codec),
        received_at,
        txid,
        seq_min,
        seq_max,
        t_min,
        t_max,
    )


class ArchiveSource:
    """The batch and readings files of one day (every ward, or one), read once."""

    def __init__(self, store: ObjectStore, day: dt.date, ward_code: str | None) -> None:
        manifests = day_manifests(store, day)
        if ward_code is not None:
            manifests = {w: m for w, m in manifests.items() if w == ward_code}
        if not manifests:
            raise BatchNotFound(f"no archive of {day}{' for ' + ward_code if ward_code else ''}")
        batch_tables, reading_tables = [], []
        for ward, manifest in sorted(manifests.items()):
            prefix = ward_prefix(day, ward)
            batch_tables.append(_read(store, prefix + manifest["batches"]["file"]))
            reading_tables.append(_read(store, prefix + manifest["readings"]["file"]))
        self.batch_table = pa.concat_tables(batch_tables)
        self.reading_table = pa.concat_tables(reading_tables)
        self.day = day

    def _records(self, mask: Any) -> list[KeptRecord]:
        rows = self.batch_table.filter(mask).to_pylist()
        return [
            KeptRecord(
                r["id"],
                r["device_id"],
                r["device"],
                r["key_id"],
                r["signed_at"],
                r["signature"],
                r["body"],
                r["received_at"],
                r["ingest_txid"],
                r["seq_min"],
                r["seq_max"],
                r["min_sample_time"],
                r["max_sample_time"],
            )
            for r in sorted(rows, key=lambda r: int(r["id"]))
        ]

    def batches(self, query: Query) -> list[KeptRecord]:
        t = self.batch_table
        if query.batch_id is not None:
            return self._records(pc.equal(t.column("id"), query.batch_id))
        mask = pc.and_(
            pc.equal(t.column("device"), query.device_id),
            pc.and_(pc.less_equal(t.column("seq_min"), query.seq), pc.greater_equal(t.column("seq_max"), query.seq)),
        )
        return self._records(mask)

    def siblings(self, record: KeptRecord) -> list[KeptRecord]:
        t = self.batch_table
        mask = pc.and_(
            pc.and_(
                pc.equal(t.column("device_id"), record.device_pk), pc.equal(t.column("ingest_txid"), record.ingest_txid)
            ),
            pc.not_equal(t.column("id"), record.id),
        )
        return self._records(mask)

    def readings(self, record: KeptRecord) -> dict[ReadingKey, StoredRow]:
        t = self.reading_table
        lo, hi = day_bounds(self.day)
        mask = pc.and_(
            pc.equal(t.column("device_id"), record.device_pk),
            pc.and_(
                pc.greater_equal(
                    t.column("sample_time"),
                    pa.scalar(max(lo, record.min_sample_time), t.schema.field("sample_time").type),
                ),
                pc.less_equal(
                    t.column("sample_time"),
                    pa.scalar(min(hi, record.max_sample_time), t.schema.field("sample_time").type),
                ),
            ),
        )
        found: dict[ReadingKey, StoredRow] = {}
        for r in t.filter(mask).to_pylist():
            found[(r["metric"], r["seq"], r["sample_time"])] = (
                r["raw_value"],
                r["raw_unit"],
                r["signal_quality"],
                r["calibration_id"],
                r["firmware"],
                r["value"],
                r["ingest_txid"],
            )
        return found


def _read(store: ObjectStore, key: str) -> pa.Table:
    data = store.get(key)
    if data is None:
        raise ArchiveError(f"{key} is missing")
    return pq.read_table(io.BytesIO(data))


# ---- the check ----------------------------------------------------------------------------------


def batches_verify(
    *,
    query: Query,
    source: Source = "hot",
    day: dt.date | None = None,
    ward_code: str | None = None,
    store: ObjectStore | None = None,
) -> list[BatchCheck]:
    """Check every kept batch that `query` names (see the module docstring)."""
    if query.batch_id is None and (query.device_id is None or query.seq is None):
        raise ValueError("name a batch id, or a device and a seq")
    kept: HotSource | ArchiveSource
    if source == "hot":
        kept = HotSource()
    else:
        if day is None:
            raise ValueError("the archive is searched one day at a time: give the day")
        kept = ArchiveSource(store or archive_store(), day, ward_code)
    records = kept.batches(query)
    if query.metric is not None and query.sample_time is not None:
        # A reading: the batch that committed it (its transaction), of those holding its seq.
        stored_by = {r.id: kept.readings(r).get((query.metric, query.seq or 0, query.sample_time)) for r in records}
        records = [r for r in records if (row := stored_by[r.id]) is not None and row[6] == r.ingest_txid]
    if not records:
        raise BatchNotFound("no kept batch matches")
    return [_check(kept, record) for record in records]


def _check(kept: HotSource | ArchiveSource, record: KeptRecord) -> BatchCheck:
    check = BatchCheck(record)
    check.signature_valid = _signature_valid(record, check.problems)
    try:
        batch = parse_batch(record.body)
    except IngestError as exc:
        check.problems.append(f"the signed body is not a batch: {exc.answer.body}")
        return check
    if batch.device_id != record.device:
        check.problems.append(f"the signed body names device {batch.device_id!r}")
    rows, _ = validate_readings(batch, record.received_at)
    check.readings = len(rows)
    stored = kept.readings(record)
    for row in rows:
        problem = _compare(row, batch.firmware, stored.get((row.metric, row.seq, row.sample_time)))
        if problem:
            check.problems.append(f"{row.metric} seq {row.seq} at {row.sample_time.isoformat()}: {problem}")
        else:
            check.matched += 1
    signed = {(r.metric, r.seq, r.sample_time) for r in rows}
    for sibling in kept.siblings(record):
        signed |= _signed_keys(sibling)
    extra = [k for k, v in stored.items() if v[6] == record.ingest_txid and k not in signed]
    for metric, seq, t in sorted(extra):
        check.problems.append(f"{metric} seq {seq} at {t.isoformat()}: stored by this transaction but not signed")
    return check


def _signature_valid(record: KeptRecord, problems: list[str]) -> bool:
    key = DeviceKey.objects.filter(key_id=record.key_id).first()
    if key is None:
        problems.append(f"unknown key {record.key_id}")
        return False
    if key.device_id != record.device_pk:
        problems.append(f"key {record.key_id} is not this device's")
        return False
    if Device.objects.filter(pk=record.device_pk, device_id=record.device).first() is None:
        problems.append("the device id no longer names this device")
        return False
    # The doors' verify (libsodium, or OpenSSL refusing small-order keys): the same answer as at ingest.
    signed = str(record.signed_at).encode() + b"\n" + record.body
    if not ed25519.verify(bytes(key.public_key), record.signature, signed):
        problems.append("the signature does not match the kept body and timestamp")
        return False
    return True


def _signed_keys(record: KeptRecord) -> set[ReadingKey]:
    try:
        rows, _ = validate_readings(parse_batch(record.body), record.received_at)
    except IngestError:
        return set()
    return {(r.metric, r.seq, r.sample_time) for r in rows}


def _float32(value: float | None) -> float | None:
    return None if value is None else float(struct.unpack("f", struct.pack("f", value))[0])


def _compare(row: Row, firmware: str | None, stored: StoredRow | None) -> str:
    if stored is None:
        return "signed but not stored"
    raw_value, raw_unit, quality, calibration_id, stored_firmware, value, _ = stored
    differences: Iterable[str] = [
        name
        for name, same in (
            ("raw_value", raw_value == row.raw_value),
            ("raw_unit", raw_unit == row.raw_unit),
            ("signal_quality", _float32(quality) == _float32(row.quality)),
            ("calibration_id", calibration_id == row.calibration_id),
            ("firmware", stored_firmware == firmware),
            ("value", row.metric not in _UNCALIBRATED or math.isclose(value, row.value, rel_tol=1e-12)),
        )
        if not same
    ]
    return ", ".join(f"{name} differs" for name in differences)
