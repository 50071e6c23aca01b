"""Typed payloads of the device ingest path (msgspec: strict, no extra fields).

A batch is first decoded in one pass with every reading typed (the common case: all items are
well-formed). When that fails, the envelope is decoded with each reading kept as raw JSON and each
reading is decoded on its own, so one malformed item is rejected with a code while its neighbours
are stored.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

SCHEMA = "perfuse.readings/1"
MAX_SEQ = 2**63 - 1
Text64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    schema: str
    device_id: str
    readings: list[msgspec.Raw]
    batch_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    firmware: Text64 | None = None


class ReadingIn(msgspec.Struct, forbid_unknown_fields=True):
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    sample_time: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    metric: str
    value: float
    unit: str
    signal_quality: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    calibration_id: Text64 | None = None


# Stable codes of item-by-item rejections (documented in the OpenAPI schema).
REJECTION_CODES = (
    "invalid_reading",
    "unknown_metric",
    "unknown_unit",
    "not_finite",
    "out_of_range",
    "future_sample_time",
)


class TypedBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """The fast path: a batch whose items are all well-formed decodes in a single C call."""

    schema: str
    device_id: str
    readings: list[ReadingIn]
    batch_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    firmware: Text64 | None = None


class Rejection(msgspec.Struct):
    index: int
    seq: int | None
    code: str
    detail: str


class IngestResult(msgspec.Struct):
    batch_id: str | None
    accepted: int
    duplicates: int
    rejected: list[Rejection]
    ingest_time: str


batch_decoder = msgspec.json.Decoder(BatchIn)
typed_batch_decoder = msgspec.json.Decoder(TypedBatchIn)
reading_decoder = msgspec.json.Decoder(ReadingIn)
encoder = msgspec.json.Encoder()
