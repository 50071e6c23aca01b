"""Storage figures (not a test): engine catch-up rate with rollups on plain PostgreSQL, and series
selector latency per resolution, from the rollups and from the raw tail.

    .venv/bin/python bench/storage.py [DEVICES] [HOURS]

Creates a throwaway database (perfuse_bench_storage) on the configured server, migrates it, loads
DEVICES (default 4) patients x HOURS (default 24) of 1 Hz readings in 10-minute ingest
transactions, and drops it at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

# Throwaway PostgreSQL and Redis unless DATABASE_URL names a database (bench/servers.py).
from bench.servers import own_services_unless_given

OWN_SERVICES = own_services_unless_given()

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from telemetry.engine import RollupProcessor, engine_batch  # noqa: E402
from telemetry.selectors import patient_series  # noqa: E402
from telemetry.storage import timescale_active  # noqa: E402

END = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


def load(devices: int, hours: int) -> int:
    start = END - dt.timedelta(hours=hours)
    with connection.cursor() as cursor:
        for block in range(hours * 6):
            lo = start + dt.timedelta(minutes=10 * block)
            with transaction.atomic():
                for device in range(1, devices + 1):
                    cursor.execute(
                        "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, "
                        "raw_value, raw_unit, signal_quality) "
                        "SELECT %s, %s, 'tissue_o2', %s + i, %s + i * INTERVAL '1 second', "
                        "65 + 5 * sin(i / 300.0) + random(), 65, '%%', 0.5 + random() / 2 "
                        "FROM generate_series(0, 599) AS i",
                        [device, device, block * 600, lo],
                    )
                    cursor.execute(
                        "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
                        "VALUES (%s, %s, %s, 600)",
                        [device, lo, lo + dt.timedelta(seconds=599)],
                    )
    return devices * hours * 3600


def timed_series(label: str, start: dt.datetime, max_points: int = 5000, runs: int = 20) -> None:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        series = patient_series(patient_id=1, metric="tissue_o2", start=start, end=END, max_points=max_points)
        times.append((time.perf_counter() - t0) * 1000)
    print(
        f"  {label:<34} {series.resolution:>3} {len(series.points):5d} points  "
        f"median {statistics.median(times):6.1f} ms  max {max(times):6.1f} ms"
    )


def queries(hours: int) -> None:
    timed_series("1 h span", END - dt.timedelta(hours=1))
    timed_series(f"{hours} h span", END - dt.timedelta(hours=hours))
    timed_series(f"{hours} h span, max_points=1000", END - dt.timedelta(hours=hours), max_points=1000)


def main() -> None:
    devices = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    hours = int(sys.argv[2]) if len(sys.argv) > 2 else 24
    connection.settings_dict["TEST"]["NAME"] = "perfuse_bench_storage"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        with connection.cursor() as cursor:
            backend = "TimescaleDB" if timescale_active(cursor) else "PostgreSQL (partitions + rollups)"
        print(f"backend: {backend}; {devices} patients x {hours} h at 1 Hz")
        t0 = time.perf_counter()
        readings = load(devices, hours)
        print(f"load:    {readings} readings in {time.perf_counter() - t0:.1f} s")

        print("selector before the engine ran (buckets from the raw tail):")
        queries(hours)

        t0 = time.perf_counter()
        processed = 0
        while True:
            batch = engine_batch([RollupProcessor()], now=END)
            processed += batch.readings
            if batch.caught_up:
                break
        elapsed = time.perf_counter() - t0
        print(f"engine:  {processed} readings rolled up in {elapsed:.1f} s = {processed / elapsed:,.0f} readings/s")

        print("selector after the engine caught up (buckets from the rollups):")
        queries(hours)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
