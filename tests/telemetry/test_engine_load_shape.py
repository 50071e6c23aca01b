"""What keeps the engine's cost per batch proportional to the batch (docs/benchmarks.md "Engine
under fleet load"): its readings are found through the primary key, never by scanning the day's
readings; its rollups are exact whatever the floats; and loops coalesced on a busy stream still
process every reading once, none left for the poll."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import psycopg.sql
import pytest
from django.db import connection, transaction

from telemetry.db import bound_cursor
from telemetry.engine import _BATCH_SQL, Engine, ReadingRow, RollupProcessor, engine_batch
from telemetry.selectors import engine_cursor_name
from telemetry.units import METRICS
from tests.readings import Row, insert_readings

pytestmark = pytest.mark.django_db(transaction=True)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _commit(rows: list[Row]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, rows)


def test_the_batch_statement_finds_log_rows_and_readings_by_key_however_many_the_day_holds() -> None:
    # The statement a batch runs after locking its cursors (its end, the cursor move and the
    # readings at once), prepared and with JIT off as the engine runs it, on a day's partition
    # with many devices' readings and ingest-log rows (statistics taken) and a group commit of one
    # reading from each of 300 devices: neither the day's readings nor the day's ingest log is
    # scanned, whichever plan the server settles on.
    start = NOW - dt.timedelta(minutes=30)
    for second in range(0, 40):  # 40 ingest transactions of 300 devices: 12,000 log rows
        _commit(
            [Row(d, d, "tissue_o2", second, start + dt.timedelta(seconds=second), 60.0, 0.9) for d in range(1, 301)]
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE telemetry_reading")
        cursor.execute("ANALYZE telemetry_ingest_log")
        cursor.execute("SELECT max(txid) FROM telemetry_ingest_log")
        (old,) = cursor.fetchone()
    _commit([Row(d, d, "tissue_o2", 1000, NOW, 61.0, 0.9) for d in range(1, 301)])
    names = [engine_cursor_name(p, 16) for p in range(16)]
    horizon = old + 10**6
    params = [old + 1, horizon, 2000, 2000, horizon, names, list(METRICS), list(range(16)), [old + 1] * 16, 16]
    with transaction.atomic(), bound_cursor() as cursor:
        cursor.execute("SELECT set_config('jit', 'off', true)")
        for _ in range(7):  # past psycopg's prepare threshold, and the server's five custom plans
            cursor.execute("EXPLAIN " + _BATCH_SQL, params, prepare=True)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            # A partition the planner knows to be empty (yesterday's, once autovacuum has seen it
            # after another test's rows were flushed) costs nothing to scan and may be: what must
            # never be scanned is a partition holding readings, or the ingest log.
            for relation in re.findall(r"Seq Scan on (telemetry_reading\w*|telemetry_ingest_log\w*)", plan):
                cursor.execute(
                    psycopg.sql.SQL("SELECT EXISTS (SELECT FROM {})").format(psycopg.sql.Identifier(relation))
                )
                assert not cursor.fetchone()[0], plan
        cursor.execute(_BATCH_SQL, params)
        rows = cursor.fetchall()
        transaction.set_rollback(True)
    assert (rows[0][0], rows[0][1]) == (1, horizon)
    assert sorted(row[2] for row in rows) == list(range(1, 301))
    assert engine_batch([RollupProcessor()], now=NOW).readings == 40 * 300 + 300


def test_rollups_are_exact_for_awkward_floats_and_missing_quality() -> None:
    values = [0.1, 0.2, 0.30000000000000004, 1e-300, 123456.789012345, -0.0, 5e-324, 1.7976931348623157e308 / 4]
    qualities = [0.95, None, 0.1, 0.7, None, 0.333, 0.5, 1.0]
    minute = NOW.replace(second=0) - dt.timedelta(minutes=5)
    rows = [
        Row(3, 30, "tissue_o2", i, minute + dt.timedelta(seconds=i), v, q)
        for i, (v, q) in enumerate(zip(values, qualities, strict=True))
    ]
    _commit(rows[:4])
    engine_batch([RollupProcessor()], now=NOW)
    _commit(rows[4:])
    engine_batch([RollupProcessor()], now=NOW)
    with connection.cursor() as cursor:
        # The stored qualities (real) as Python reads them, to sum them the way the engine does.
        cursor.execute("SELECT signal_quality FROM telemetry_reading WHERE device_id = 3 ORDER BY seq")
        stored_q = [q for (q,) in cursor.fetchall()]
        cursor.execute(
            "SELECT n, value_sum, value_min, value_max, quality_sum, quality_n FROM telemetry_rollup_1m "
            "WHERE device_id = 3"
        )
        (n, value_sum, value_min, value_max, quality_sum, quality_n) = cursor.fetchone()
        cursor.execute("SELECT n, value_sum FROM telemetry_rollup_1h WHERE device_id = 3")
        hour = cursor.fetchone()
    assert n == len(values) and hour == (n, value_sum)
    # Two batches: each one's partial summed in order, then the two partials added.
    assert value_sum == sum(values[:4]) + sum(values[4:])
    assert (value_min, value_max) == (min(values), max(values))
    present = [q for q in stored_q if q is not None]
    assert quality_n == len(present)
    assert quality_sum == sum(q for q in stored_q[:4] if q is not None) + sum(q for q in stored_q[4:] if q is not None)


class Recorder:
    def __init__(self) -> None:
        self.seen: Counter[int] = Counter()
        self.ticked = threading.Event()

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        seqs = [r.seq for r in rows]
        transaction.on_commit(lambda: self.seen.update(seqs))

    def tick(self, *, now: dt.datetime) -> None:
        self.ticked.set()


def test_coalesced_loops_of_a_busy_stream_process_every_commit_once(settings: Any) -> None:
    settings.PERFUSE_ENGINE_COALESCE_MS = 300  # far more than the commits below take
    recorder = Recorder()
    engine = Engine([recorder], interval=3600.0)  # nothing may wait for the poll: it is an hour
    worker = threading.Thread(target=engine.run, daemon=True)
    worker.start()
    try:
        assert recorder.ticked.wait(30)
        for seq in range(1, 21):  # twenty commits in a burst, each its own ingest transaction
            _commit([Row(5, 5, "tissue_o2", seq, NOW - dt.timedelta(seconds=seq), 60.0, 0.9)])
        deadline = time.monotonic() + 30  # a guard against a reading left for the poll
        while sum(recorder.seen.values()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.stop()
        worker.join(timeout=30)
    assert recorder.seen == Counter(range(1, 21))


@pytest.mark.timescale
def test_the_batch_query_finds_a_commits_readings_on_a_hypertable(timescale: psycopg.Connection[Any]) -> None:
    # The same statement on TimescaleDB's storage (chunks instead of daily partitions).
    device = 990_000 + int(time.time()) % 10_000  # the server is shared by the session
    rows = [Row(device, device, "tissue_o2", s, NOW - dt.timedelta(seconds=s), 60.0 + s, 0.9) for s in range(5)]
    with timescale.transaction():
        insert_readings(timescale.cursor(), rows)
    (txid,) = timescale.execute(
        "SELECT max(txid) FROM telemetry_ingest_log WHERE device_id = %s", [device]
    ).fetchone() or (None,)
    part = device % 16
    names = [engine_cursor_name(part, 16)]
    params = [txid, txid + 1, 2000, 2000, txid + 1, names, list(METRICS), [part], [txid], 16]
    with timescale.transaction(force_rollback=True):  # the batch statement moves the cursor
        found = timescale.execute(_BATCH_SQL, params).fetchall()
    assert sorted((r[5], r[7]) for r in found) == [(s, 60.0 + s) for s in range(5)]  # after n and upto: seq, value
