"""Engine wake-up: the commit of an ingest transaction → the engine's processors see its readings.

    .venv/bin/python bench/engine_wakeup.py [--commits 200] [--interval 0.2]

Migrates the given database, runs the engine (`telemetry.engine.Engine`, as `run_engine` does) in
a thread with one probe processor, and commits ingest transactions of one reading each (the
reading and its ingest-log row, as the store step writes them) at random gaps of 0-100 ms. A
reading's latency runs from the return of its COMMIT to the probe's `process` call, inside the
engine's transaction where the alarm evaluator decides. Twice: with LISTEN (the default, woken by
the ingest log's NOTIFY trigger) and poll only (`run_engine --no-listen`) at the same interval.
Prints p50/p99/max of each.

Runs against throwaway PostgreSQL and Redis of its own unless DATABASE_URL names a database
(bench/servers.py), never against `make run`'s demo database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

# Throwaway PostgreSQL and Redis unless DATABASE_URL names a database (bench/servers.py).
from bench.servers import own_services_unless_given  # noqa: E402

OWN_SERVICES = own_services_unless_given()

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from telemetry.engine import Engine, ReadingRow  # noqa: E402

DEVICE = 990_001  # no such device row is needed: the reading table has no foreign keys


class Probe:
    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.changed = threading.Condition()

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        at = time.monotonic()
        with self.changed:
            for row in rows:
                if row.device_id == DEVICE:
                    self.seen.setdefault(row.seq, at)
            self.changed.notify_all()

    def tick(self, *, now: dt.datetime) -> None:
        return None


def _commit(seq: int) -> float:
    t = dt.datetime.now(dt.UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_reading (device_id, metric, seq, sample_time, value, raw_value, raw_unit) "
            "VALUES (%s, 'tissue_o2', %s, %s, 60, 60, '%%')",
            [DEVICE, seq, t],
        )
        cursor.execute(
            "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
            "VALUES (%s, %s, %s, 1)",
            [DEVICE, t, t],
        )
    return time.monotonic()


def run(*, listen: bool, commits: int, interval: float, first_seq: int) -> list[float]:
    probe = Probe()
    engine = Engine([probe], interval=interval, listen=listen)
    worker = threading.Thread(target=engine.run, daemon=True)
    worker.start()
    time.sleep(1.0)  # the first loop (housekeeping, catch-up) is behind us
    rng = random.Random(7)
    committed: dict[int, float] = {}
    try:
        for seq in range(first_seq, first_seq + commits):
            committed[seq] = _commit(seq)
            time.sleep(rng.uniform(0, 0.1))
        with probe.changed:
            probe.changed.wait_for(lambda: len(probe.seen) >= commits, timeout=30)
    finally:
        engine.stop()
        worker.join(timeout=30)
    return [(probe.seen[seq] - at) * 1000 for seq, at in committed.items() if seq in probe.seen]


def _line(name: str, latencies: list[float], commits: int) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"{name:>28}: {len(ordered)}/{commits} processed  p50 {statistics.median(ordered):.1f} ms  "
        f"p99 {p99:.1f} ms  max {ordered[-1]:.1f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.2, help="the engine's poll interval (s)")
    args = parser.parse_args(argv)
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:  # start past whatever the database held
        cursor.execute("DELETE FROM telemetry_reading WHERE device_id = %s", [DEVICE])
    results: dict[str, Any] = {}
    results["LISTEN/NOTIFY"] = run(listen=True, commits=args.commits, interval=args.interval, first_seq=1)
    results[f"poll every {args.interval} s"] = run(
        listen=False, commits=args.commits, interval=args.interval, first_seq=args.commits + 1
    )
    connection.close()
    with open("/proc/loadavg") as load:
        print(f"load average {' '.join(load.read().split()[:3])}")
    for name, latencies in results.items():
        print(_line(name, latencies, args.commits))


if __name__ == "__main__":
    main()
