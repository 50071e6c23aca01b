"""Typed payloads of the device ingest path (msgspec: strict, no extra fields).

A batch is first decoded in one pass with every reading typed (the common case: all items are
well-formed). When that fails, the envelope is decoded with each reading kept as raw JSON and each
reading is decoded on its own, so one malformed item is rejected with a code while its neighbours
are stored.

These structs are also the ingest's OpenAPI schema (telemetry/openapi.py generates it from them).
The `Meta` annotations that carry only a description or `extra_json_schema` document what the
pipeline checks after decoding (known metrics, the schema name); they add no decoding work.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, get_args

import msgspec

from telemetry.units import METRICS

SCHEMA = "perfuse.readings/1"
MAX_SEQ = 2**63 - 1
Text64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
BatchId = Annotated[str, msgspec.Meta(max_length=64, description="Optional, for tracing")]
SchemaName = Annotated[str, msgspec.Meta(extra_json_schema={"enum": [SCHEMA]})]
DeviceId = Annotated[str, msgspec.Meta(description="The device the signing key belongs to")]
Metric = Annotated[str, msgspec.Meta(extra_json_schema={"enum": sorted(METRICS)})]
Unit = Annotated[
    str,
    msgspec.Meta(description="; ".join(f"{name}: {', '.join(m.converters)}" for name, m in METRICS.items())),
]
SampleTime = Annotated[dt.datetime, msgspec.Meta(tz=True, description="RFC 3339 with offset")]


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    schema: str
    device_id: str
    readings: list[msgspec.Raw]
    batch_id: BatchId | None = None
    firmware: Text64 | None = None


class ReadingIn(msgspec.Struct, forbid_unknown_fields=True):
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    sample_time: SampleTime
    metric: Metric
    value: float
    unit: Unit
    signal_quality: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    calibration_id: Text64 | None = None


class TypedBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """The fast path: a batch whose items are all well-formed decodes in a single C call."""

    schema: SchemaName
    device_id: DeviceId
    readings: list[ReadingIn]
    batch_id: BatchId | None = None
    firmware: Text64 | None = None


# Stable codes of item-by-item rejections (the OpenAPI enum of `rejected[].code`).
RejectionCode = Literal[
    "invalid_reading",
    "unknown_metric",
    "unknown_unit",
    "not_finite",
    "out_of_range",
    "future_sample_time",
    "too_old",
]
REJECTION_CODES: tuple[RejectionCode, ...] = get_args(RejectionCode)


class Rejection(msgspec.Struct):
    index: int
    seq: int | None
    code: RejectionCode
    detail: str


class IngestResult(msgspec.Struct):
    """The 200 answer: what this request committed and which items it rejected, by index."""

    batch_id: str | None
    accepted: Annotated[int, msgspec.Meta(description="Readings committed by this request")]
    duplicates: Annotated[int, msgspec.Meta(description="Valid readings already stored")]
    rejected: list[Rejection]
    ingest_time: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class ErrorDetail(msgspec.Struct):
    code: str
    detail: str


class ErrorBody(msgspec.Struct):
    """Every answer other than 200: `{"error": {"code", "detail"}}`."""

    error: ErrorDetail


batch_decoder = msgspec.json.Decoder(BatchIn)
typed_batch_decoder = msgspec.json.Decoder(TypedBatchIn)
reading_decoder = msgspec.json.Decoder(ReadingIn)
encoder = msgspec.json.Encoder()
