"""Step 3b, keep: the signed batch itself, in the transaction that stores its readings.

What a device signed is kept exactly — the body bytes (zstd-compressed when that pays), the key id, the
timestamp and the Ed25519 signature — so that `manage.py verify_batch` can check the device's
signature again at any later time, first here and after archiving from the archive's batch files
(telemetry/archive/). Any door keeps what its device signed: the HTTP body and headers, an MQTT
payload and its user properties, an inner batch of a gateway.

Readings do not point at their batch: the batch row carries the ingest transaction id (the same
`ingest_txid` default as the readings), the device, and the span of seq and sample time of its
valid readings, which is how a reading finds the batch that committed it (device, txid, time)
and a batch finds its readings (device, metric, seq, sample time: the idempotency key). So a
retransmitted batch is kept too (it committed no reading) and the readings table stays as it was.

A body under BODY_COMPRESS_MIN bytes is kept as it came (codec "identity"): a device sending
every second signs a one-reading body of ~230 bytes, which zstd shrinks by a fifth at ~5 µs, and
the archive must later undo that for every one of them (86,400 a device-day) before its own
column-wise zstd, which compresses such bodies far better than one at a time.

`batches_keep` writes any number of batches in one statement, for a writer that commits many
messages in one transaction; the HTTP door keeps one per request (telemetry/ingest/store.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from psycopg import AsyncCursor

from telemetry.ingest.auth import Credentials
from telemetry.ingest.validate import Row

Door = Literal["http", "mqtt", "gateway"]
BODY_CODEC = "zstd"
BODY_IDENTITY = "identity"
BODY_COMPRESS_MIN = 1024
_COMPRESSOR = pa.Codec(BODY_CODEC, compression_level=3)
_DECOMPRESSORS = {BODY_CODEC: pa.Codec(BODY_CODEC)}

SIGNED_BATCH_DDL = """
CREATE TABLE telemetry_signed_batch (
    id bigserial PRIMARY KEY,
    device_id bigint NOT NULL,
    key_id text NOT NULL,
    signed_at bigint NOT NULL,
    signature bytea NOT NULL,
    body bytea NOT NULL,
    body_codec text NOT NULL,
    body_size integer NOT NULL,
    door text NOT NULL,
    received_at timestamptz NOT NULL,
    ingest_txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    readings integer NOT NULL,
    seq_min bigint NOT NULL,
    seq_max bigint NOT NULL,
    min_sample_time timestamptz NOT NULL,
    max_sample_time timestamptz NOT NULL
);
CREATE INDEX telemetry_signed_batch_device_time ON telemetry_signed_batch (device_id, max_sample_time);
CREATE INDEX telemetry_signed_batch_device_seq ON telemetry_signed_batch (device_id, seq_max);
"""

# The arrays in binary (%b): psycopg's text format quotes and escapes every element in Python
# (a bytea or timestamptz several µs each); the binary one writes each in well under one.
_KEEP_SQL = (
    "INSERT INTO telemetry_signed_batch (device_id, key_id, signed_at, signature, body, body_codec, body_size, "
    "door, received_at, readings, seq_min, seq_max, min_sample_time, max_sample_time) "
    "SELECT * FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::bytea[], %b::bytea[], %b::text[], "
    "%b::integer[], %b::text[], %b::timestamptz[], %b::integer[], %b::bigint[], %b::bigint[], "
    "%b::timestamptz[], %b::timestamptz[])"
)


@dataclass(frozen=True)
class Signed:
    """What a device signed, as its door received it: the exact body and the three credentials."""

    credentials: Credentials
    body: bytes
    door: Door


@dataclass(frozen=True)
class KeptBatch:
    """A signed batch with the valid rows parsed from it (at least one), about to be stored."""

    device_pk: int
    signed: Signed
    rows: Sequence[Row]
    received_at: dt.datetime


def body_compress(body: bytes) -> bytes:
    return bytes(_COMPRESSOR.compress(body, asbytes=True))


def body_store(body: bytes) -> tuple[bytes, str]:
    """The bytes to keep for `body` and their codec: zstd from BODY_COMPRESS_MIN bytes, else as is."""
    if len(body) < BODY_COMPRESS_MIN:
        return body, BODY_IDENTITY
    return body_compress(body), BODY_CODEC


def body_decompress(data: bytes, *, size: int, codec: str = BODY_CODEC) -> bytes:
    if codec == BODY_IDENTITY:
        return data
    decompressor = _DECOMPRESSORS.get(codec) or pa.Codec(codec)
    return bytes(decompressor.decompress(data, decompressed_size=size, asbytes=True))


async def batches_keep(cur: AsyncCursor[Any], batches: Sequence[KeptBatch]) -> None:
    """Keep the batches, in the caller's transaction (one statement for all of them)."""
    columns: list[list[Any]] = [[] for _ in range(14)]
    for kept in batches:
        seqs = [r.seq for r in kept.rows]
        times = [r.sample_time for r in kept.rows]
        credentials = kept.signed.credentials
        stored, codec = body_store(kept.signed.body)
        values = (
            kept.device_pk,
            credentials.key_id,
            credentials.stamp,
            credentials.signature,
            stored,
            codec,
            len(kept.signed.body),
            kept.signed.door,
            kept.received_at,
            len(kept.rows),
            min(seqs),
            max(seqs),
            min(times),
            max(times),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await cur.execute(_KEEP_SQL, columns)
