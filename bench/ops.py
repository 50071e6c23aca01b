"""Operational endpoint figures (not a test): what /metrics and /readyz cost with a full day's
ingest log, and what counting one ingest request costs.

    .venv/bin/python bench/ops.py [LOG_ROWS] [LAST_MINUTE] [BEHIND]

Creates a throwaway database (perfuse_bench_ops) on the configured server, migrates it, fills
telemetry_ingest_log with LOG_ROWS rows (default 2,000,000) spread over 24 hours, LAST_MINUTE of
them (default 60,000: 1,000 devices each sending a batch a second) in the last minute and BEHIND
(default 5,000) past the engine's watermark, then times each scrape-time collector, the whole
metrics page and the readiness checks, and drops the database at the end.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

# Throwaway PostgreSQL and Redis unless DATABASE_URL names a database (bench/servers.py).
from bench.servers import own_services_unless_given

OWN_SERVICES = own_services_unless_given()

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from config import metrics, ops  # noqa: E402
from telemetry.selectors import engine_cursor_name, engine_partitions  # noqa: E402

_INSERT = "INSERT INTO telemetry_ingest_log (txid, device_id, min_sample_time, max_sample_time, accepted, created_at) "


def load(rows: int, last_minute: int, behind: int) -> None:
    older = rows - last_minute
    with connection.cursor() as cursor:
        # txids grow with time as real ones do; created_at is the transaction start.
        cursor.execute(
            _INSERT + "SELECT i, i %% 1000, t, t, 1, t FROM (SELECT i, now() - interval '24 hours' "
            "+ (i * interval '23 hours 58 minutes') / %s AS t FROM generate_series(1, %s) AS i) s",
            [older, older],
        )
        cursor.execute(
            _INSERT + "SELECT %s + i, i %% 1000, t, t, 1, t FROM (SELECT i, now() - interval '59 seconds' "
            "+ (i * interval '58 seconds') / %s AS t FROM generate_series(1, %s) AS i) s",
            [older, last_minute, last_minute],
        )
        partitions = engine_partitions()  # every partition at the same position
        cursor.execute(
            "INSERT INTO telemetry_enginecursor (name, position, updated_at) SELECT unnest(%s::text[]), %s, now()",
            [[engine_cursor_name(p, partitions) for p in range(partitions)], rows - behind + 1],
        )
        cursor.execute("VACUUM ANALYZE telemetry_ingest_log")


def timed(label: str, work: Callable[[], object], runs: int = 20, warm: bool = True) -> None:
    if warm:
        work()  # connection, plans
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    print(f"  {label:<34} p50 {statistics.median(times):8.2f} ms   max {max(times):8.2f} ms")


def collector(function: Callable[..., object]) -> Callable[[], object]:
    def run() -> object:
        with connection.cursor() as cursor:
            return function(cursor)

    return run


def main() -> None:
    rows, last_minute, behind = (int(a) for a in (sys.argv[1:] + ["2000000", "60000", "5000"][len(sys.argv) - 1 :]))
    connection.settings_dict["TEST"]["NAME"] = "perfuse_bench_ops"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        started = time.perf_counter()
        load(rows, last_minute, behind)
        print(f"ingest log: {rows:,} rows over 24 h, {last_minute:,} in the last minute, {behind:,} behind the engine")
        print(f"  (loaded in {time.perf_counter() - started:.1f} s)")
        page = ops.render_metrics()
        for name in ("perfuse_readings_stored_last_minute", "perfuse_engine_lag_transactions", "perfuse_audit_events"):
            line = next(line for line in page.splitlines() if line.startswith(name + " "))
            print(f"  {line}")
        print("scrape-time collectors:")
        for function in ops.DATABASE_COLLECTORS:
            timed(function.__name__, collector(function))
        timed("whole /metrics page", ops.render_metrics)
        ops._migrated = False
        ops._migrated_checked_at = None
        timed("/readyz, first (migration graph)", ops.readiness, runs=1, warm=False)
        timed("/readyz, cached", ops.readiness)
        count = 100_000
        started = time.perf_counter()
        for _ in range(count):
            metrics.ingest_observe(status=200, accepted=500, duplicates=0, rejected_codes=(), seconds=0.01)
        print(f"ingest_observe: {(time.perf_counter() - started) / count * 1e6:.2f} µs per request")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
