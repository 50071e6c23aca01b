"""Is a ward-day safely in the archive? The check a retention job must pass before it drops the
day from the hot store.

`archive_day_check` reads the manifest back and then every file it names, from the store
itself (not from what the writer remembers): each file's SHA-256 and size against the
manifest, each Parquet file's row count (from its footer, and the rows of every row group
read) against the manifest, the readings' per-device counts against the manifest's devices,
and the manifest's devices against the hot store — equal, or none there any more (the day was
dropped after it was archived). Any difference is named in `problems`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry.archive.layout import MANIFEST_SCHEMA, manifest_key, ward_prefix
from telemetry.archive.objects import ObjectStore
from telemetry.archive.writer import archive_store, hot_difference


@dataclass
class DayCheck:
    day: dt.date
    ward: str
    problems: list[str] = field(default_factory=list)
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def archive_day_check(*, day: dt.date, ward_code: str, store: ObjectStore | None = None) -> DayCheck:
    store = store or archive_store()
    check = DayCheck(day, ward_code)
    raw = store.get(manifest_key(day, ward_code))
    if raw is None:
        check.problems.append("no manifest")
        return check
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError:
        check.problems.append("the manifest is not JSON")
        return check
    if manifest.get("schema") != MANIFEST_SCHEMA or manifest.get("day") != day.isoformat():
        check.problems.append("the manifest is not this day's")
        return check
    check.rows = int(manifest["readings"]["rows"])
    for name, expected in manifest["files"].items():
        _file_check(store, ward_prefix(day, ward_code) + name, expected, manifest, check)
    devices = {int(d["device_pk"]): int(d["rows"]) for d in manifest["devices"]}
    if sum(devices.values()) != check.rows:
        check.problems.append("the manifest's devices do not add up to its rows")
    difference = hot_difference(manifest=manifest, day=day, ward_code=ward_code, store=store)
    if difference:
        check.problems.append(difference)
    return check


def _file_check(
    store: ObjectStore, key: str, expected: dict[str, Any], manifest: dict[str, Any], check: DayCheck
) -> None:
    data = store.get(key)
    if data is None:
        check.problems.append(f"{key}: missing")
        return
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        check.problems.append(f"{key}: SHA-256 or size differs from the manifest")
        return
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        table = parquet.read()
    except (OSError, ValueError) as exc:
        check.problems.append(f"{key}: not readable Parquet ({exc})")
        return
    if parquet.metadata.num_rows != expected["rows"] or table.num_rows != expected["rows"]:
        check.problems.append(f"{key}: {table.num_rows} rows, the manifest says {expected['rows']}")
    if expected["kind"] == "readings":
        counts = pc.value_counts(table.column("device_id")).to_pylist()
        found = {int(c["values"]): int(c["counts"]) for c in counts}
        listed = {int(d["device_pk"]): int(d["rows"]) for d in manifest["devices"]}
        if found != listed:
            check.problems.append(f"{key}: rows per device differ from the manifest")


def archive_day_verified(*, day: dt.date, ward_code: str) -> bool:
    """True when the ward-day's archive was read back whole and matches its manifest and the hot
    store (archive_day_check); a retention job drops nothing of the day otherwise."""
    return archive_day_check(day=day, ward_code=ward_code).ok
