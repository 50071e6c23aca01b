"""A device-day out of the hot store as packed binary rows: what `manage.py archive` reads.

PostgreSQL concatenates each row's columns through their binary send functions (`int8send`,
`float8send`, `timestamptz_send`…: big-endian, a timestamp as microseconds since 2000-01-01 UTC,
a double as its exact IEEE bits) into one fixed-width record, and the day's records into one
`string_agg` value, sent by a binary COPY: one protocol row for a device-day instead of one a
reading, and no text to format or parse. numpy reads the records as columns at once.

- **Text columns as codes.** A device-day's text values are few (a metric or two, a unit each,
  the day's calibrations and firmwares, its patient and pseudonym): a first statement lists
  them (one scan, hashed); the records carry each value's 1-based position in that list
  (`array_position`, which also finds NULL), the list turned back into the values by pyarrow.
  Free text (quotes, line breaks, non-ASCII) comes back byte for byte, as nothing is escaped.
- **Order restored here, not by PostgreSQL.** The aggregates take no `ORDER BY` (PostgreSQL
  15 sorts once for each ordered aggregate); numpy sorts the records (readings by metric,
  sample time and seq; batches by id). The aggregates of one statement are fed the same rows
  in the same order, so the i-th signature belongs to the i-th record. The bodies come in a
  second statement (cheaper for PostgreSQL than a third aggregate beside the two) with each
  batch's id beside its body, by which they are matched to their records. The rows counted
  (by the listing of a device-day's kinds, or beside the records of a device-day of one kind)
  are checked against the records (a row whose record came out NULL would otherwise be skipped
  by `string_agg`).
- **NULLs** of a numeric column travel as a flag and a zero beside it (a NULL would make the
  whole record NULL).
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from telemetry.archive.layout import READINGS_SCHEMA, ArchiveError
from telemetry.ingest.keep import BODY_IDENTITY, body_decompress

# A timestamp sent in binary: microseconds since 2000-01-01 00:00 UTC (PostgreSQL's epoch).
_PG_EPOCH_US = 946_684_800_000_000
_PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_TS = pa.timestamp("us", tz="UTC")
# The bodies of one aggregate at most (a bytea value is at most 1 GB): a device-day beyond it is
# fetched in several id ranges. A 1 Hz device sending every sample alone keeps ~20 MB a day.
BATCH_BYTES_PER_FETCH = 256 * 1024 * 1024


Field = tuple[str, str, str]  # name, numpy type (big-endian), SQL of its bytes


@functools.cache
def _layout(copy: str, fields: tuple[Field, ...], omitted: frozenset[str]) -> tuple[str, np.dtype[Any]]:
    """The COPY statement (`copy` with the record's SQL for `{record}`) and the numpy record type
    of `fields` less those `omitted` (a device-day's constants: one metric, one firmware…, known
    from its first statement and not packed into every record)."""
    kept = [field for field in fields if field[0] not in omitted]
    record = " || ".join(sql for _, _, sql in kept)
    return copy.replace("{record}", record), np.dtype([(name, kind) for name, kind, _ in kept])


def _field(records: np.ndarray[Any, Any], name: str, constant: int) -> np.ndarray[Any, Any]:
    """A packed field, or `constant` for every record when the field was omitted."""
    if name in (records.dtype.names or ()):
        return records[name]
    return np.full(len(records), constant, ">i4")


# --- readings -----------------------------------------------------------------------------

_READINGS_WHERE = "device_id = %(device)s::bigint AND sample_time >= %(lo)s AND sample_time < %(hi)s"
_READINGS_KINDS_SQL = f"""
    SELECT k.metric, k.raw_unit, k.calibration_id, k.firmware, k.patient_id, p.pseudonym, k.n
    FROM (SELECT metric, raw_unit, calibration_id, firmware, patient_id, count(*) AS n FROM telemetry_reading
          WHERE {_READINGS_WHERE} GROUP BY 1, 2, 3, 4, 5) k
    LEFT JOIN telemetry_patient p ON p.id = k.patient_id
"""
_READINGS_TEXT = ["metric", "raw_unit", "calibration_id", "firmware"]
_READINGS_FIELDS: tuple[Field, ...] = (
    ("patient", ">i4", "int4send(array_position(%(patient_id)s::bigint[], patient_id))"),
    *[(name, ">i4", f"int4send(array_position(%({name})s::text[], {name}))") for name in _READINGS_TEXT],
    ("seq", ">i8", "int8send(seq)"),
    ("sample_time", ">i8", "timestamptz_send(sample_time)"),
    ("value", ">f8", "float8send(value)"),
    ("raw_value", ">f8", "float8send(raw_value)"),
    ("no_quality", "?", "boolsend(signal_quality IS NULL)"),
    ("signal_quality", ">f4", "float4send(coalesce(signal_quality, 0))"),
    ("ingest_time", ">i8", "timestamptz_send(ingest_time)"),
    ("ingest_txid", ">i8", "int8send(ingest_txid)"),
)
_READINGS_COPY = f"""COPY (
    SELECT string_agg({{record}}, ''::bytea) FROM telemetry_reading WHERE {_READINGS_WHERE}
) TO STDOUT (FORMAT binary)"""
_READINGS_CODES = {name: name for name in _READINGS_TEXT} | {"patient_id": "patient", "pseudonym": "patient"}
# Most device-days have one value of each text column: the text of one reading, and then one
# statement that packs the records without codes and counts the readings unlike it (when there
# are any, the device-day is read again with its kinds listed). Saves the kinds' hashed scan.
_READINGS_FIRST_SQL = f"""
    SELECT r.*, p.pseudonym FROM (SELECT {", ".join(_READINGS_TEXT)}, patient_id FROM telemetry_reading
                                  WHERE {_READINGS_WHERE} LIMIT 1) r
    LEFT JOIN telemetry_patient p ON p.id = r.patient_id
"""
_READINGS_ALIKE = " AND ".join(
    [f"{name} IS NOT DISTINCT FROM %({name}_1)s::text" for name in _READINGS_TEXT]
    + ["patient_id IS NOT DISTINCT FROM %(patient_id_1)s::bigint"]
)
_READINGS_ONE_KIND_COPY = f"""COPY (
    SELECT string_agg({{record}}, ''::bytea), count(*), count(*) FILTER (WHERE {_READINGS_ALIKE})
    FROM telemetry_reading WHERE {_READINGS_WHERE}
) TO STDOUT (FORMAT binary)"""


@dataclass(frozen=True)
class DeviceReadings:
    """One device-day's readings as fetched: the packed records and the lists their codes index."""

    records: bytes
    values: dict[str, list[Any]]  # column name → its distinct values of the day, sorted
    rows: int
    omitted: frozenset[str]  # code fields not packed: their column has one value


def readings_fetch(raw: Any, device_pk: int, lo: dt.datetime, hi: dt.datetime) -> DeviceReadings:
    """One device-day's readings (`raw`: a psycopg cursor in the archive's snapshot)."""
    where = {"device": device_pk, "lo": lo, "hi": hi}
    raw.execute(_READINGS_FIRST_SQL, where)
    first = raw.fetchone()
    return (first is not None and _readings_of_one_kind(raw, where, first)) or _readings_of_kinds(raw, where)


def _readings_of_one_kind(raw: Any, where: dict[str, Any], first: tuple[Any, ...]) -> DeviceReadings | None:
    """The device-day's readings when every one has the text values of `first` (its patient, its
    metric…, as most device-days do), else None: one statement, the records without codes."""
    values = dict(zip((*_READINGS_TEXT, "patient_id", "pseudonym"), ([v] for v in first), strict=True))
    copy, _ = _layout(_READINGS_ONE_KIND_COPY, _READINGS_FIELDS, frozenset(_READINGS_CODES.values()))
    params = {**where, **{f"{name}_1": value for name, [value] in values.items()}}
    [(records, rows, alike)] = _binary_rows(_copied(raw, copy, params), 3)
    if _int8(rows) != _int8(alike):
        return None
    return DeviceReadings(records, values, _int8(rows), frozenset(_READINGS_CODES.values()))


def _readings_of_kinds(raw: Any, where: dict[str, Any]) -> DeviceReadings:
    """The device-day's readings whatever their text values: listed first, codes in the records."""
    raw.execute(_READINGS_KINDS_SQL, where)
    kinds = raw.fetchall()
    values: dict[str, list[Any]] = {name: _sorted({k[i] for k in kinds}) for i, name in enumerate(_READINGS_TEXT)}
    patients = sorted({(k[4], k[5]) for k in kinds}, key=lambda p: (p[0] is not None, p[0] or 0))
    values["patient_id"] = [p for p, _ in patients]
    values["pseudonym"] = [s for _, s in patients]
    rows = sum(int(k[6]) for k in kinds)
    omitted = frozenset(code for name, code in _READINGS_CODES.items() if len(values[name]) == 1)
    if not rows:
        return DeviceReadings(b"", values, 0, omitted)
    copy, _ = _layout(_READINGS_COPY, _READINGS_FIELDS, omitted)
    params = {**where, **{name: values[name] for name in (*_READINGS_TEXT, "patient_id")}}
    [(records,)] = _binary_rows(_copied(raw, copy, params), 1)
    return DeviceReadings(records, values, rows, omitted)


def readings_columns(fetched: DeviceReadings) -> dict[str, pa.Array]:
    """The readings' columns of READINGS_SCHEMA (all but the device's), sorted by metric, sample
    time and seq."""
    _, dtype = _layout(_READINGS_COPY, _READINGS_FIELDS, fetched.omitted)
    records = _records(fetched.records, dtype, fetched.rows)
    # The codes of `metric` follow the sorted list of the day's metrics, so sorting by code sorts
    # by name (by code point, as Parquet orders strings).
    records = records[np.lexsort((records["seq"], records["sample_time"], _field(records, "metric", 1)))]
    columns = {
        name: _text(records, code, fetched.values[name], READINGS_SCHEMA.field(name).type)
        for name, code in _READINGS_CODES.items()
    }
    columns["seq"] = _native(records["seq"])
    columns["sample_time"] = _times(records["sample_time"])
    columns["value"] = _native(records["value"])
    columns["raw_value"] = _native(records["raw_value"])
    columns["signal_quality"] = pa.array(_plain(records["signal_quality"]), mask=records["no_quality"])
    columns["ingest_time"] = _times(records["ingest_time"])
    columns["ingest_txid"] = _native(records["ingest_txid"])
    return columns


# --- signed batches -----------------------------------------------------------------------

_BATCHES_WHERE = "device_id = %(device)s::bigint AND max_sample_time >= %(lo)s AND min_sample_time < %(hi)s"
_BATCHES_KINDS_SQL = f"""
    SELECT key_id, body_codec, door, count(*), sum(octet_length(body)), min(id), max(id),
           min(octet_length(signature)), max(octet_length(signature))
    FROM telemetry_signed_batch WHERE {_BATCHES_WHERE} GROUP BY 1, 2, 3
"""
_BATCH_SIZES_SQL = f"SELECT id, octet_length(body) FROM telemetry_signed_batch WHERE {_BATCHES_WHERE} ORDER BY id"
_BATCHES_TEXT = ["key_id", "body_codec", "door"]
_BATCHES_FIELDS: tuple[Field, ...] = (
    ("id", ">i8", "int8send(id)"),
    ("signed_at", ">i8", "int8send(signed_at)"),
    ("signature_bytes", ">i4", "int4send(octet_length(signature))"),
    ("body_bytes", ">i4", "int4send(octet_length(body))"),
    ("body_size", ">i4", "int4send(body_size)"),
    ("received_at", ">i8", "timestamptz_send(received_at)"),
    ("ingest_txid", ">i8", "int8send(ingest_txid)"),
    ("readings", ">i4", "int4send(readings)"),
    ("seq_min", ">i8", "int8send(seq_min)"),
    ("seq_max", ">i8", "int8send(seq_max)"),
    ("min_sample_time", ">i8", "timestamptz_send(min_sample_time)"),
    ("max_sample_time", ">i8", "timestamptz_send(max_sample_time)"),
    *[(name, ">i4", f"int4send(array_position(%({name})s::text[], {name}))") for name in _BATCHES_TEXT],
)
_BATCHES_RANGE = f"{_BATCHES_WHERE} AND id BETWEEN %(first)s AND %(last)s"
_BATCHES_COPY = f"""COPY (
    SELECT string_agg({{record}}, ''::bytea), string_agg(signature, ''::bytea)
    FROM telemetry_signed_batch WHERE {_BATCHES_RANGE}
) TO STDOUT (FORMAT binary)"""
# As for readings: the values of one batch, then one statement when every batch has them.
_BATCHES_FIRST_SQL = f"""
    SELECT {", ".join(_BATCHES_TEXT)}, octet_length(signature) FROM telemetry_signed_batch
    WHERE {_BATCHES_WHERE} LIMIT 1
"""
_BATCHES_ALIKE = " AND ".join(
    [f"{name} = %({name}_1)s::text" for name in _BATCHES_TEXT]
    + ["octet_length(signature) = %(signature_bytes_1)s::integer"]
)
_BATCHES_ONE_KIND_COPY = f"""COPY (
    SELECT string_agg({{record}}, ''::bytea), string_agg(signature, ''::bytea), count(*),
           count(*) FILTER (WHERE {_BATCHES_ALIKE}), coalesce(sum(octet_length(body)), 0)::bigint, min(id), max(id)
    FROM telemetry_signed_batch WHERE {_BATCHES_WHERE}
) TO STDOUT (FORMAT binary)"""
# The bodies in a statement of their own, each row's id beside them: PostgreSQL spent 1.2 to 1.6 s on
# a ward-day of 500,000 batches with the three aggregates in one statement, 0.9 s in these two.
_BODIES_COPY = f"""COPY (
    SELECT string_agg(int8send(id), ''::bytea), string_agg(body, ''::bytea)
    FROM telemetry_signed_batch WHERE {_BATCHES_RANGE}
) TO STDOUT (FORMAT binary)"""
_BATCH_TIMES = ["received_at", "min_sample_time", "max_sample_time"]
_BATCH_NUMBERS = ["id", "signed_at", "ingest_txid", "readings", "seq_min", "seq_max"]


@dataclass(frozen=True)
class BatchRange:
    """The kept batches of one id range of a device-day: packed records and signatures end to end
    in the order their statement's aggregates took them; the bodies end to end in the order of
    theirs, which `body_ids` gives."""

    records: bytes
    signatures: bytes
    body_ids: bytes
    bodies: bytes


@dataclass(frozen=True)
class DeviceBatches:
    ranges: list[BatchRange]
    values: dict[str, list[str]]
    rows: int
    omitted: frozenset[str]  # fields not packed: a text column with one value; signature_bytes
    signature_bytes: int  # when every signature has this length (Ed25519's 64), else 0


def batches_fetch(raw: Any, device_pk: int, lo: dt.datetime, hi: dt.datetime) -> DeviceBatches | None:
    """One device's kept batches that overlap the day: in one id range, or in several of at most
    BATCH_BYTES_PER_FETCH bytes of bodies when there are more."""
    where = {"device": device_pk, "lo": lo, "hi": hi}
    raw.execute(_BATCHES_FIRST_SQL, where)
    if (first := raw.fetchone()) is None:
        return None
    return _batches_of_one_kind(raw, where, first) or _batches_of_kinds(raw, where)


def _batches_of_one_kind(raw: Any, where: dict[str, Any], first: tuple[Any, ...]) -> DeviceBatches | None:
    """The device-day's batches when every one has the key, codec, door and signature length of
    `first` and their bodies fit one fetch, else None: the records without codes."""
    *text, signature_bytes = first
    values = {name: [value] for name, value in zip(_BATCHES_TEXT, text, strict=True)}
    omitted = frozenset({*_BATCHES_TEXT, "signature_bytes"})
    copy, _ = _layout(_BATCHES_ONE_KIND_COPY, _BATCHES_FIELDS, omitted)
    params = {**where, **{f"{name}_1": value for name, value in zip(_BATCHES_TEXT, text, strict=True)}}
    params["signature_bytes_1"] = signature_bytes
    [(records, signatures, rows, alike, body_bytes, low, high)] = _binary_rows(_copied(raw, copy, params), 7)
    if _int8(rows) != _int8(alike) or _int8(body_bytes) > BATCH_BYTES_PER_FETCH:
        return None
    ranged = {**where, "first": _int8(low), "last": _int8(high)}
    [(body_ids, bodies)] = _binary_rows(_copied(raw, _BODIES_COPY, ranged), 2)
    part = BatchRange(records, signatures, body_ids, bodies)
    return DeviceBatches([part], values, _int8(rows), omitted, signature_bytes)


def _batches_of_kinds(raw: Any, where: dict[str, Any]) -> DeviceBatches:
    """The device-day's batches whatever their text values and sizes: listed first, codes in the
    records, in id ranges of at most BATCH_BYTES_PER_FETCH bytes of bodies."""
    raw.execute(_BATCHES_KINDS_SQL, where)
    kinds = raw.fetchall()
    values = {name: sorted({k[i] for k in kinds}) for i, name in enumerate(_BATCHES_TEXT)}
    rows = sum(int(k[3]) for k in kinds)
    ranges = [(min(int(k[5]) for k in kinds), max(int(k[6]) for k in kinds))]
    lengths = {int(k[7]) for k in kinds} | {int(k[8]) for k in kinds}
    signature_bytes = lengths.pop() if len(lengths) == 1 else 0
    omitted = frozenset(name for name in _BATCHES_TEXT if len(values[name]) == 1) | (
        {"signature_bytes"} if signature_bytes else set()
    )
    copy, _ = _layout(_BATCHES_COPY, _BATCHES_FIELDS, omitted)
    if sum(int(k[4]) for k in kinds) > BATCH_BYTES_PER_FETCH:
        raw.execute(_BATCH_SIZES_SQL, where)
        ranges = _id_ranges(raw.fetchall())
    fetched = []
    for first, last in ranges:
        params = {**where, **values, "first": first, "last": last}
        [(records, signatures)] = _binary_rows(_copied(raw, copy, params), 2)
        [(body_ids, bodies)] = _binary_rows(_copied(raw, _BODIES_COPY, params), 2)
        fetched.append(BatchRange(records, signatures, body_ids, bodies))
    return DeviceBatches(fetched, values, rows, omitted, signature_bytes)


def _id_ranges(sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Consecutive id ranges of at most BATCH_BYTES_PER_FETCH bytes of bodies (a larger body
    alone in its range), from (id, body bytes) in id order."""
    ranges: list[tuple[int, int]] = []
    first, last, total = sizes[0][0], sizes[0][0], 0
    for pk, size in sizes:
        if total and total + size > BATCH_BYTES_PER_FETCH:
            ranges.append((first, last))
            first, total = pk, 0
        last, total = pk, total + size
    ranges.append((first, last))
    return ranges


def batches_columns(fetched: DeviceBatches) -> list[dict[str, pa.Array]]:
    """Per id range, the batches' columns of BATCHES_SCHEMA (all but the device's), in id order,
    every body the exact bytes signed."""
    _, dtype = _layout(_BATCHES_COPY, _BATCHES_FIELDS, fetched.omitted)
    out = []
    for part in fetched.ranges:
        if not part.records:
            continue
        records = _records(part.records, dtype, None)
        ids = records["id"]
        # Cut in the order the aggregates took them, the bodies brought into the records' order
        # (usually they are in it), then everything put in id order (usually it is already).
        signatures = _joined(part.signatures, _field(records, "signature_bytes", fetched.signature_bytes))
        bodies = _bodies_aligned(ids, np.frombuffer(part.body_ids, ">i8"), part.bodies, records["body_bytes"])
        if not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            records, signatures, bodies = records[order], signatures.take(order), bodies.take(order)
        columns = {name: _native(records[name]) for name in _BATCH_NUMBERS}
        columns.update({name: _times(records[name]) for name in _BATCH_TIMES})
        for name in ("key_id", "door"):
            columns[name] = _text(records, name, fetched.values[name], pa.string())
        columns["signature"] = signatures
        codecs = _text(records, "body_codec", fetched.values["body_codec"], pa.string())
        columns["body"] = _bodies(bodies, codecs, _native(records["body_size"]))
        out.append(columns)
    if sum(len(c["id"]) for c in out) != fetched.rows:
        raise ArchiveError("the kept batches came back with other rows than were counted")
    return out


def _bodies_aligned(
    ids: np.ndarray[Any, Any], body_ids: np.ndarray[Any, Any], bodies: bytes, lengths: np.ndarray[Any, Any]
) -> pa.Array:
    """The bodies (end to end, of the batches `body_ids` in that order) as one binary array in
    the order of `ids`, whose bodies have these `lengths`."""
    if np.array_equal(ids, body_ids):
        return _joined(bodies, lengths)
    by_id, bodies_by_id = np.argsort(ids, kind="stable"), np.argsort(body_ids, kind="stable")
    if len(ids) != len(body_ids) or not np.array_equal(ids[by_id], body_ids[bodies_by_id]):
        raise ArchiveError("the kept batches' bodies came back for other batches than their records")
    # The k-th smallest id: record by_id[k], body bodies_by_id[k].
    body_lengths = np.empty_like(lengths)
    body_lengths[bodies_by_id] = lengths[by_id]
    body_of_record = np.empty(len(ids), np.int64)
    body_of_record[by_id] = bodies_by_id
    return _joined(bodies, body_lengths).take(pa.array(body_of_record))


def _joined(data: bytes, lengths: np.ndarray[Any, Any]) -> pa.Array:
    """Values that lie end to end in `data`, of these lengths, as one binary array (no copy)."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(data) or offsets[-1] >= 2**31:
        raise ArchiveError("the kept batches' bytes do not add up to their lengths")
    return pa.Array.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    )


def _bodies(kept: pa.Array, codecs: pa.Array, sizes: pa.Array) -> pa.Array:
    """The signed bodies: those kept as they came as they are, the compressed ones decompressed."""
    compressed = pc.indices_nonzero(pc.not_equal(codecs, BODY_IDENTITY)).to_pylist()
    if not compressed:
        return kept
    values = kept.to_pylist()
    for i in compressed:
        values[i] = body_decompress(values[i], size=sizes[i].as_py(), codec=codecs[i].as_py())
    return pa.array(values, pa.binary())


# --- shared -------------------------------------------------------------------------------


def _sorted(values: set[Any]) -> list[Any]:
    """A column's values in code-point order, NULL (None) first."""
    return sorted(values, key=lambda v: (v is not None, v or ""))


def _records(data: bytes, dtype: np.dtype[Any], rows: int | None) -> np.ndarray[Any, Any]:
    if len(data) % dtype.itemsize or (rows is not None and len(data) // dtype.itemsize != rows):
        raise ArchiveError("the hot store's rows came back with other rows than were counted")
    return np.frombuffer(data, dtype=dtype)


def _plain(column: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A big-endian column in the machine's byte order."""
    return column.astype(column.dtype.newbyteorder("="))


def _native(column: np.ndarray[Any, Any]) -> pa.Array:
    return pa.array(_plain(column))


def _times(column: np.ndarray[Any, Any]) -> pa.Array:
    return pa.array(_plain(column) + _PG_EPOCH_US).view(_TS)


def _text(records: np.ndarray[Any, Any], code: str, values: list[Any], kind: pa.DataType) -> pa.Array:
    """A column packed as `code`, 1-based positions in `values`, back to the values; the one value
    for every record when the code was left out."""
    if code not in (records.dtype.names or ()):
        return pa.repeat(pa.scalar(values[0], kind), len(records))
    return pa.array(values, kind).take(pa.array(_plain(records[code]) - 1))


def _int8(field: bytes) -> int:
    """A bigint field of a binary COPY row."""
    return int.from_bytes(field, "big", signed=True)


def _copied(raw: Any, sql: str, params: dict[str, Any]) -> bytes:
    with raw.copy(sql, params) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def _binary_rows(data: bytes, width: int) -> list[tuple[bytes, ...]]:
    """The rows of a binary COPY of `width` text or bytea fields (PostgreSQL's documented format:
    a header, then per row a field count and length-prefixed fields, then -1), a NULL as b''."""
    if not data.startswith(_PGCOPY_SIGNATURE):
        raise ArchiveError("the archive's rows came in an unknown COPY format")
    at = len(_PGCOPY_SIGNATURE) + 4
    (extension,) = struct.unpack_from("!i", data, at)
    at += 4 + extension
    rows: list[tuple[bytes, ...]] = []
    while True:
        (fields,) = struct.unpack_from("!h", data, at)
        at += 2
        if fields == -1:
            return rows
        if fields != width:
            raise ArchiveError(f"the archive's rows came with {fields} fields, not {width}")
        row: list[bytes] = []
        for _ in range(width):
            (length,) = struct.unpack_from("!i", data, at)
            at += 4
            row.append(b"" if length < 0 else data[at : at + length])
            at += max(length, 0)
        rows.append(tuple(row))
