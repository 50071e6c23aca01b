"""The stream engine behind `manage.py run_engine`: feeds newly committed readings to processors.

How it finds new readings. Every ingest transaction writes one row to telemetry_ingest_log (device,
sample-time span, txid = pg_current_xact_id()), and its readings carry the same ingest_txid. The
engine's watermark is a transaction-id horizon kept in EngineCursor("engine"): every ingest
transaction with txid below it has been processed. Each loop opens a transaction whose first
statement reads `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running:
every transaction below that horizon has finished, and the committed ones are visible to the
statements that follow. The loop takes the log rows with watermark <= txid < horizon, fetches
their readings through the primary key (device_id, metric, sample_time range, ingest_txid), hands
them to each processor's `process(rows, now=...)`, and moves the watermark to the horizon in the
same transaction. A crash before commit undoes the processors' writes together with the cursor
move, so after a restart nothing is processed twice in effect and nothing is skipped; a
transaction that was still open at the horizon is picked up by a later loop once it commits
(ordering by commit time instead would skip it, which is why the cursor is not a timestamp).

When it wakes. Every ingest-log row queues a NOTIFY on the `perfuse_ingest` channel (a trigger:
telemetry/storage.py INGEST_NOTIFY_SQL), which PostgreSQL delivers only once the writing ingest
transaction has committed, one per transaction.
The engine LISTENs on a connection of its own and, once caught up, waits for a notification or
the poll interval (PERFUSE_ENGINE_INTERVAL_SECONDS, `--interval`), whichever comes first; the
notifications that piled up meanwhile are drained, so a burst of commits costs one loop. So a
reading reaches the processors milliseconds after its commit, and the poll stays as the fallback:
it drives the processors' timers, covers a lost listener connection (reconnected on the next
wait, which then runs a loop at once in case a notification was missed), and picks up a
transaction that was still open at the horizon when its notification arrived. The notification
is a hint, the ingest log is the truth: a spurious or lost one changes only when a loop runs.

Processors (settings.PERFUSE_ENGINE_PROCESSORS) also get `tick(now=...)` every loop for their
timers. RollupProcessor keeps the plain-PostgreSQL rollup tables from mergeable partials (on
TimescaleDB the continuous aggregates do that job). Housekeeping on plain PostgreSQL creates
future daily partitions and moves late rows out of the default partition. One engine owns the
stream at a time: it holds a session-level advisory lock, and a second instance waits for it.
SIGTERM/SIGINT let the current batch finish, then the worker exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from telemetry import db, storage
from telemetry.selectors import BUCKET_SECONDS, ENGINE_CURSOR, READING_ROW_COLUMNS, ReadingRow, bucket_floor
from telemetry.units import METRICS

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x7065_7266_0001  # "perf" + 1: the engine's ownership lock
MAX_TXIDS_PER_BATCH = 2000
HOUSEKEEPING_EVERY = dt.timedelta(minutes=10)
INGEST_LOG_KEEP = dt.timedelta(days=1)
# A wait for a notification is cut into slices this long so that SIGTERM (which only sets the stop
# event) is honoured promptly even with a long poll interval.
STOP_CHECK_SECONDS = 0.5


class Processor(Protocol):
    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        """New committed readings, any order; runs inside the transaction that moves the watermark."""

    def tick(self, *, now: dt.datetime) -> None:
        """Every engine loop: timers (no data, escalation, re-alert)."""


def load_processors(paths: Sequence[str] | None = None) -> list[Processor]:
    """Instantiate the configured processors; a bad entry is a startup error, never skipped."""
    processors: list[Processor] = []
    for path in settings.PERFUSE_ENGINE_PROCESSORS if paths is None else paths:
        try:
            factory = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(f"PERFUSE_ENGINE_PROCESSORS: cannot import {path!r}: {exc}") from exc
        processors.append(factory())
    return processors


@dataclass(frozen=True)
class Batch:
    transactions: int
    readings: int
    position: int
    caught_up: bool


# Rows whose time no Python datetime can hold (PostgreSQL takes 4713 BC to 294276 AD and
# ±infinity; ingest stores none) are left out: fetching one would fail the batch on every retry.
_READINGS_SQL = f"""
    SELECT {READING_ROW_COLUMNS}
    FROM telemetry_ingest_log AS l
    JOIN telemetry_reading AS r
      ON r.device_id = l.device_id AND r.metric = ANY(%s) AND r.ingest_txid = l.txid
     AND r.sample_time BETWEEN l.min_sample_time AND l.max_sample_time
    WHERE l.txid >= %s AND l.txid < %s
      AND r.sample_time BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
"""


def engine_batch(processors: Sequence[Processor], *, now: dt.datetime, limit: int = MAX_TXIDS_PER_BATCH) -> Batch:
    """Process the ingest transactions finished since the watermark, in one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        # First statement: the snapshot (and so the horizon) predates everything read below.
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        horizon = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO telemetry_enginecursor (name, position, updated_at) VALUES (%s, 0, now()) "
            "ON CONFLICT (name) DO NOTHING",
            [ENGINE_CURSOR],
        )
        cursor.execute("SELECT position FROM telemetry_enginecursor WHERE name = %s FOR UPDATE", [ENGINE_CURSOR])
        position = cursor.fetchone()[0]
        if horizon <= position:
            return Batch(0, 0, position, caught_up=True)
        cursor.execute(
            "SELECT DISTINCT txid FROM telemetry_ingest_log WHERE txid >= %s AND txid < %s ORDER BY txid LIMIT %s",
            [position, horizon, limit],
        )
        txids = [row[0] for row in cursor.fetchall()]
        caught_up = len(txids) < limit
        upto = horizon if caught_up else txids[-1] + 1
        rows: list[ReadingRow] = []
        if txids:
            cursor.execute(_READINGS_SQL, [list(METRICS), position, upto])
            rows = [ReadingRow(*row) for row in cursor.fetchall()]
            for processor in processors:
                processor.process(rows, now=now)
        cursor.execute(
            "UPDATE telemetry_enginecursor SET position = %s, updated_at = now() WHERE name = %s",
            [upto, ENGINE_CURSOR],
        )
    return Batch(len(txids), len(rows), upto, caught_up)


def engine_tick(processors: Sequence[Processor], *, now: dt.datetime) -> None:
    with transaction.atomic():
        for processor in processors:
            processor.tick(now=now)


def storage_housekeeping(*, now: dt.datetime) -> list[str]:
    """Plain PostgreSQL: partitions for the coming days and for late rows parked in the default
    partition (storage.partitions_upkeep). Both backends: forget ingest-log rows the engine
    processed a while ago."""
    created: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        if not storage.timescale_in_use():
            created = storage.partitions_upkeep(cursor, now=now, max_age_days=settings.PERFUSE_INGEST_MAX_AGE_DAYS)
        cursor.execute(
            "DELETE FROM telemetry_ingest_log WHERE created_at < %s AND txid < "
            "(SELECT position FROM telemetry_enginecursor WHERE name = %s)",
            [now - INGEST_LOG_KEEP, ENGINE_CURSOR],
        )
    return created


class RollupProcessor:
    """Plain PostgreSQL: fold new readings into telemetry_rollup_{1m,1h} as mergeable partials
    (count, sums, min, max), so a late or out-of-order reading just adds to its bucket."""

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        if not rows or storage.timescale_in_use():
            return
        with connection.cursor() as cursor:
            for resolution in BUCKET_SECONDS:
                self._upsert(cursor, resolution, rows)

    def tick(self, *, now: dt.datetime) -> None:
        return None

    @staticmethod
    def _upsert(cursor: Any, resolution: str, rows: list[ReadingRow]) -> None:
        partials: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            key = (row.patient_id, row.device_id, row.metric, bucket_floor(row.sample_time, resolution))
            quality = row.signal_quality
            p = partials.get(key)
            if p is None:
                partials[key] = [1, row.value, row.value, row.value, quality or 0.0, int(quality is not None)]
            else:
                p[0] += 1
                p[1] += row.value
                p[2] = min(p[2], row.value)
                p[3] = max(p[3], row.value)
                if quality is not None:
                    p[4] += quality
                    p[5] += 1
        columns: list[list[Any]] = [[] for _ in range(10)]
        for key, values in partials.items():
            for column, item in zip(columns, (*key, *values), strict=True):
                column.append(item)
        table = f"telemetry_rollup_{resolution}"
        cursor.execute(
            f"""
            INSERT INTO {table} AS r
                (patient_id, device_id, metric, bucket, n, value_sum, value_min, value_max, quality_sum, quality_n)
            SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::timestamptz[], %s::bigint[],
                                 %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::bigint[])
            ON CONFLICT ON CONSTRAINT {table}_key DO UPDATE SET
                n = r.n + excluded.n,
                value_sum = r.value_sum + excluded.value_sum,
                value_min = least(r.value_min, excluded.value_min),
                value_max = greatest(r.value_max, excluded.value_max),
                quality_sum = r.quality_sum + excluded.quality_sum,
                quality_n = r.quality_n + excluded.quality_n
            """,
            columns,
        )


class Engine:
    """The run loop: ownership lock, batches, ticks, housekeeping, clean stop."""

    def __init__(
        self,
        processors: Sequence[Processor],
        *,
        interval: float | None = None,
        clock: Callable[[], dt.datetime] = timezone.now,
        listen: bool = True,
    ) -> None:
        self.processors = list(processors)
        self.interval = settings.PERFUSE_ENGINE_INTERVAL_SECONDS if interval is None else interval
        self.clock = clock
        self.stop_event = threading.Event()
        self._housekeeping_due = dt.datetime.min.replace(tzinfo=dt.UTC)
        # False: poll only (a connection pooler in transaction mode, e.g. PgBouncer, cannot LISTEN).
        self.listening = listen
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_down = False

    def stop(self) -> None:
        self.stop_event.set()

    def listen(self) -> bool:
        """(Re)open the LISTEN connection; False when the database cannot be reached."""
        try:
            self._listener = db.listen_connect(storage.INGEST_CHANNEL)
        except psycopg.Error as exc:
            if not self._listener_down:
                log.warning("cannot LISTEN for ingest commits (%s); polling every %s s", exc, self.interval)
            self._listener_down = True
            return False
        if self._listener_down:
            log.info("listening for ingest commits again")
        self._listener_down = False
        return True

    def wait_for_commit(self, timeout: float) -> bool:
        """Until an ingest commit is announced (True), `timeout` passes or a stop is asked (False)."""
        if not self.listening:
            self.stop_event.wait(timeout)
            return False
        deadline = time.monotonic() + timeout
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._listener is None:
                # Reconnected: a notification may have been missed while it was down, so loop now.
                if self.listen():
                    return True
                self.stop_event.wait(min(remaining, 1.0))
                continue
            if self._notified(min(remaining, STOP_CHECK_SECONDS)):
                return True
        return False

    def _notified(self, timeout: float) -> bool:
        assert self._listener is not None
        try:
            if not any(True for _ in self._listener.notifies(timeout=timeout, stop_after=1)):
                return False
            for _ in self._listener.notifies(timeout=0):  # the burst behind it: one loop for all
                pass
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection (%s); reconnecting", exc)
            self._close_listener()
            return False
        return True

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def acquire_ownership(self) -> bool:
        """Wait until this process holds the engine lock; False if asked to stop first."""
        announced = False
        while not self.stop_event.is_set():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
                if cursor.fetchone()[0]:
                    return True
            if not announced:
                log.info("another engine holds the stream; waiting for it to stop")
                announced = True
            self.stop_event.wait(1.0)
        return False

    def loop_once(self) -> Batch:
        now = self.clock()
        if now >= self._housekeeping_due:
            created = storage_housekeeping(now=now)
            if created:
                log.info("created partitions %s", ", ".join(created))
            self._housekeeping_due = now + HOUSEKEEPING_EVERY
        try:
            batch = engine_batch(self.processors, now=now)
        finally:
            # Timers (no-data, escalation) run even when a batch failed: they must not wait on it.
            engine_tick(self.processors, now=self.clock())
        return batch

    def run(self) -> None:
        if not self.acquire_ownership():
            return
        # LISTEN before the first loop: a commit after that loop's snapshot is then announced.
        if self.listening:
            self.listen()
        log.info("engine started with %s", ", ".join(type(p).__name__ for p in self.processors) or "no processors")
        failures = 0
        while not self.stop_event.is_set():
            try:
                batch = self.loop_once()
            except (OperationalError, InterfaceError):
                # The connection (and with it our lock) is gone: reconnect and own the stream again.
                log.exception("database connection lost; reconnecting")
                connection.close()
                self.stop_event.wait(1.0)
                if not self.acquire_ownership():
                    break
                continue
            except Exception:
                # A bug in a processor must not stop the engine (and with it every alarm timer).
                # The failed batch rolled back, so its readings stay queued and are retried after
                # a growing back-off; each failure is logged with its traceback.
                failures += 1
                log.exception("engine loop failed (%d in a row); retrying", failures)
                self.stop_event.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
            if batch.readings:
                log.debug("processed %d readings from %d transactions", batch.readings, batch.transactions)
            if batch.caught_up:
                self.wait_for_commit(self.interval)
        # Ending the session releases the ownership lock (also when the connection is already gone).
        connection.close()
        self._close_listener()
        log.info("engine stopped")
