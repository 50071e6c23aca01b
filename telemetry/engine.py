"""The stream engine behind `manage.py run_engine`: feeds newly committed readings to processors.

How it finds new readings. Every ingest transaction writes one row to telemetry_ingest_log (device,
sample-time span, txid = pg_current_xact_id()), and its readings carry the same ingest_txid. Each
partition's watermark is a transaction-id horizon kept in EngineCursor("engine:<p>/<P>"): every
reading of the partition from an ingest transaction with txid below it has been processed. Each
loop opens a transaction whose first statement reads `pg_snapshot_xmin(pg_current_snapshot())`,
the oldest transaction still running: every transaction below that horizon has finished, and the
committed ones are visible to the statements that follow. The loop takes the log rows with
txid >= the lowest watermark of the partitions it owns and < the horizon, fetches their readings
through the primary key (device_id, metric, sample_time range, ingest_txid; one index lookup per log
row, never a scan of the day's readings: the cost of a batch follows the batch), keeps those of its
partitions at or past their partition's watermark, hands them to each processor's
`process(rows, now=...)`, and moves those watermarks to the horizon in the same transaction (two
statements after BEGIN: the horizon with the cursor lock, then the end, the cursor move and the
readings at once, _BATCH_SQL). A crash, or an error in any processor, before commit undoes every
processor's writes together with the cursor moves (all or nothing per batch: no savepoint
separates the processors, since committing one processor's part of a batch would need a cursor
per processor), so after a restart nothing is processed twice in effect and nothing is skipped; a
transaction that was still open at the horizon is picked up by a later loop once it commits
(ordering by commit time instead would skip it, which is why the cursor is not a timestamp).

Partitions. The stream is cut into P = PERFUSE_ENGINE_PARTITIONS partitions by patient: a reading
belongs to mod(patient_id, P), or mod(device_id, P) while it has no patient. That is what the
processors key on: alarm evaluators and episodes are per patient (over all of a patient's
devices, and a patient may wear several, so partitioning by device would split one patient's
evaluation between engines), rollups per (patient, device), HL7 result partials per patient and
device; so one owner sees everything a key needs. The ingest log knows only the device (a batch
may span an admission), so an engine reads every log row of its range and filters the readings
by partition: the database reads each new reading once per engine, the processors' work is
split. Patient ids are a sequence, so the identity hash spreads patients evenly.
Each engine holds ADVISORY_LOCK_KEY in shared mode while it runs (an engine of the single-owner
era took it exclusively: the two kinds never run together), which makes the number of engines
readable in pg_locks. Every REBALANCE_EVERY_SECONDS, or at once when another engine announces a
change (a NOTIFY `engines` on the ingest channel), it counts them, gives up partitions beyond its
fair share ceil(P / engines) and takes free ones up to it, each owned through a session lock
pg_try_advisory_lock(PARTITION_LOCK_CLASS, p): one owner per partition. A killed engine's backend
ends with its socket and its session locks with it, so the survivors find its partitions free at
their next rebalance. Surplus is given up between loops, after the batch committed; each batch
also locks its cursor rows FOR UPDATE and reads the positions after the lock, so even two owners
would not process a reading twice. A partition taken over starts at its own watermark, behind or
ahead of the others. Cursors of another partition count (or the single cursor "engine" of older
versions, which migration 0010 converts) are replaced by P cursors at the furthest old position
only when that is exact (no ingest transaction between the old positions), else the engine
refuses to start (partition_cursors_ensure).

Timers. `tick(now=...)` runs in the one engine that holds TIMER_LOCK_KEY (taken by whoever finds
it free), so a timer fires once whatever the number of engines: no-data and escalation scan every
patient, the HL7 outbox closes every interval, FHIR exports advance every job, and two engines
running them would race (the no-data check and interval closing read before they write).
Partition-scoped timers would need every processor to know partitions; one owner keeps them
unchanged, and timers are cheap next to evaluation. Only state a processor keeps in memory for
its engine's partitions needs the other engines: they run its optional `tick_local` instead
(alarms a pause held back), and `forget()` drops that state when partitions move away.
Housekeeping runs with the timers.

When it wakes. Every ingest-log row queues a NOTIFY on the `perfuse_ingest` channel (a trigger:
telemetry/storage.py INGEST_NOTIFY_SQL), which PostgreSQL delivers only once the writing ingest
transaction has committed, one per transaction.
Every engine LISTENs on a connection of its own and, once caught up, waits for a notification or
the poll interval (PERFUSE_ENGINE_INTERVAL_SECONDS, `--interval`), whichever comes first; the
notifications that piled up meanwhile are drained, so a burst of commits costs one loop; and on a
busy stream (the loop before had readings) the next loop starts no sooner than
PERFUSE_ENGINE_COALESCE_MS (20) after the previous one started, so that hundreds of commits a second
(a transaction per HTTP request) share loops instead of each paying a loop's fixed cost (a commit
after a quiet spell still runs a loop at once). The timers (`tick`) run at most every
TIMERS_EVERY_SECONDS (0.2, an idle engine's poll), not on every loop. A commit
wakes every engine (the trigger cannot know the partition: the patient is on the readings), each
processes what is its own. With peers, or partitions nobody owns, the wait is cut to the next
rebalance, so a dead peer is noticed. So a reading reaches the processors milliseconds after its
commit, and the poll stays as the fallback: it drives the processors' timers, covers a lost
listener connection (reconnected on the next wait, which then runs a loop at once in case a
notification was missed), and picks up a transaction that was still open at the horizon when its
notification arrived. The notification is a hint, the ingest log is the truth: a spurious or lost
one changes only when a loop runs.

Processors (settings.PERFUSE_ENGINE_PROCESSORS): RollupProcessor keeps the plain-PostgreSQL rollup
tables from mergeable partials (on TimescaleDB the continuous aggregates do that job).
Housekeeping on plain PostgreSQL creates future daily partitions and moves late rows out of the
default partition. SIGTERM/SIGINT let the current batch finish, then the worker releases its locks,
tells the others, and exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from telemetry import db, storage
from telemetry.selectors import (
    BUCKET_SECONDS,
    ENGINE_CURSOR,
    READING_ROW_COLUMNS,
    ReadingRow,
    bucket_floor,
    engine_cursor_name,
    engine_partitions,
    engine_positions,
)
from telemetry.units import METRICS

log = logging.getLogger(__name__)

# "perf" + 1: every running engine holds it in shared mode (the members of the stream, counted in
# pg_locks). An engine of the single-owner era took it exclusively, so the two never run together.
ADVISORY_LOCK_KEY = 0x7065_7266_0001
TIMER_LOCK_KEY = 0x7065_7266_0002  # the one engine that runs the processors' timers (tick)
PARTITION_LOCK_CLASS = 0x7065_7202  # pg_try_advisory_lock(class, partition): a partition's owner
# How often an engine counts its peers and frees or takes partitions (and so the takeover delay
# after a peer dies), unless a peer announces itself sooner on the ingest channel.
REBALANCE_EVERY_SECONDS = 0.5
ENGINES_CHANGED = "engines"  # payload on storage.INGEST_CHANNEL: an engine joined, left or freed partitions
MAX_TXIDS_PER_BATCH = 2000
HOUSEKEEPING_EVERY = dt.timedelta(minutes=10)
INGEST_LOG_KEEP = dt.timedelta(days=1)
# Timers run at most this often: as often as an idle engine polls (the default interval), however
# many commits a busy engine loops on (hundreds a second), since every run reads the open alarms,
# pauses and export jobs, and the timers are of seconds (escalation, re-alert, resolution, no data).
TIMERS_EVERY_SECONDS = 0.2
# A wait for a notification is cut into slices this long so that SIGTERM (which only sets the stop
# event) is honoured promptly even with a long poll interval.
STOP_CHECK_SECONDS = 0.5


class Processor(Protocol):
    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        """New committed readings, any order; runs inside the transaction that moves the watermark."""

    def tick(self, *, now: dt.datetime) -> None:
        """Every loop of the engine holding the timer lock: timers (no data, escalation, re-alert).

        Optional, looked up with getattr: `tick_local(now=...)`, run every loop by the other
        engines instead, for timers over state a processor keeps in memory for the partitions
        its engine owns (alarms a pause held back); and `forget()`, called when the engine gives
        partitions up, to drop what it caches per key (another engine processes them now)."""


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
# The partitions join keeps the readings of the batch's partitions that are at or past their
# partition's watermark (the log knows only the device; a reading's partition is its patient's,
# computed as selectors.partition_sql does).
# Each log row's readings are looked up through the primary key (device, metric, sample-time
# span) in a LATERAL subquery that OFFSET 0 keeps from being flattened into a join: left to
# itself the planner hash-joins the log with a sequential scan of every reading of the day's
# partition, a cost that grows with the table (45 ms a batch after a minute of 2,000 devices,
# docs/benchmarks.md "Engine under fleet load") instead of with the batch.
def _readings_sql(txids: str) -> str:
    """The batch's readings; `txids` is the SQL condition on the log rows' l.txid."""
    return f"""
    SELECT {READING_ROW_COLUMNS}
    FROM telemetry_ingest_log AS l
    CROSS JOIN LATERAL (
        SELECT {READING_ROW_COLUMNS}, r.ingest_txid FROM telemetry_reading AS r
        WHERE r.device_id = l.device_id AND r.metric = ANY(%s::text[]) AND r.ingest_txid = l.txid
          AND r.sample_time BETWEEN l.min_sample_time AND l.max_sample_time
          AND r.sample_time BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
        OFFSET 0
    ) AS r
    JOIN unnest(%s::int[], %s::bigint[]) AS w(part, position)
      ON w.part = mod(coalesce(r.patient_id, r.device_id), %s::bigint) AND r.ingest_txid >= w.position
    WHERE {txids}
"""


# The rest of a batch after its cursors are locked, in one round trip: the batch's end (the
# horizon, or just past its MAX_TXIDS_PER_BATCH-th ingest transaction), the cursors moved there,
# and the readings. The cursor UPDATE comes before the processors run, but in their transaction:
# a processor that fails rolls it back with everything else, exactly as when it came after.
# The log rows are those of the batch's transactions (tx: the same as txid >= position and
# < upto), looked up through the txid index as an array (an InitPlan): with `l.txid < upto` the
# planner guessed thousands of rows and compiled the statement (JIT, 100 ms) on every batch, and
# with `IN (SELECT txid FROM tx)` it hash-joined a sequential scan of the day's log.
# Parameters: position, horizon, limit, limit, horizon, names, metrics, partitions, their
# positions, the partition count. The LEFT JOIN gives one row of NULL readings when the batch
# holds none of ours, so the end and the count always come back.
_BATCH_SQL = f"""
    WITH tx AS (
        SELECT DISTINCT txid FROM telemetry_ingest_log
        WHERE txid >= %s::bigint AND txid < %s::bigint ORDER BY txid LIMIT %s::int
    ), bound AS (
        SELECT count(*) AS n, CASE WHEN count(*) < %s::int THEN %s::bigint ELSE max(txid) + 1 END AS upto FROM tx
    ), moved AS (
        UPDATE telemetry_enginecursor SET position = greatest(position, (SELECT upto FROM bound)), updated_at = now()
        WHERE name = ANY(%s::text[])
    )
    SELECT b.n, b.upto, r.* FROM bound AS b
    LEFT JOIN ({_readings_sql("l.txid = ANY(ARRAY(SELECT txid FROM tx))")}) AS r ON true
"""

# A batch's first statement: the horizon (its snapshot predates everything the batch reads after
# it) and the partitions' cursors, locked, read after the lock. It also turns JIT compilation off
# for the rest of the transaction: a batch touches its own rows only, never enough for JIT to pay
# off, and _BATCH_SQL's estimate sits near jit_above_cost (compiling it took ~100 ms, measured).
_HORIZON_SQL = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint, set_config('jit', 'off', true)"
_CURSORS_LOCK_SQL = (
    f"SELECT {_HORIZON_SQL}, name, position FROM telemetry_enginecursor "
    "WHERE name = ANY(%s::text[]) ORDER BY name FOR UPDATE"
)


def engine_batch(
    processors: Sequence[Processor],
    *,
    now: dt.datetime,
    limit: int = MAX_TXIDS_PER_BATCH,
    partitions: Sequence[int] | None = None,
) -> Batch:
    """Process the ingest transactions finished since the watermarks of `partitions` (all when
    None), in one transaction that moves those watermarks."""
    count = engine_partitions()
    owned = sorted(range(count) if partitions is None else set(partitions))
    if not owned:
        return Batch(0, 0, 0, caught_up=True)
    names = [engine_cursor_name(p, count) for p in owned]
    with transaction.atomic(), connection.cursor() as cursor:
        with db.bound_cursor() as bound:  # prepared: it runs on every loop
            bound.execute(_CURSORS_LOCK_SQL, [names])
            locked = bound.fetchall()
        if len(locked) < len(names):  # first batch, or the partition count changed: convert
            if not locked:  # nothing to lock, so no horizon came back
                cursor.execute(f"SELECT {_HORIZON_SQL}")
                locked = [(*cursor.fetchone(), None, None)]
            partition_cursors_ensure(cursor, count)
            locked = [(*locked[0][:2], *row) for row in _cursors_lock(cursor, names).items()]
        horizon = locked[0][0]
        found = {name: position for _, _, name, position in locked}
        positions = [int(found[name]) for name in names]
        position = min(positions)
        if horizon <= position:
            return Batch(0, 0, position, caught_up=True)
        with db.bound_cursor() as bound:
            bound.execute(
                _BATCH_SQL,
                [position, horizon, limit, limit, horizon, names, list(METRICS), owned, positions, count],
            )
            fetched = bound.fetchall()
        transactions, upto = int(fetched[0][0]), int(fetched[0][1])
        rows = [ReadingRow(*row[2:]) for row in fetched if row[2] is not None]
        if transactions:
            for processor in processors:
                processor.process(rows, now=now)
    # A partition already past `upto` (taken over from an engine that was ahead) stayed put.
    return Batch(transactions, len(rows), min(max(p, upto) for p in positions), transactions < limit)


def _cursors_lock(cursor: Any, names: list[str]) -> dict[str, int]:
    cursor.execute(
        "SELECT name, position FROM telemetry_enginecursor WHERE name = ANY(%s) ORDER BY name FOR UPDATE", [names]
    )
    return dict(cursor.fetchall())


def partition_cursors_ensure(cursor: Any, partitions: int) -> None:
    """Make the cursors of `partitions` partitions exist, moving the work from any other set
    (the single cursor of engines before partitions, or another partition count) without
    skipping or repeating any: every new cursor starts at the furthest old position, which is
    exact only if no ingest transaction lies between the old positions (always true for one
    cursor). Otherwise it refuses: the old engines must catch up with ingest stopped first."""
    names = [engine_cursor_name(p, partitions) for p in range(partitions)]
    cursor.execute("SELECT count(*) FROM telemetry_enginecursor WHERE name = ANY(%s)", [names])
    if cursor.fetchone()[0] == partitions:
        return
    # Blocks other engines' batches (their FOR UPDATE) until this transaction ends; plain reads go on.
    cursor.execute("LOCK TABLE telemetry_enginecursor IN EXCLUSIVE MODE")
    cursor.execute(
        "SELECT name, position FROM telemetry_enginecursor WHERE name = %s OR name LIKE %s",
        [ENGINE_CURSOR, f"{ENGINE_CURSOR}:%"],
    )
    old = dict(cursor.fetchall())
    if all(name in old for name in names) and len(old) == partitions:
        return  # another engine converted meanwhile
    start = max(old.values(), default=0)
    if old and min(old.values()) < start:
        cursor.execute(
            "SELECT count(*) FROM telemetry_ingest_log WHERE txid >= %s AND txid < %s", [min(old.values()), start]
        )
        if cursor.fetchone()[0]:
            raise ImproperlyConfigured(
                f"PERFUSE_ENGINE_PARTITIONS={partitions}: the engine cursors {sorted(old)} are at different "
                "positions with ingest transactions between them; run the engines with the previous partition "
                "count until they are caught up with ingest stopped, then change it"
            )
    cursor.execute("DELETE FROM telemetry_enginecursor WHERE name = ANY(%s)", [[n for n in old if n not in names]])
    cursor.execute(
        "INSERT INTO telemetry_enginecursor (name, position, updated_at) SELECT unnest(%s::text[]), %s, now() "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
        [names, start],
    )
    log.info("engine cursors %s replaced by %d partitions at %s", sorted(old) or "(none)", partitions, start)


def engine_tick(processors: Sequence[Processor], *, now: dt.datetime) -> None:
    with transaction.atomic():
        for processor in processors:
            processor.tick(now=now)


def engine_tick_local(processors: Sequence[Processor], *, now: dt.datetime) -> None:
    """The loop of an engine without the timer lock: only the processors' `tick_local` hooks."""
    with transaction.atomic():
        for processor in processors:
            hook = getattr(processor, "tick_local", None)
            if hook is not None:
                hook(now=now)


def storage_housekeeping(*, now: dt.datetime) -> list[str]:
    """Plain PostgreSQL: partitions for the coming days and for late rows parked in the default
    partition (storage.partitions_upkeep). Both backends: forget ingest-log rows the engine
    processed a while ago."""
    created: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        if not storage.timescale_in_use():
            created = storage.partitions_upkeep(cursor, now=now, max_age_days=settings.PERFUSE_INGEST_MAX_AGE_DAYS)
        cursor.execute(
            "DELETE FROM telemetry_ingest_log WHERE created_at < %s AND txid < %s",
            [now - INGEST_LOG_KEEP, min(engine_positions(cursor))],
        )
    return created


_ROLLUP_COLUMNS = "patient_id, device_id, metric, bucket, n, value_sum, value_min, value_max, quality_sum, quality_n"
_ROLLUP_TYPES = (
    "patient_id bigint, device_id bigint, metric text, bucket timestamptz, n bigint, value_sum float8, "
    "value_min float8, value_max float8, quality_sum float8, quality_n bigint"
)


def _rollup_upsert(table: str) -> str:
    return f"""
        INSERT INTO {table} AS r ({_ROLLUP_COLUMNS})
        SELECT {_ROLLUP_COLUMNS} FROM json_to_recordset(%s::json) AS p({_ROLLUP_TYPES})
        ON CONFLICT ON CONSTRAINT {table}_key DO UPDATE SET
            n = r.n + excluded.n,
            value_sum = r.value_sum + excluded.value_sum,
            value_min = least(r.value_min, excluded.value_min),
            value_max = greatest(r.value_max, excluded.value_max),
            quality_sum = r.quality_sum + excluded.quality_sum,
            quality_n = r.quality_n + excluded.quality_n"""


# Every resolution's partials in one statement (one round trip a batch, whatever the resolutions),
# each as one JSON document: orjson writes it in C, where psycopg would adapt ten arrays element
# by element in Python (the costliest part of a batch, measured). JSON numbers keep the floats
# exact: orjson writes the shortest text that reads back as the same double.
_ROLLUPS_SQL = (
    "WITH "
    + ", ".join(f"rollup_{r} AS ({_rollup_upsert(f'telemetry_rollup_{r}')})" for r in BUCKET_SECONDS)
    + " SELECT 1"
)


class RollupProcessor:
    """Plain PostgreSQL: fold new readings into telemetry_rollup_{1m,1h} as mergeable partials
    (count, sums, min, max), so a late or out-of-order reading just adds to its bucket."""

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        if not rows or storage.timescale_in_use():
            return
        params = [orjson.dumps(self._partials(resolution, rows)).decode() for resolution in BUCKET_SECONDS]
        # Prepared once (db.bound_cursor): the server plans this statement of two upserts once, not
        # on every batch, and the documents go as parameters instead of quoted into its text.
        with db.bound_cursor() as cursor:
            cursor.execute(_ROLLUPS_SQL, params)

    def tick(self, *, now: dt.datetime) -> None:
        return None

    @staticmethod
    def _partials(resolution: str, rows: list[ReadingRow]) -> list[dict[str, Any]]:
        """The batch's partials of one resolution, as the records of _ROLLUP_TYPES."""
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
        names = _ROLLUP_COLUMNS.split(", ")
        return [dict(zip(names, (*key, *values), strict=True)) for key, values in partials.items()]


# The engine's view of the stream's members, from one read of pg_locks: how many engines hold the
# membership lock (shared), and which partitions are owned by anyone (this engine included).
_MEMBERS_SQL = """
    SELECT count(*) FILTER (WHERE objsubid = 1 AND classid = %(member_class)s::oid AND objid = %(member_id)s::oid
                            AND mode = 'ShareLock'),
           coalesce(array_agg(objid::bigint) FILTER (WHERE objsubid = 2 AND classid = %(partition_class)s::oid),
                    '{}')
    FROM pg_locks
    WHERE locktype = 'advisory' AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class Engine:
    """The run loop: membership, partition ownership, batches, ticks, housekeeping, clean stop."""

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
        self.coalesce = settings.PERFUSE_ENGINE_COALESCE_MS / 1000.0
        self.clock = clock
        self.stop_event = threading.Event()
        self._housekeeping_due = dt.datetime.min.replace(tzinfo=dt.UTC)
        # False: poll only (a connection pooler in transaction mode, e.g. PgBouncer, cannot LISTEN).
        self.listening = listen
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_down = False
        self.partitions = engine_partitions()
        self.owned: set[int] = set()
        self.timer_owner = False
        self.peers = 1  # engines in the stream, this one included, at the last rebalance
        self._rebalance_due = 0.0  # time.monotonic(); 0: at the next loop
        self._timers_due = 0.0  # time.monotonic() of the next tick

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
            first = list(self._listener.notifies(timeout=timeout, stop_after=1))
            if not first:
                return False
            # The burst behind it: one loop for all.
            payloads = {n.payload for n in first} | {n.payload for n in self._listener.notifies(timeout=0)}
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection (%s); reconnecting", exc)
            self._close_listener()
            return False
        if ENGINES_CHANGED in payloads:
            self._rebalance_due = 0.0
        return True

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def acquire_ownership(self) -> bool:
        """Wait until this process is a member of the stream (the shared lock); False if asked to
        stop first. Partitions and the timer lock are taken by `rebalance`."""
        announced = False
        while not self.stop_event.is_set():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock_shared(%s)", [ADVISORY_LOCK_KEY])
                if cursor.fetchone()[0]:
                    self._announce()
                    self._rebalance_due = 0.0
                    return True
            if not announced:
                log.info("another engine holds the stream; waiting for it to stop")
                announced = True
            self.stop_event.wait(1.0)
        return False

    def _announce(self) -> None:
        """Wake the other engines so they count their peers now (a NOTIFY outside a transaction
        is sent at once)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [storage.INGEST_CHANNEL, ENGINES_CHANGED])

    def rebalance(self) -> None:
        """Own a fair share of the partitions, ceil(P / engines): give up the surplus (after the
        last batch committed: between loops no transaction is open), take free ones up to the
        share, and take the timer lock if nobody holds it. A dead engine's session locks are gone
        with its backend, so its partitions show up free here."""
        with connection.cursor() as cursor:
            cursor.execute(
                _MEMBERS_SQL,
                {
                    "member_class": ADVISORY_LOCK_KEY >> 32,
                    "member_id": ADVISORY_LOCK_KEY & 0xFFFF_FFFF,
                    "partition_class": PARTITION_LOCK_CLASS,
                },
            )
            members, held = cursor.fetchone()
            self.peers = max(1, int(members))
            share = math.ceil(self.partitions / self.peers)
            if len(self.owned) > share:
                surplus = sorted(self.owned)[share:]
                for partition in surplus:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [PARTITION_LOCK_CLASS, partition])
                self.owned -= set(surplus)
                self._forget()
                self._announce()
                log.info("engine gave up partitions %s (%d engines)", surplus, self.peers)
            elif len(self.owned) < share:
                taken = []
                for partition in sorted(set(range(self.partitions)) - set(held) - self.owned):
                    if len(self.owned) >= share:
                        break
                    cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [PARTITION_LOCK_CLASS, partition])
                    if cursor.fetchone()[0]:
                        self.owned.add(partition)
                        taken.append(partition)
                if taken:
                    log.info("engine took partitions %s (%d engines)", taken, self.peers)
            if not self.timer_owner:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [TIMER_LOCK_KEY])
                self.timer_owner = bool(cursor.fetchone()[0])
                if self.timer_owner:
                    log.info("engine runs the timers")
        self._rebalance_due = time.monotonic() + REBALANCE_EVERY_SECONDS

    def _forget(self) -> None:
        for processor in self.processors:
            hook = getattr(processor, "forget", None)
            if hook is not None:
                hook()

    def _lost_locks(self) -> None:
        """The session is gone, and with it every lock: start over as a newcomer."""
        if self.owned:
            self._forget()
        self.owned = set()
        self.timer_owner = False
        self._rebalance_due = 0.0

    def loop_once(self) -> Batch:
        if time.monotonic() >= self._rebalance_due:
            self.rebalance()
        now = self.clock()
        if self.timer_owner and now >= self._housekeeping_due:
            created = storage_housekeeping(now=now)
            if created:
                log.info("created partitions %s", ", ".join(created))
            self._housekeeping_due = now + HOUSEKEEPING_EVERY
        try:
            batch = engine_batch(self.processors, now=now, partitions=sorted(self.owned))
        finally:
            # Timers (no-data, escalation) run even when a batch failed: they must not wait on it.
            if time.monotonic() >= self._timers_due:
                self._timers_due = time.monotonic() + TIMERS_EVERY_SECONDS
                if self.timer_owner:
                    engine_tick(self.processors, now=self.clock())
                else:
                    engine_tick_local(self.processors, now=self.clock())
        return batch

    def _coalesce(self, started: float) -> None:
        """Woken right after a batch that had readings (a busy stream): let the next loop start no
        sooner than `coalesce` after the last one did, so commits arriving hundreds a second
        (a transaction per HTTP request) share loops, whose fixed cost (cursors, timers, the
        processors' per-batch reads) would otherwise be paid per commit. A commit after a quiet
        spell is processed at once."""
        remaining = started + self.coalesce - time.monotonic()
        if remaining > 0:
            self.stop_event.wait(remaining)

    def _wait_seconds(self) -> float:
        """Alone with every partition and the timers, nothing can need taking over: wait the
        whole interval. Otherwise at most until the next rebalance, to notice a dead peer."""
        if self.peers <= 1 and self.timer_owner and len(self.owned) == self.partitions:
            return self.interval
        return min(self.interval, max(0.0, self._rebalance_due - time.monotonic()))

    def run(self) -> None:
        if not self.acquire_ownership():
            return
        with transaction.atomic(), connection.cursor() as cursor:
            partition_cursors_ensure(cursor, self.partitions)
        # LISTEN before the first loop: a commit after that loop's snapshot is then announced.
        if self.listening:
            self.listen()
        log.info("engine started with %s", ", ".join(type(p).__name__ for p in self.processors) or "no processors")
        failures = 0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                batch = self.loop_once()
            except (OperationalError, InterfaceError):
                # The connection (and with it our locks) is gone: reconnect and join the stream again.
                log.exception("database connection lost; reconnecting")
                connection.close()
                self._lost_locks()
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
            if batch.caught_up and self.wait_for_commit(self._wait_seconds()) and batch.readings:
                self._coalesce(started)
        # Ending the session releases every lock (also when the connection is already gone); the
        # others are told so they take the partitions over at once.
        self._leave()
        self._close_listener()
        log.info("engine stopped")

    def _leave(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock_all()")
            self._announce()
        except (OperationalError, InterfaceError):
            pass
        connection.close()
