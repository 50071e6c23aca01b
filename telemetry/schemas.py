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


# --- edge gateways (contract section 1c) ---------------------------------------------------------

GATEWAY_SCHEMA = "perfuse.gateway/1"
GatewaySchemaName = Annotated[str, msgspec.Meta(extra_json_schema={"enum": [GATEWAY_SCHEMA]})]


class GatewayBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """The outer envelope; each inner batch is kept as raw JSON and decoded on its own, so one
    malformed entry is refused by index while the gateway's other devices are stored."""

    schema: str
    gateway_id: str
    batches: list[msgspec.Raw]


class InnerBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """One device's batch as the device signed it (section 1), carried by a gateway."""

    key: Annotated[str, msgspec.Meta(description="The device's key id")]
    timestamp: Annotated[
        int | str, msgspec.Meta(description="The device's Unix time of signing (what X-Perfuse-Timestamp carries)")
    ]
    signature: Annotated[str, msgspec.Meta(description='Base64 Ed25519 signature of TIMESTAMP + "\\n" + BODY')]
    body: Annotated[str, msgspec.Meta(description="Base64 (standard, padded) of the exact section-1 body bytes")]


class TypedGatewayBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """The outer envelope as published in the OpenAPI schema."""

    schema: GatewaySchemaName
    gateway_id: Annotated[str, msgspec.Meta(description="The gateway the signing key belongs to")]
    batches: list[InnerBatchIn]


class GatewayItemResult(msgspec.Struct, omit_defaults=True):
    """Per inner batch, what section 1 would have answered: the 200 counts, or the error with its
    status (and `retry_after` seconds with a 429)."""

    index: int
    device_id: Annotated[str | None, msgspec.Meta(description="The signing key's device, else the body's claim")]
    status: int
    batch_id: str | msgspec.UnsetType | None = msgspec.UNSET
    accepted: int | msgspec.UnsetType = msgspec.UNSET
    duplicates: int | msgspec.UnsetType = msgspec.UNSET
    rejected: list[Rejection] | msgspec.UnsetType = msgspec.UNSET
    ingest_time: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    error: ErrorDetail | msgspec.UnsetType = msgspec.UNSET
    retry_after: int | msgspec.UnsetType = msgspec.UNSET


class GatewayResult(msgspec.Struct):
    """The 200 answer to a valid outer request: one result per inner batch, by index."""

    gateway_id: str
    results: list[GatewayItemResult]


gateway_decoder = msgspec.json.Decoder(GatewayBatchIn)
inner_decoder = msgspec.json.Decoder(InnerBatchIn)
