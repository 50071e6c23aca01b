"""Archive benchmark (not a test): readings/s from the hot store to Parquet, on a directory and on
SeaweedFS, beside the ceiling of pyarrow writing the same rows from memory, and the time to
restore one ward-day.

    .venv/bin/python bench/archive.py [--devices 40] [--wards 2] [--readings 25000] [--per-batch 60] [--jobs 2[,4…]]

Starts its own throwaway PostgreSQL (scripts/lib.sh, fsync on) and SeaweedFS (loopback) in a
temporary directory, removed at the end; never a running demo's database. Migrates, then writes
yesterday's readings directly in SQL (one per device per second, tissue O2, with quality,
calibration and firmware — as a 1 Hz fleet produces them) and, per `--per-batch` readings, the
signed batch they came in (a real section-1 body, kept as ingest keeps it, zstd from 1 KB; signed
with a random key: the benchmark measures the archive, not signatures).

Figures: `archive_day` per ward-day into a directory, then into SeaweedFS (each end to end:
the export in one snapshot, Parquet, the batch file, SHA-256, the store's write-once checks, the
manifest), one ward-day after the other; the same with `--jobs` ward-days at once (each value
given, in turn) in worker processes (`archive --jobs`, forked: their start included); the
export of the readings alone (COPY → pyarrow → Parquet into a local file); the pyarrow ceiling
(the archived readings, already in memory, written again as Parquet with the same settings); and
`archive_restore` of one ward-day after its rows were deleted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lib(command: str) -> None:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; {command}"], check=True, cwd=ROOT)


def setup_django(archive_url: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    os.environ["PERFUSE_ARCHIVE_URL"] = archive_url
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def populate(*, devices: int, wards: int, readings: int, per_batch: int, day: dt.date) -> list[str]:
    """Devices in `wards` wards, each with a patient and `readings` readings of `day` (one a
    second from midnight) and their batches. Returns the ward codes."""
    import orjson
    from django.db import connection

    from telemetry.ingest.keep import body_store
    from telemetry.models import Device, DeviceKey, Patient, Ward

    codes = [f"bench-{w}" for w in range(wards)]
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    for w, code in enumerate(codes):
        ward = Ward.objects.create(code=code, name=code)
        for d in range(devices // wards):
            device = Device.objects.create(device_id=f"bench-{w}-{d:04d}", ward=ward)
            DeviceKey.objects.create(key_id=f"k_bench_{w}_{d}", device=device, public_key=os.urandom(32))
            patient = Patient.objects.create(pseudonym=f"p-bench-{w}-{d}", ward=ward, admitted_at=start)
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, "
                    "raw_unit, signal_quality, calibration_id, firmware, ingest_time) "
                    "SELECT %s, %s, 'tissue_o2', s, %s + s * interval '1 second', 40 + (s %% 300) / 10.0, "
                    "40 + (s %% 300) / 10.0, '%%', 0.9 + (s %% 10) / 100.0, 'cal-1', 'fw-2.4.1', "
                    "%s + s * interval '1 second' + interval '2 seconds' FROM generate_series(0, %s - 1) s",
                    [device.id, patient.id, start, start, readings],
                )
                columns: list[list[Any]] = [[] for _ in range(14)]
                for b in range(0, readings, per_batch):
                    items = [
                        {
                            "seq": s,
                            "sample_time": (start + dt.timedelta(seconds=s)).isoformat().replace("+00:00", "Z"),
                            "metric": "tissue_o2",
                            "value": 40 + (s % 300) / 10.0,
                            "unit": "%",
                            "signal_quality": 0.9 + (s % 10) / 100.0,
                            "calibration_id": "cal-1",
                        }
                        for s in range(b, min(b + per_batch, readings))
                    ]
                    body = orjson.dumps(
                        {
                            "schema": "perfuse.readings/1",
                            "device_id": device.device_id,
                            "firmware": "fw-2.4.1",
                            "readings": items,
                        }
                    )
                    stored, codec = body_store(body)  # as ingest keeps it
                    first = start + dt.timedelta(seconds=b)
                    last = start + dt.timedelta(seconds=b + len(items) - 1)
                    for column, value in zip(
                        columns,
                        (
                            device.id,
                            f"k_bench_{w}_{d}",
                            int(last.timestamp()) + 1,
                            os.urandom(64),
                            stored,
                            codec,
                            len(body),
                            "http",
                            last + dt.timedelta(seconds=2),
                            len(items),
                            b,
                            b + len(items) - 1,
                            first,
                            last,
                        ),
                        strict=True,
                    ):
                        column.append(value)
                cursor.execute(
                    "INSERT INTO telemetry_signed_batch (device_id, key_id, signed_at, signature, body, body_codec, "
                    "body_size, door, received_at, readings, seq_min, seq_max, min_sample_time, max_sample_time) "
                    "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::bytea[], %s::bytea[], "
                    "%s::text[], %s::integer[], %s::text[], %s::timestamptz[], %s::integer[], %s::bigint[], "
                    "%s::bigint[], %s::timestamptz[], %s::timestamptz[])",
                    columns,
                )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE telemetry_reading")
        cursor.execute("ANALYZE telemetry_signed_batch")
    return codes


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--wards", type=int, default=2)
    parser.add_argument("--readings", type=int, default=25000, help="per device (1 Hz: 86,400 a day)")
    parser.add_argument("--per-batch", type=int, default=60)
    parser.add_argument(
        "--jobs",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[2],
        help="ward-days at once in the parallel run (archive --jobs); several, comma-separated, run in turn",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-archive-"))
    os.chmod(tmp, 0o755)  # noqa: S103 (the postgres service user must reach its data dir)
    pg_port = free_port()
    lib(f"start_postgres {tmp}/pg {pg_port}")
    os.environ["DATABASE_URL"] = f"postgres://perfuse@127.0.0.1:{pg_port}/perfuse"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # not used: nothing here ingests
    from tests.archive.seaweedfs import seaweedfs_start

    weed = seaweedfs_start(tmp / "seaweedfs")
    try:
        weed.client().create_bucket(Bucket="perfuse-bench")  # type: ignore[attr-defined]
        os.environ.update(
            AWS_ENDPOINT_URL=weed.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 (SeaweedFS without identities takes any)
            AWS_DEFAULT_REGION="us-east-1",
        )
        setup_django((tmp / "archive").as_uri())
        run(args, tmp)
    finally:
        weed.stop()
        lib(f"stop_postgres {tmp}/pg")
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    import pyarrow.parquet as pq
    from django.db import connection, transaction

    from telemetry.archive.layout import READINGS_SCHEMA, ward_prefix
    from telemetry.archive.objects import FileStore, S3Store
    from telemetry.archive.restore import archive_restore
    from telemetry.archive.writer import _readings_write, archive_day, archive_days, day_wards, manifest_read

    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    elapsed, codes = timed(
        populate, devices=args.devices, wards=args.wards, readings=args.readings, per_batch=args.per_batch, day=day
    )
    total = (args.devices // args.wards) * args.wards * args.readings
    print(f"populated {total:,} readings of {day} ({args.devices} devices, {args.wards} wards) in {elapsed:.1f} s")

    results: dict[str, float] = {}
    for label, store in (("directory", FileStore(tmp / "archive")), ("SeaweedFS", S3Store("perfuse-bench", "archive"))):
        seconds = 0.0
        size = 0
        for code in codes:
            t, result = timed(archive_day, day=day, ward_code=code, store=store)
            assert result.status == "written", result
            seconds += t
            manifest = manifest_read(store, day, code)
            assert manifest is not None
            size += sum(int(f["bytes"]) for f in manifest["files"].values())
        results[label] = total / seconds
        print(
            f"archive to {label}: {total / seconds:,.0f} readings/s ({seconds:.1f} s, {size / 1e6:.1f} MB written "
            f"= {size / total:.1f} bytes/reading with the signed batches)"
        )

    # Every ward-day of the day at once, `--jobs` worker processes (manage.py archive --jobs), into a
    # second directory and a second bucket prefix: end to end, the workers' start included.
    for jobs in args.jobs:
        for label, store in (
            ("directory", FileStore(tmp / f"archive-parallel-{jobs}")),
            ("SeaweedFS", S3Store("perfuse-bench", f"parallel-{jobs}")),
        ):
            seconds, done = timed(archive_days, days=[day], store=store, jobs=jobs)
            assert [r.status for r in done] == ["written"] * len(codes), done
            results[f"{label}, {jobs} jobs"] = total / seconds
            print(f"archive to {label}, {jobs} ward-days at once: {total / seconds:,.0f} readings/s ({seconds:.1f} s)")

    # The export alone (PostgreSQL → pyarrow → local Parquet), one ward-day.
    devices = day_wards(day=day, store=FileStore(tmp / "archive"))[codes[0]]
    ward_rows = len(devices) * args.readings
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        t, _ = timed(_readings_write, cursor, tmp / "export.parquet", day, devices)
    print(f"readings export alone (COPY → pyarrow → Parquet file): {ward_rows / t:,.0f} readings/s")

    # The ceiling: the same rows, already in memory, written by pyarrow with the same settings.
    manifest = manifest_read(FileStore(tmp / "archive"), day, codes[0])
    assert manifest is not None
    key = ward_prefix(day, codes[0]) + manifest["readings"]["file"]
    table = pq.read_table(tmp / "archive" / key)
    groups = [table.slice(i * args.readings, args.readings) for i in range(len(devices))]
    sink = io.BytesIO()
    start = time.perf_counter()
    with pq.ParquetWriter(sink, READINGS_SCHEMA, compression="zstd", write_statistics=True) as writer:
        for group in groups:
            writer.write_table(group, row_group_size=group.num_rows)
    ceiling = ward_rows / (time.perf_counter() - start)
    print(f"ceiling (pyarrow writing the same rows from memory): {ceiling:,.0f} readings/s")

    # Restore one ward-day after its rows left the hot store.
    lo = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM telemetry_reading WHERE device_id = ANY(%s) AND sample_time >= %s AND sample_time < %s",
            [[d.pk for d in devices], lo, lo + dt.timedelta(days=1)],
        )
        cursor.execute("DELETE FROM telemetry_signed_batch WHERE device_id = ANY(%s)", [[d.pk for d in devices]])
    t, restored = timed(archive_restore, day=day, ward_code=codes[0], store=FileStore(tmp / "archive"))
    assert restored.inserted == ward_rows, restored
    print(
        f"restore of one ward-day ({ward_rows:,} readings, {restored.batches:,} batches, rollups rebuilt): "
        f"{t:.1f} s = {ward_rows / t:,.0f} readings/s"
    )

    day_readings = 10_000 * 86_400
    for label, rate in results.items():
        print(
            f"10,000 devices x 1 Hz x 1 day = {day_readings:,} readings: {day_readings / rate / 3600:.2f} h "
            f"to archive to {label} at this rate"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes compete for the 2 cores)")


if __name__ == "__main__":
    main()
