"""Device ingest: authenticate, rate-limit, validate, bulk-load idempotently, answer, publish.

One request is one device's batch. The order of checks is the contract's: signature (401),
envelope (400), device/key match (403), size (413), rate (429), then item-by-item validation.
Readings are COPYed into a per-connection temp table and moved with
`INSERT … ON CONFLICT DO NOTHING RETURNING`, so a retransmit stores nothing twice and the
answer counts exactly the rows this transaction committed. Live frames go out after commit.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
import orjson
import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.utils.http import parse_header_parameters
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout

from config import live
from telemetry import db, events, ratelimit
from telemetry.schemas import (
    SCHEMA,
    BatchIn,
    ReadingIn,
    Rejection,
    TypedBatchIn,
    batch_decoder,
    reading_decoder,
    typed_batch_decoder,
)
from telemetry.units import METRICS

log = logging.getLogger(__name__)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class IngestError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.answer = Answer(status, {"error": {"code": code, "detail": detail}}, headers or {})


@dataclass(frozen=True)
class DeviceKeyRow:
    revoked: bool
    public_key: bytes
    device_pk: int
    device_id: str
    site: str
    ward: str


@dataclass
class Row:
    index: int
    seq: int
    sample_time: dt.datetime
    metric: str
    value: float
    raw_value: float
    raw_unit: str
    quality: float | None
    calibration_id: str | None


_AUTH_SQL = """
SELECT k.revoked_at IS NOT NULL, k.public_key, d.id, d.device_id, w.site, w.code
FROM telemetry_devicekey k
JOIN telemetry_device d ON d.id = k.device_id
JOIN telemetry_ward w ON w.id = d.ward_id
WHERE k.key_id = %s
"""

_STAGE_COLUMNS = (
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
    f"INSERT INTO telemetry_reading ({_STAGE_COLUMNS}) SELECT {_STAGE_COLUMNS} FROM ingest_stage "
    "ON CONFLICT DO NOTHING RETURNING patient_id, metric, seq, sample_time, value, signal_quality"
)
# The move and its work-queue entry for the engine in one round trip.
_MOVE_SQL = (
    f"WITH ins AS ({_INSERT_SQL}), logged AS ("
    "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
    "SELECT %s, min(sample_time), max(sample_time), count(*) FROM ins HAVING count(*) > 0) "
    "SELECT * FROM ins"
)


# Key ids are issued by us (`k_` + URL-safe base64); anything else cannot be one, and a NUL or a
# non-ASCII character must never reach PostgreSQL as a query parameter.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def _clean(text: str | None) -> str | None:
    """Strings PostgreSQL cannot store (NUL, lone surrogates) are a 4xx, never a 5xx."""
    if text is None:
        return None
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("is not valid Unicode") from exc
    return text


def check_headers(headers: Mapping[str, str], now: float) -> tuple[str, int, bytes]:
    # Lower-case names: Django's request.headers and the raw ASGI entry's dict both answer them.
    key_id = headers.get("x-perfuse-key", "")
    stamp = headers.get("x-perfuse-timestamp", "")
    signature = headers.get("x-perfuse-signature", "")
    if not key_id or not stamp or not signature:
        raise IngestError(
            401, "missing_credentials", "X-Perfuse-Key, X-Perfuse-Timestamp and X-Perfuse-Signature are required"
        )
    if not _KEY_ID.fullmatch(key_id) or not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise IngestError(401, "malformed_credentials", "key id or timestamp is malformed")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IngestError(401, "malformed_signature", "signature is not padded standard base64") from exc
    if len(raw_signature) != 64:
        raise IngestError(401, "malformed_signature", "an Ed25519 signature is 64 bytes")
    if abs(int(stamp) - now) > settings.PERFUSE_INGEST_CLOCK_SKEW_SECONDS:
        raise IngestError(401, "stale_timestamp", "X-Perfuse-Timestamp is more than 300 s from server time")
    return key_id, int(stamp), raw_signature


def verify_signature(key: DeviceKeyRow, stamp: int, signature: bytes, body: bytes) -> None:
    if key.revoked:
        raise IngestError(401, "revoked_key", "this key has been revoked")
    try:
        _public_key(key.public_key).verify(signature, str(stamp).encode() + b"\n" + body)
    except (InvalidSignature, ValueError) as exc:
        raise IngestError(401, "bad_signature", "signature does not match the body and timestamp") from exc


def parse_batch(body: bytes) -> BatchIn | TypedBatchIn:
    try:
        typed = typed_batch_decoder.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return _parse_items_apart(body)
    if typed.schema != SCHEMA:
        raise IngestError(400, "wrong_schema", f"schema must be {SCHEMA!r}")
    _check_envelope(typed)
    return typed


def _parse_items_apart(body: bytes) -> BatchIn:
    try:
        batch = batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IngestError(400, "malformed_json", "body is not JSON") from exc
        raise IngestError(400, "invalid_batch", str(exc)) from exc
    except RecursionError as exc:
        raise IngestError(400, "invalid_batch", "JSON is nested too deeply") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec validates UTF-8 lazily, when it builds a str: invalid bytes surface here.
        try:
            batch = _parse_lenient(body)
        except (ValueError, RecursionError, msgspec.MsgspecError):
            raise IngestError(400, "malformed_json", "body is not JSON (UTF-8)") from exc
    if batch.schema != SCHEMA:
        raise IngestError(400, "wrong_schema", f"schema must be {SCHEMA!r}")
    _check_envelope(batch)
    return batch


def _check_envelope(batch: BatchIn | TypedBatchIn) -> None:
    try:
        _clean(batch.firmware)
        _clean(batch.batch_id)
    except ValueError as exc:
        raise IngestError(400, "invalid_batch", f"firmware or batch_id {exc}") from exc


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_lenient(body: bytes) -> BatchIn:
    """Second chance, off the hot path, for JSON that msgspec refuses although the grammar allows
    it: an escaped lone surrogate ("\\ud800") is valid JSON syntax but no valid string. Each item
    is re-encoded on its own, so only the items holding one are rejected, not the whole batch."""
    # surrogateescape turns invalid UTF-8 bytes into lone surrogates too: one treatment for both.
    document = json.loads(body.decode("utf-8", "surrogateescape"), parse_constant=_no_constants)
    if not isinstance(document, dict) or not isinstance(document.get("readings"), list):
        raise ValueError("not a batch")
    batch = msgspec.convert({**document, "readings": []}, BatchIn)
    batch.readings = [msgspec.Raw(json.dumps(item).encode()) for item in document["readings"]]
    return batch


def validate_readings(batch: BatchIn | TypedBatchIn, now: dt.datetime) -> tuple[list[Row], list[Rejection]]:
    horizon = now + dt.timedelta(seconds=settings.PERFUSE_INGEST_CLOCK_SKEW_SECONDS)
    rows: list[Row] = []
    rejected: list[Rejection] = []
    readings: Sequence[msgspec.Raw | ReadingIn] = batch.readings
    for index, raw in enumerate(readings):
        if isinstance(raw, ReadingIn):
            item = raw
        else:
            try:
                item = reading_decoder.decode(raw)
            except msgspec.ValidationError as exc:
                rejected.append(Rejection(index, _seq_of(raw), "invalid_reading", str(exc)))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                # The envelope decoder skips each item without checking the UTF-8 of its strings.
                rejected.append(Rejection(index, _seq_of(raw), "invalid_reading", "reading is not valid UTF-8 JSON"))
                continue
        code, detail, value = _check_item(item, horizon)
        if code:
            rejected.append(Rejection(index, item.seq, code, detail))
            continue
        try:
            sample_time = item.sample_time.astimezone(dt.UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
            rejected.append(Rejection(index, item.seq, "invalid_reading", "sample_time is out of range"))
            continue
        rows.append(
            Row(
                index,
                item.seq,
                sample_time,
                item.metric,
                value,
                item.value,
                item.unit,
                item.signal_quality,
                item.calibration_id,
            )
        )
    return rows, rejected


def _check_item(item: ReadingIn, horizon: dt.datetime) -> tuple[str, str, float]:
    metric = METRICS.get(item.metric)
    if metric is None:
        return "unknown_metric", f"metric {item.metric[:40]!r} is not one of {sorted(METRICS)}", 0.0
    convert = metric.converters.get(item.unit)
    if convert is None:
        return "unknown_unit", f"unit {item.unit[:20]!r} is not valid for {item.metric}", 0.0
    if not math.isfinite(item.value):
        return "not_finite", "value must be a finite number", 0.0
    value = convert(item.value)
    if not metric.low <= value <= metric.high:
        return "out_of_range", f"{item.metric} must be within {metric.low}..{metric.high} {metric.canonical}", 0.0
    if item.sample_time > horizon:
        return "future_sample_time", "sample_time is more than 300 s in the future", 0.0
    try:
        _clean(item.calibration_id)
    except ValueError as exc:
        return "invalid_reading", f"calibration_id {exc}", 0.0
    return "", "", value


def _seq_of(raw: msgspec.Raw) -> int | None:
    """The seq of a rejected item, when it has a usable one (the device needs it to resend)."""
    try:
        seq = orjson.loads(bytes(raw)).get("seq")
    except orjson.JSONDecodeError:
        try:  # bad strings elsewhere in the item (lone surrogates, invalid UTF-8)
            seq = json.loads(bytes(raw).decode("utf-8", "surrogateescape"), parse_constant=_no_constants).get("seq")
        except (ValueError, RecursionError, AttributeError):
            return None
    except AttributeError:
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else None


def _limits() -> ratelimit.Limits:
    return ratelimit.Limits(
        device_rate=settings.PERFUSE_RATE_DEVICE_PER_SECOND,
        device_burst=settings.PERFUSE_RATE_DEVICE_BURST,
        site_rate=settings.PERFUSE_RATE_SITE_PER_SECOND,
        site_burst=settings.PERFUSE_RATE_SITE_BURST,
    )


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"error": {"code": code, "detail": detail}}, headers or {})


def precheck(*, method: str, content_type: str, declared_length: str | None) -> Answer | None:
    """What can be refused before the body is read: method, media type, declared size."""
    if method != "POST":
        return error(405, "method_not_allowed", "use POST", {"Allow": "POST"})
    if parse_header_parameters(content_type)[0] != "application/json":
        return error(415, "unsupported_media_type", "Content-Type must be application/json")
    try:
        declared = int(declared_length or 0)
    except ValueError:
        declared = 0
    if declared > settings.PERFUSE_INGEST_MAX_BYTES:
        return too_large()
    return None


def too_large() -> Answer:
    return error(413, "body_too_large", "at most 1 MiB per request")


async def handle(*, body: bytes, headers: Mapping[str, str]) -> Answer:
    try:
        return await _handle(body, headers)
    except IngestError as exc:
        return exc.answer
    except (psycopg.OperationalError, PoolTimeout) as exc:
        # The database is down or saturated: not the device's fault, and nothing was committed.
        # A 503 with Retry-After makes the device keep the batch and send it again.
        log.warning("ingest storage unavailable: %s", exc)
        return Answer(
            503,
            {"error": {"code": "storage_unavailable", "detail": "storage is unavailable; retry later"}},
            {"Retry-After": "1"},
        )


async def _handle(body: bytes, headers: Mapping[str, str]) -> Answer:
    key_id, stamp, signature = check_headers(headers, time.time())
    pool = await db.ingest_pool()
    async with pool.connection() as conn:
        row = await (await conn.execute(_AUTH_SQL, [key_id])).fetchone()
        if row is None:
            raise IngestError(401, "unknown_key", "no device key with this id")
        key = DeviceKeyRow(row[0], bytes(row[1]), row[2], row[3], row[4], row[5])
        verify_signature(key, stamp, signature, body)
        batch = parse_batch(body)
        if batch.device_id != key.device_id:
            raise IngestError(403, "device_mismatch", "device_id does not belong to this key")
        if len(batch.readings) > settings.PERFUSE_INGEST_MAX_READINGS:
            raise IngestError(
                413, "too_many_readings", f"at most {settings.PERFUSE_INGEST_MAX_READINGS} readings per request"
            )
        decision = await ratelimit.rate_check(
            db.ingest_redis(), device=key.device_id, site=key.site, cost=max(1, len(batch.readings)), limits=_limits()
        )
        if decision is not None and not decision.allowed:
            raise IngestError(
                429,
                "rate_limited",
                "too many readings; retry later",
                {**decision.headers(), "Retry-After": str(decision.retry_after_seconds)},
            )
        now = dt.datetime.now(dt.UTC)
        rows, rejected = validate_readings(batch, now)
        stored = await store(conn, key=key, batch=batch, rows=rows, now=now) if rows else Stored([], {}, [])
    answer_headers = decision.headers() if decision is not None else {}
    _publish(key, stored)
    return Answer(
        200,
        {
            "batch_id": batch.batch_id,
            "accepted": len(stored.inserted),
            "duplicates": len(rows) - len(stored.inserted),
            "rejected": [msgspec.structs.asdict(r) for r in rejected],
            "ingest_time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
        answer_headers,
    )


@dataclass
class Stored:
    inserted: list[tuple[Any, ...]]
    patients: dict[int, tuple[str, str]]  # patient id -> (pseudonym, ward code)
    annotations: list[dict[str, Any]]


async def store(
    conn: AsyncConnection[Any], *, key: DeviceKeyRow, batch: BatchIn | TypedBatchIn, rows: list[Row], now: dt.datetime
) -> Stored:
    lo = min(r.sample_time for r in rows)
    hi = max(r.sample_time for r in rows)
    async with conn.transaction(), conn.cursor() as cur:
        # Three independent reads in one round trip (pipeline mode). The first locks the device's
        # state row, creating it if needed, so that concurrent batches of one device serialise
        # here: a plain SELECT … FOR UPDATE locks nothing for a device's first batches, and racing
        # inserts of the same keys in different orders then deadlock.
        async with conn.cursor() as spans_cur, conn.cursor() as cal_cur:
            async with conn.pipeline():
                await cur.execute(_LOCK_DEVICE_SQL, [key.device_pk, now, hi])
                await spans_cur.execute(_SPANS_SQL, [key.device_pk, hi, lo])
                await cal_cur.execute(_CALIBRATIONS_SQL, [key.device_pk])
            state = await cur.fetchone()
            spans = await spans_cur.fetchall()
            calibrations = await cal_cur.fetchall()
        by_id = {c[0]: c[1] for c in calibrations}
        async with cur.copy(f"COPY ingest_stage ({_STAGE_COLUMNS}) FROM STDIN") as copy:
            await copy.write(_copy_text(key.device_pk, batch.firmware, rows, spans, by_id, calibrations))
        await cur.execute(_MOVE_SQL, [key.device_pk])
        inserted = await cur.fetchall()
        annotations = await _record_provenance(cur, key, batch, rows, state, spans, by_id, now)
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


def _copy_text(
    device_pk: int,
    firmware: str | None,
    rows: list[Row],
    spans: list[tuple[Any, ...]],
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
        patient = _patient_at(spans, r.sample_time)
        calibration = fields.get(r.calibration_id)
        if calibration is None:
            calibration = fields[r.calibration_id] = _copy_field(r.calibration_id)
        lines.append(
            f"{head}{_NULL if patient is None else patient}\t{r.metric}\t{r.seq}\t{r.sample_time.isoformat()}\t"
            f"{_calibrate(r, by_id, calibrations)!r}\t{r.raw_value!r}\t{r.raw_unit}\t"
            f"{_NULL if r.quality is None else repr(r.quality)}\t{calibration}{tail}"
        )
    return "".join(lines)


def _patient_at(spans: list[tuple[Any, ...]], t: dt.datetime) -> int | None:
    for patient_id, start, end, _, _ in spans:
        if start <= t and (end is None or t < end):
            return patient_id
    return None


def _calibrate(r: Row, by_id: dict[str, Any], calibrations: list[tuple[Any, ...]]) -> float:
    """Apply gain/offset of the reading's calibration (or the device's one in effect) to tissue O2."""
    if r.metric != "tissue_o2" or not calibrations:
        return r.value
    coefficients = by_id.get(r.calibration_id) if r.calibration_id else None
    if coefficients is None and not r.calibration_id:
        effective = [c for c in calibrations if c[2] <= r.sample_time]
        coefficients = effective[-1][1] if effective else None
    if not coefficients:
        return r.value
    return float(coefficients.get("gain", 1.0)) * r.value + float(coefficients.get("offset", 0.0))


async def _record_provenance(
    cur: Any,
    key: DeviceKeyRow,
    batch: BatchIn | TypedBatchIn,
    rows: list[Row],
    state: tuple[Any, ...] | None,
    spans: list[tuple[Any, ...]],
    known_calibrations: dict[str, Any],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Record firmware/calibration first sightings; a change for a device annotates its patient."""
    ordered = sorted(rows, key=lambda r: r.sample_time)
    first_time = ordered[0].sample_time
    calibration = next((r.calibration_id for r in reversed(ordered) if r.calibration_id), None)
    cal_time = next((r.sample_time for r in ordered if r.calibration_id == calibration), first_time)
    old_firmware, old_calibration = state if state else ("", "")
    annotations: list[dict[str, Any]] = []
    if calibration and calibration not in known_calibrations:
        await cur.execute(
            "INSERT INTO telemetry_calibration (device_id, calibration_id, coefficients, effective_from, created_at) "
            "VALUES (%s, %s, '{}', %s, %s) ON CONFLICT DO NOTHING",
            [key.device_pk, calibration, cal_time, now],
        )
    if batch.firmware and batch.firmware != old_firmware:
        await cur.execute(
            "INSERT INTO telemetry_firmwarerecord (device_id, version, first_seen_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            [key.device_pk, batch.firmware, first_time],
        )
        if old_firmware:
            annotations.append(
                _annotation(
                    "firmware",
                    first_time,
                    spans,
                    key,
                    f"Firmware {old_firmware} → {batch.firmware}",
                    {"from": old_firmware, "to": batch.firmware},
                )
            )
    if calibration and calibration != old_calibration and old_calibration:
        annotations.append(
            _annotation(
                "calibration",
                cal_time,
                spans,
                key,
                f"Calibration {old_calibration} → {calibration}",
                {"from": old_calibration, "to": calibration},
            )
        )
    for a in annotations:
        await cur.execute(
            "INSERT INTO telemetry_annotation (patient_id, device_id, kind, time, text, data, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            [a["patient_id"], key.device_pk, a["kind"], a["time"], a["text"], orjson.dumps(a["data"]).decode(), now],
        )
        a["id"] = (await cur.fetchone())[0]
    firmware, calibration = batch.firmware or old_firmware, calibration or old_calibration
    if (firmware, calibration) != (old_firmware, old_calibration):
        await cur.execute(
            "UPDATE telemetry_devicestate SET firmware = %s, calibration_id = %s WHERE device_id = %s",
            [firmware, calibration, key.device_pk],
        )
    return annotations


def _annotation(
    kind: str, t: dt.datetime, spans: list[tuple[Any, ...]], key: DeviceKeyRow, text: str, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "kind": kind,
        "time": t,
        "patient_id": _patient_at(spans, t),
        "text": text,
        "data": {**data, "device": key.device_id},
    }


def _publish(key: DeviceKeyRow, stored: Stored) -> None:
    """Announce what this request committed (called after the commit; never waits for Redis)."""
    by_patient: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in stored.inserted:
        if row[0] is not None:
            by_patient[row[0]].append(row)
    for patient_id, rows in by_patient.items():
        pseudonym, ward = stored.patients[patient_id]
        rows.sort(key=lambda r: (r[3], r[2]))
        seqs = [r[2] for r in rows]
        batch = events.ReadingBatchFrame(
            patient=pseudonym,
            ranges=[events.SeqRange(device=key.device_id, first=min(seqs), last=max(seqs))],
            points=[events.PointOut(t=live.iso(r[3]), metric=r[1], value=r[4], quality=r[5], seq=r[2]) for r in rows],
        )
        live.publish_after_commit([live.patient_group(pseudonym), live.ward_group(ward)], batch)
    for a in stored.annotations:
        if a["patient_id"] is None or a["patient_id"] not in stored.patients:
            continue
        pseudonym, ward = stored.patients[a["patient_id"]]
        mark = events.AnnotationMark(id=a["id"], kind=a["kind"], t=live.iso(a["time"]), text=a["text"])
        live.publish_after_commit(
            [live.patient_group(pseudonym)], events.AnnotationAddedFrame(patient=pseudonym, annotation=mark)
        )
