"""The archive's layout and its file formats (docs/archive.md), shared by writer, verifier,
restore and verify_batch.

    day=YYYY-MM-DD/ward=CODE/readings-<sha256:16>.parquet   every column of every reading
    day=YYYY-MM-DD/ward=CODE/batches-<sha256:16>.parquet    the signed batches (exact bytes)
    day=YYYY-MM-DD/ward=CODE/manifest.json                  written last

Data files are named by their content's SHA-256, so a file name never holds two contents: a
run that resumes after a crash rewrites nothing that is there, and a run over changed data
(late readings) writes new names instead of colliding with the orphans of the crashed run.
The manifest has a fixed name and is written once: it is what makes a day archived.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa


class ArchiveError(Exception):
    """An archive run that cannot be done as asked (no such day, a day not over yet, rows that
    did not come back from the hot store as they were asked for…)."""


MANIFEST_SCHEMA = "perfuse.archive.manifest/1"
READINGS_SCHEMA_VERSION = 1
BATCHES_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

_TS = pa.timestamp("us", tz="UTC")

# Every column of telemetry_reading (same names and types), plus the device's id and the
# patient's pseudonym, so the file says whose readings they are without the database.
READINGS_SCHEMA = pa.schema(
    [
        pa.field("device_id", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("patient_id", pa.int64()),
        pa.field("pseudonym", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("sample_time", _TS, nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("raw_value", pa.float64(), nullable=False),
        pa.field("raw_unit", pa.string(), nullable=False),
        pa.field("signal_quality", pa.float32()),
        pa.field("calibration_id", pa.string()),
        pa.field("firmware", pa.string()),
        pa.field("ingest_time", _TS, nullable=False),
        pa.field("ingest_txid", pa.int64(), nullable=False),
    ],
    metadata={"perfuse.schema": f"perfuse.archive.readings/{READINGS_SCHEMA_VERSION}"},
)
# The columns of telemetry_reading, in the table's order (restore writes them back).
TABLE_COLUMNS = [f.name for f in READINGS_SCHEMA if f.name not in ("device", "pseudonym")]

BATCHES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("device_id", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("signed_at", pa.int64(), nullable=False),
        pa.field("signature", pa.binary(), nullable=False),
        pa.field("body", pa.binary(), nullable=False),
        pa.field("door", pa.string(), nullable=False),
        pa.field("received_at", _TS, nullable=False),
        pa.field("ingest_txid", pa.int64(), nullable=False),
        pa.field("readings", pa.int32(), nullable=False),
        pa.field("seq_min", pa.int64(), nullable=False),
        pa.field("seq_max", pa.int64(), nullable=False),
        pa.field("min_sample_time", _TS, nullable=False),
        pa.field("max_sample_time", _TS, nullable=False),
    ],
    metadata={"perfuse.schema": f"perfuse.archive.batches/{BATCHES_SCHEMA_VERSION}"},
)


def day_prefix(day: dt.date) -> str:
    return f"day={day.isoformat()}/"


def ward_prefix(day: dt.date, ward_code: str) -> str:
    return f"{day_prefix(day)}ward={ward_code}/"


def manifest_key(day: dt.date, ward_code: str) -> str:
    return ward_prefix(day, ward_code) + MANIFEST


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)
