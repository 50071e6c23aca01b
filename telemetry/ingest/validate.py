"""Step 2, parse and validate: the body as a typed batch, then every reading accepted or rejected.

`parse_batch` refuses what is not a batch at all (400). `batch_check` holds the batch against the
key that signed it (403) and the size limit (413). `validate_readings` never refuses the batch: it
splits the items into rows to store (canonical unit, UTC) and rejections with a stable code each
(telemetry.schemas.REJECTION_CODES), by index, so a device can resend exactly what was refused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from django.conf import settings

from telemetry.ingest.answers import IngestError
from telemetry.ingest.auth import DeviceKeyRow
from telemetry.schemas import (
    SCHEMA,
    BatchIn,
    ReadingIn,
    Rejection,
    RejectionCode,
    TypedBatchIn,
    batch_decoder,
    reading_decoder,
    typed_batch_decoder,
)
from telemetry.units import METRICS


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


@dataclass(frozen=True)
class Horizon:
    """Sample times a reading may have: back to the configured max age, at most the skew ahead."""

    oldest: dt.datetime
    newest: dt.datetime
    max_age_days: int

    @classmethod
    def at(cls, now: dt.datetime) -> Horizon:
        days = settings.PERFUSE_INGEST_MAX_AGE_DAYS
        skew = dt.timedelta(seconds=settings.PERFUSE_INGEST_CLOCK_SKEW_SECONDS)
        return cls(now - dt.timedelta(days=days), now + skew, days)


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


def parse_batch(body: bytes) -> BatchIn | TypedBatchIn:
    try:
        typed = typed_batch_decoder.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return _parse_items_apart(body)
    if typed.schema != SCHEMA:
        raise IngestError("wrong_schema", f"schema must be {SCHEMA!r}")
    _check_envelope(typed)
    return typed


def _parse_items_apart(body: bytes) -> BatchIn:
    try:
        batch = batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IngestError("malformed_json", "body is not JSON") from exc
        raise IngestError("invalid_batch", str(exc)) from exc
    except RecursionError as exc:
        raise IngestError("invalid_batch", "JSON is nested too deeply") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec validates UTF-8 lazily, when it builds a str: invalid bytes surface here.
        try:
            batch = _parse_lenient(body)
        except (ValueError, RecursionError, msgspec.MsgspecError):
            raise IngestError("malformed_json", "body is not JSON (UTF-8)") from exc
    if batch.schema != SCHEMA:
        raise IngestError("wrong_schema", f"schema must be {SCHEMA!r}")
    _check_envelope(batch)
    return batch


def _check_envelope(batch: BatchIn | TypedBatchIn) -> None:
    try:
        _clean(batch.firmware)
        _clean(batch.batch_id)
    except ValueError as exc:
        raise IngestError("invalid_batch", f"firmware or batch_id {exc}") from exc


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


def batch_check(batch: BatchIn | TypedBatchIn, *, key: DeviceKeyRow) -> None:
    """The batch is the signing device's own (403) and within the size limit (413)."""
    if batch.device_id != key.device_id:
        raise IngestError("device_mismatch", "device_id does not belong to this key")
    if len(batch.readings) > settings.PERFUSE_INGEST_MAX_READINGS:
        raise IngestError("too_many_readings", f"at most {settings.PERFUSE_INGEST_MAX_READINGS} readings per request")


def validate_readings(batch: BatchIn | TypedBatchIn, now: dt.datetime) -> tuple[list[Row], list[Rejection]]:
    horizon = Horizon.at(now)
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


def _check_item(item: ReadingIn, horizon: Horizon) -> tuple[RejectionCode | None, str, float]:
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
    if item.sample_time > horizon.newest:
        return "future_sample_time", "sample_time is more than 300 s in the future", 0.0
    if item.sample_time < horizon.oldest:
        return "too_old", f"sample_time is more than {horizon.max_age_days} days in the past", 0.0
    try:
        _clean(item.calibration_id)
    except ValueError as exc:
        return "invalid_reading", f"calibration_id {exc}", 0.0
    return None, "", value


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
