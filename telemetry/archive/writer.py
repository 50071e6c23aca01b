"""`manage.py archive`: one day of one ward from the hot store into the archive.

Which ward a reading belongs to: the ward of its device. The first archive of a day decides it
for each device (its ward then), and the day's manifests remember it: a device moved to another
ward later stays with the ward whose manifest lists it, so a repeated run computes the same
files and a ward-day is never archived twice under two wards.

A ward-day is read in one REPEATABLE READ, read-only transaction (one snapshot for readings,
batches and counts), device by device, as packed binary records (packed.py: exact doubles and
microseconds, text as codes into the device-day's values, sorted by numpy), and written as one
Parquet row group per device (a patient-day: the device of one patient on one day),
zstd-compressed. The signed batches whose readings overlap the day follow in a Parquet file of
their own, with the exact bytes the device signed. Both are written to the store before the
manifest (layout.py), so a crash leaves no manifest for a partial day, and a rerun finds the
files already there.

A ward-day whose manifest exists is not written again: the run reports it `archived`, or
`stale` when the hot store now holds other rows for it than the manifest says (readings that
arrived late, after the day was archived: the scheduled job therefore waits
PERFUSE_ARCHIVE_AFTER_DAYS after a day before archiving it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import logging
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.conf import settings
from django.db import connection, transaction

from audit.trail import SYSTEM, Actor, audit_record
from config.workers import worker_pool
from telemetry.archive.layout import (
    BATCHES_SCHEMA,
    BATCHES_SCHEMA_VERSION,
    MANIFEST_SCHEMA,
    READINGS_SCHEMA,
    READINGS_SCHEMA_VERSION,
    ArchiveError,
    day_bounds,
    day_prefix,
    manifest_bytes,
    manifest_key,
    ward_prefix,
)
from telemetry.archive.objects import ObjectStore, WriteOnceConflict, sha256_file, store_from_url
from telemetry.archive.packed import (
    batches_columns,
    batches_fetch,
    readings_columns,
    readings_fetch,
)

log = logging.getLogger(__name__)

Status = Literal["written", "archived", "stale", "empty"]
T = TypeVar("T")


_DEVICES_SQL = """
    SELECT d.id, d.device_id, w.code FROM telemetry_device d JOIN telemetry_ward w ON w.id = d.ward_id
    WHERE EXISTS (SELECT 1 FROM telemetry_reading r WHERE r.device_id = d.id AND r.sample_time >= %s
                  AND r.sample_time < %s)
    ORDER BY d.id
"""
_COUNTS_SQL = (
    "SELECT device_id, count(*) FROM telemetry_reading WHERE device_id = ANY(%s::bigint[]) "
    "AND sample_time >= %s AND sample_time < %s GROUP BY device_id"
)


# Dictionary encoding only where values repeat (Parquet's writer otherwise builds a dictionary
# for every column, times and values included, before giving it up); signatures are random
# bytes, which zstd cannot shrink.
_READINGS_DICTIONARY = ["device", "pseudonym", "metric", "raw_unit", "calibration_id", "firmware"]
_BATCHES_DICTIONARY = ["device", "key_id", "door"]
_BATCHES_COMPRESSION = {f.name: "none" if f.name == "signature" else "zstd" for f in BATCHES_SCHEMA}


def _delta_encoded(schema: pa.Schema) -> dict[str, str]:
    """Integers and times in delta encoding (each value's difference to the one before,
    bit-packed): a device-day's seqs, times, ids and transaction ids climb by small steps, so their
    pages are a fraction of the plain 8 bytes a value and zstd has that much less to compress —
    which was most of the Parquet writer's time for these columns."""
    return {
        f.name: "DELTA_BINARY_PACKED" for f in schema if pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)
    }


# Min/max statistics of a batch's signature and body (random bytes, JSON) help no reader.
_BATCHES_STATISTICS = [f.name for f in BATCHES_SCHEMA if f.name not in ("signature", "body")]


@dataclass(frozen=True)
class Device:
    pk: int
    device_id: str


@dataclass
class DayResult:
    day: dt.date
    ward: str
    status: Status
    rows: int = 0
    batches: int = 0
    files_written: list[str] = field(default_factory=list)
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "ward": self.ward,
            "status": self.status,
            "rows": self.rows,
            "batches": self.batches,
            "files_written": self.files_written,
            "detail": self.detail,
        }


def archive_store() -> ObjectStore:
    return store_from_url(settings.PERFUSE_ARCHIVE_URL)


def manifest_read(store: ObjectStore, day: dt.date, ward_code: str) -> dict[str, Any] | None:
    data = store.get(manifest_key(day, ward_code))
    return None if data is None else dict(json.loads(data))


def day_manifests(store: ObjectStore, day: dt.date) -> dict[str, dict[str, Any]]:
    """The manifests written for `day`, by ward."""
    found: dict[str, dict[str, Any]] = {}
    for key in store.keys(day_prefix(day)):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "manifest.json" and parts[1].startswith("ward="):
            ward = parts[1].removeprefix("ward=")
            manifest = manifest_read(store, day, ward)
            if manifest is not None:
                found[ward] = manifest
    return found


def day_wards(*, day: dt.date, store: ObjectStore | None = None) -> dict[str, list[Device]]:
    """The devices with readings on `day` in the hot store, by the ward they are archived under:
    the ward whose manifest of the day lists them, else their ward now."""
    store = store or archive_store()
    claimed = {
        int(device["device_pk"]): (ward, str(device["device"]))
        for ward, manifest in day_manifests(store, day).items()
        for device in manifest["devices"]
    }
    lo, hi = day_bounds(day)
    wards: dict[str, list[Device]] = {}
    with connection.cursor() as cursor:
        cursor.execute(_DEVICES_SQL, [lo, hi])
        for pk, device_id, ward in cursor.fetchall():
            owner = claimed.get(pk, (ward, device_id))[0]
            wards.setdefault(owner, []).append(Device(pk, device_id))
    return wards


def hot_counts(devices: list[int], day: dt.date) -> dict[int, int]:
    """Readings per device on `day` in the hot store."""
    lo, hi = day_bounds(day)
    with connection.cursor() as cursor:
        cursor.execute(_COUNTS_SQL, [devices, lo, hi])
        return {pk: n for pk, n in cursor.fetchall()}


def archive_day(*, day: dt.date, ward_code: str, store: ObjectStore | None = None, actor: Actor = SYSTEM) -> DayResult:
    """Archive one ward-day (see the module docstring); what the run did."""
    if day >= dt.datetime.now(dt.UTC).date():
        raise ArchiveError(f"{day} is not over yet: only past days are archived")
    store = store or archive_store()
    existing = manifest_read(store, day, ward_code)
    if existing is not None:
        return _existing(existing, day, ward_code, store)
    devices = day_wards(day=day, store=store).get(ward_code, [])
    if not devices:
        return DayResult(day, ward_code, "empty", detail="no readings of this ward on this day")
    with tempfile.TemporaryDirectory(prefix="perfuse-archive-") as tmp:
        return _write(store, day, ward_code, devices, Path(tmp), actor)


def archive_days(
    *,
    days: list[dt.date],
    ward_code: str | None = None,
    store: ObjectStore | None = None,
    actor: Actor = SYSTEM,
    jobs: int = 1,
) -> list[DayResult]:
    """Archive every ward (or only `ward_code`) of each day, `jobs` ward-days at once.

    Ward-days are independent (one snapshot, their own files and manifest each), so with
    jobs > 1 they are archived by that many worker processes, each with its own database
    connection: PostgreSQL formats one ward-day's rows while pyarrow parses and compresses
    another's, on every core. Results come back in the order of the ward-days; when a ward-day
    fails, the others still finish (their writes are write-once and a rerun skips them) and the
    first failure is raised after them."""
    store = store or archive_store()
    work = [
        (day, ward) for day in days for ward in ([ward_code] if ward_code else sorted(day_wards(day=day, store=store)))
    ]
    if jobs <= 1 or len(work) <= 1:
        return [archive_day(day=day, ward_code=ward, store=store, actor=actor) for day, ward in work]
    return _archive_parallel(work, store_url=store.url, actor=actor, jobs=min(jobs, len(work)))


def archive_due(*, now: dt.datetime, store: ObjectStore | None = None, jobs: int | None = None) -> list[DayResult]:
    """The scheduled job: every ward-day from PERFUSE_ARCHIVE_LOOKBACK_DAYS ago up to the last
    day that ended PERFUSE_ARCHIVE_AFTER_DAYS ago, archived unless it is already
    (PERFUSE_ARCHIVE_JOBS ward-days at once unless `jobs` says otherwise)."""
    last = now.date() - dt.timedelta(days=settings.PERFUSE_ARCHIVE_AFTER_DAYS)
    first = now.date() - dt.timedelta(days=settings.PERFUSE_ARCHIVE_LOOKBACK_DAYS)
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    jobs = settings.PERFUSE_ARCHIVE_JOBS if jobs is None else jobs
    return [r for r in archive_days(days=days, store=store, jobs=jobs) if r.status != "archived"]


def _archive_parallel(work: list[tuple[dt.date, str]], *, store_url: str, actor: Actor, jobs: int) -> list[DayResult]:
    # Forked workers (config.workers), each with its own connection and its own store client.
    with worker_pool(jobs) as pool:
        futures = [pool.submit(_worker_archive, day, ward, store_url, actor) for day, ward in work]
        wait(futures)
    for future in futures:
        if (exc := future.exception()) is not None:
            raise exc
    return [future.result() for future in futures]


def _worker_archive(day: dt.date, ward: str, store_url: str, actor: Actor) -> DayResult:
    try:
        return archive_day(day=day, ward_code=ward, store=store_from_url(store_url), actor=actor)
    finally:
        connection.close()


def hot_difference(*, manifest: dict[str, Any], day: dt.date, ward_code: str, store: ObjectStore) -> str:
    """'' when the hot store holds exactly the rows the ward-day's manifest lists, or none of them
    (the day was dropped after it was archived); else what differs — rows added or removed for
    a listed device, or readings of a device the manifest does not list (all of whose readings
    of the day arrived after it was archived)."""
    listed = {int(d["device_pk"]): int(d["rows"]) for d in manifest["devices"]}
    unlisted = [d.device_id for d in day_wards(day=day, store=store).get(ward_code, []) if d.pk not in listed]
    if unlisted:
        return f"the hot store holds readings of devices the manifest does not list: {', '.join(unlisted)}"
    hot = hot_counts(list(listed), day)
    if hot and hot != listed:
        return f"the hot store holds other rows: {sum(hot.values())} against {sum(listed.values())} archived"
    return ""


def _existing(manifest: dict[str, Any], day: dt.date, ward_code: str, store: ObjectStore) -> DayResult:
    rows = int(manifest["readings"]["rows"])
    batches = int(manifest["batches"]["rows"])
    difference = hot_difference(manifest=manifest, day=day, ward_code=ward_code, store=store)
    if not difference:
        return DayResult(day, ward_code, "archived", rows, batches, detail="manifest exists; nothing written")
    return DayResult(day, ward_code, "stale", rows, batches, detail=f"{difference} (late data)")


def _write(store: ObjectStore, day: dt.date, ward: str, devices: list[Device], tmp: Path, actor: Actor) -> DayResult:
    readings_path, batches_path = tmp / "readings.parquet", tmp / "batches.parquet"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SET LOCAL TimeZone = 'UTC'")
        # Hashing in memory, and no parallel workers: ward-days run in parallel themselves
        # (--jobs), and packed.py relies on one aggregation pass feeding every aggregate alike.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        device_stats = _readings_write(cursor, readings_path, day, devices)
        batch_count = _batches_write(cursor, batches_path, day, devices)
    prefix = ward_prefix(day, ward)
    files: dict[str, dict[str, Any]] = {}
    written: list[str] = []
    rows = sum(int(d["rows"]) for d in device_stats)
    for kind, path, count, version in (
        ("readings", readings_path, rows, READINGS_SCHEMA_VERSION),
        ("batches", batches_path, batch_count, BATCHES_SCHEMA_VERSION),
    ):
        digest = sha256_file(path)
        name = f"{kind}-{digest[:16]}.parquet"
        files[name] = {
            "kind": kind,
            "sha256": digest,
            "bytes": path.stat().st_size,
            "rows": count,
            "row_groups": pq.ParquetFile(path).num_row_groups,
            "schema_version": version,
        }
        if store.put_once(prefix + name, path):
            written.append(prefix + name)
    manifest = _manifest(day, ward, device_stats, files, batch_count)
    manifest_path = tmp / "manifest.json"
    manifest_path.write_bytes(manifest_bytes(manifest))
    try:
        store.put_once(manifest_key(day, ward), manifest_path)
    except WriteOnceConflict:
        # Another run archived this ward-day in between: fine when it wrote these very files.
        other = manifest_read(store, day, ward)
        if other is None or other.get("files") != files:
            raise
        return DayResult(day, ward, "archived", rows, batch_count, written, "archived by another run meanwhile")
    written.append(manifest_key(day, ward))
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="archive.written",
            detail={
                "day": day.isoformat(),
                "ward": ward,
                "rows": rows,
                "batches": batch_count,
                "url": store.url,
                "manifest_sha256": digest,
            },
        )
    log.info("archived %s %s: %d readings, %d batches", day, ward, rows, batch_count)
    return DayResult(day, ward, "written", rows, batch_count, written)


def _readings_write(cursor: Any, path: Path, day: dt.date, devices: list[Device]) -> list[dict[str, Any]]:
    """One row group per device."""
    stats: list[dict[str, Any]] = []
    sorting = [
        pq.SortingColumn(READINGS_SCHEMA.get_field_index(name))
        for name in ("device_id", "metric", "sample_time", "seq")
    ]
    with pq.ParquetWriter(
        path,
        READINGS_SCHEMA,
        compression="zstd",
        use_dictionary=_READINGS_DICTIONARY,
        column_encoding=_delta_encoded(READINGS_SCHEMA),
        sorting_columns=sorting,
        write_statistics=True,
    ) as writer:
        for device, fetched in _copy_per_device(cursor, readings_fetch, day, devices):
            table = _device_table(device, readings_columns(fetched))
            if table.num_rows:
                writer.write_table(table, row_group_size=table.num_rows)
                stats.append(_device_stats(device, table))
    return stats


def _copy_per_device(
    cursor: Any, fetch_one: Callable[[Any, int, dt.datetime, dt.datetime], T], day: dt.date, devices: list[Device]
) -> Iterator[tuple[Device, T]]:
    """`fetch_one` (one device's rows of the day by its primary key, by COPY … TO STDOUT) for each
    device in turn.
    PostgreSQL formats the next device's rows (in a thread, on the transaction's connection, which
    nothing else uses meanwhile) while the caller parses and compresses this one's, so the two
    work at once."""
    lo, hi = day_bounds(day)
    fetched: queue.Queue[tuple[Device, T] | BaseException | None] = queue.Queue(maxsize=2)
    raw = cursor.cursor  # the psycopg cursor under Django's

    def fetch() -> None:
        try:
            for device in devices:
                fetched.put((device, fetch_one(raw, device.pk, lo, hi)))
            fetched.put(None)
        except BaseException as exc:  # handed to the caller, which raises it
            fetched.put(exc)

    fetcher = threading.Thread(target=fetch, name="archive-fetch", daemon=True)
    fetcher.start()
    try:
        while (item := fetched.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        while fetcher.is_alive():  # never leave the thread on the connection
            with contextlib.suppress(queue.Empty):
                fetched.get(timeout=0.1)
        fetcher.join()


def _device_table(device: Device, columns: dict[str, pa.Array], schema: pa.Schema = READINGS_SCHEMA) -> pa.Table:
    """A table of `schema` from one device's columns and the device's own two."""
    rows = len(next(iter(columns.values())))
    columns["device_id"] = pa.repeat(pa.scalar(device.pk, pa.int64()), rows)
    columns["device"] = pa.repeat(pa.scalar(device.device_id, pa.string()), rows)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _device_stats(device: Device, table: pa.Table) -> dict[str, Any]:
    seq = pc.min_max(table.column("seq"))
    times = pc.min_max(table.column("sample_time"))
    pseudonyms = sorted(p for p in pc.unique(table.column("pseudonym")).to_pylist() if p is not None)
    return {
        "device": device.device_id,
        "device_pk": device.pk,
        "rows": table.num_rows,
        "seq_min": seq["min"].as_py(),
        "seq_max": seq["max"].as_py(),
        "min_sample_time": _iso(times["min"].as_py()),
        "max_sample_time": _iso(times["max"].as_py()),
        "pseudonyms": pseudonyms,
    }


def _batches_write(cursor: Any, path: Path, day: dt.date, devices: list[Device]) -> int:
    """One row group per device (per id range of BATCH_BYTES_PER_FETCH bytes of bodies beyond
    that): its kept batches that overlap the day, with the exact bytes the device signed. Column
    at a time — a device sending every second has 86,400 batches a day."""
    count = 0
    with pq.ParquetWriter(
        path,
        BATCHES_SCHEMA,
        compression=_BATCHES_COMPRESSION,
        use_dictionary=_BATCHES_DICTIONARY,
        column_encoding=_delta_encoded(BATCHES_SCHEMA),
        write_statistics=_BATCHES_STATISTICS,
    ) as writer:
        for device, kept in _copy_per_device(cursor, batches_fetch, day, devices):
            if kept is None:
                continue
            for columns in batches_columns(kept):
                table = _device_table(device, columns, BATCHES_SCHEMA)
                writer.write_table(table, row_group_size=table.num_rows)
                count += table.num_rows
    return count


def _manifest(
    day: dt.date, ward: str, devices: list[dict[str, Any]], files: dict[str, dict[str, Any]], batches: int
) -> dict[str, Any]:
    readings_file = next(name for name, f in files.items() if f["kind"] == "readings")
    batches_file = next(name for name, f in files.items() if f["kind"] == "batches")
    return {
        "schema": MANIFEST_SCHEMA,
        "day": day.isoformat(),
        "ward": ward,
        "archived_at": _iso(dt.datetime.now(dt.UTC)),
        "pipeline": pipeline_version(),
        "readings": {
            "file": readings_file,
            "rows": sum(int(d["rows"]) for d in devices),
            "min_sample_time": min(d["min_sample_time"] for d in devices),
            "max_sample_time": max(d["max_sample_time"] for d in devices),
            "sort": ["device_id", "metric", "sample_time", "seq"],
            "row_group": "one per device",
        },
        "batches": {"file": batches_file, "rows": batches},
        "devices": devices,
        "files": files,
    }


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@functools.cache
def pipeline_version() -> dict[str, str]:
    """The code that wrote an archive: package version and git commit (PERFUSE_PIPELINE_COMMIT
    when the deployment has no git checkout)."""
    try:
        version = importlib.metadata.version("perfuse")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = settings.PERFUSE_PIPELINE_COMMIT
    git = shutil.which("git")
    if not commit and git:
        try:
            answer = subprocess.run(  # noqa: S603 (fixed arguments)
                [git, "rev-parse", "HEAD"],
                cwd=settings.BASE_DIR,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            commit = answer.stdout.strip() if answer.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return {"package": "perfuse", "version": version, "commit": commit or "unknown"}
