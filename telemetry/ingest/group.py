"""Group commit: the messages that arrive together, from any number of devices, in one transaction.

A device sending one reading a second makes a message a second; stored one transaction each, the
fixed cost of a transaction (its round trips, its commit) is paid per message. Here a door (the
MQTT bridge, telemetry/mqtt_bridge.py) hands messages to a `GroupWriter`, which gathers them for
at most PERFUSE_INGEST_GROUP_WINDOW_MS after the first one arrived or until
PERFUSE_INGEST_GROUP_MAX_ROWS readings, and then runs the pipeline's steps over the whole group:

    prepare (per message, no I/O: credentials' shape and clock, the body parsed)
    → one query for every key of the group, each signature verified with its own key (401)
    → envelope (400), device/key and topic/key match (403), size (413), per message
    → one Redis round trip for every message's rate limit (429)
    → item-by-item validation, per message
    → `group_store`: ONE transaction for all admitted messages (the devices' state rows locked in
      device order, so concurrent groups of several bridges cannot deadlock; the readings COPYed
      and moved with `INSERT … ON CONFLICT DO NOTHING RETURNING`, one engine work-queue row per
      device; every admitted message's signed batch kept (telemetry/ingest/keep.py) in one statement;
      provenance per message, in arrival order)
    → after the commit: one answer per message and the live frames, one per patient and device.

Idempotency and counts are exactly those of one request at a time (telemetry/ingest/store.py): a
reading already stored, or sent twice within the group, is a duplicate of the later message (the
first message in arrival order that carries it is the one credited), and `accepted` counts what
this transaction committed for that message. A message refused by a step gets its own answer and
never reaches the transaction; should the transaction itself fail for a reason of content rather
than of the database being unavailable (validation lets nothing through that PostgreSQL refuses,
so this is a safety net), the group is stored again one message per transaction so that only the
culprit fails. The database being down answers 503 `storage_unavailable` to what was not
committed, as HTTP does; nothing is counted that was not committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.conf import settings
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout

from telemetry import db, ratelimit
from telemetry.ingest import pipeline, publish
from telemetry.ingest.answers import Answer, IngestError, error, storage_unavailable
from telemetry.ingest.auth import Credentials, DeviceKeyRow, credentials_check, keys_lookup, signature_verify
from telemetry.ingest.keep import Door, KeptBatch, Signed, batches_keep
from telemetry.ingest.provenance import AnnotationRow, Span, provenance_record, state_after
from telemetry.ingest.store import STAGE_COLUMNS, Stored, copy_text
from telemetry.ingest.validate import Row, batch_check, parse_batch, validate_readings
from telemetry.schemas import BatchIn, Rejection, TypedBatchIn

log = logging.getLogger(__name__)

# Arrays go in binary (%b), much cheaper to dump than psycopg's text format (telemetry/ingest/keep.py).
# The devices' state rows, locked (created if needed) in device order: two groups sharing devices
# then wait for each other instead of deadlocking. RETURNING: each device's firmware and
# calibration before this group.
_LOCK_DEVICES_SQL = (
    "INSERT INTO telemetry_devicestate (device_id, firmware, calibration_id, last_seen_at, last_sample_time) "
    "SELECT d, '', '', %s, h FROM unnest(%b::bigint[], %b::timestamptz[]) AS u(d, h) ORDER BY d "
    "ON CONFLICT (device_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at, "
    "last_sample_time = GREATEST(telemetry_devicestate.last_sample_time, EXCLUDED.last_sample_time) "
    "RETURNING device_id, firmware, calibration_id"
)
_SPANS_SQL = (
    "SELECT a.device_id, a.patient_id, a.start, a.end, p.pseudonym, w.code FROM telemetry_assignment a "
    "JOIN telemetry_patient p ON p.id = a.patient_id JOIN telemetry_ward w ON w.id = p.ward_id "
    "WHERE a.device_id = ANY(%b::bigint[]) AND a.start <= %s AND (a.end IS NULL OR a.end > %s) "
    "ORDER BY a.device_id, a.start"
)
_CALIBRATIONS_SQL = (
    "SELECT device_id, calibration_id, coefficients, effective_from FROM telemetry_calibration "
    "WHERE device_id = ANY(%b::bigint[]) ORDER BY device_id, effective_from"
)
# The move and one work-queue row per device for the engine, in one round trip.
_MOVE_SQL = (
    f"WITH ins AS (INSERT INTO telemetry_reading ({STAGE_COLUMNS}) SELECT {STAGE_COLUMNS} FROM ingest_stage "
    "ON CONFLICT DO NOTHING RETURNING device_id, patient_id, metric, seq, sample_time, value, signal_quality), "
    "logged AS (INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
    "SELECT device_id, min(sample_time), max(sample_time), count(*) FROM ins GROUP BY device_id) "
    "SELECT * FROM ins"
)


@dataclass
class Message:
    """One message as its door framed it."""

    body: bytes
    # The credentials under the HTTP headers' lower-case names (MQTT: the user properties).
    headers: Mapping[str, str]
    # The device its topic addresses (MQTT); None when the door has no addressing (HTTP).
    topic_device: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    token: Any = None  # the door's handle for delivering the answer (e.g. an MQTT message id)
    door: Door = "mqtt"  # kept with the signed batch (telemetry/ingest/keep.py)


@dataclass
class Prepared:
    """A message after the steps that need no I/O; a refusal is kept, answered in contract order."""

    message: Message
    credentials: Credentials | IngestError
    batch: BatchIn | TypedBatchIn | IngestError

    @property
    def readings(self) -> int:
        return len(self.batch.readings) if not isinstance(self.batch, IngestError) else 0


def message_prepare(message: Message, *, now: float | None = None) -> Prepared:
    """Credentials' shape and clock window, and the body parsed (CPU only)."""
    try:
        credentials: Credentials | IngestError = credentials_check(
            message.headers, now=time.time() if now is None else now
        )
    except IngestError as exc:
        credentials = exc
    try:
        batch: BatchIn | TypedBatchIn | IngestError = parse_batch(message.body)
    except IngestError as exc:
        batch = exc
    return Prepared(message, credentials, batch)


@dataclass
class Pending:
    """A message every refusing step admitted: its valid rows go into the group's transaction."""

    index: int  # position in the group
    key: DeviceKeyRow
    signed: Signed  # what the device signed, kept with the readings
    batch: BatchIn | TypedBatchIn
    rows: list[Row]
    rejected: list[Rejection]
    decision: ratelimit.RateDecision | None


@dataclass
class GroupStored:
    accepted: list[int]  # per pending message, what this transaction committed for it
    by_device: list[tuple[DeviceKeyRow, Stored]]  # for the live frames, one entry per device


async def group_handle(prepared: Sequence[Prepared], *, max_rows: int | None = None) -> list[Answer]:
    """Every message's answer, in order; stored in as few transactions of at most `max_rows`
    readings as arrival order allows (one, when the group was gathered under the same cap)."""
    cap = settings.PERFUSE_INGEST_GROUP_MAX_ROWS if max_rows is None else max_rows
    answers: list[Answer | None] = [None] * len(prepared)
    try:
        pool = await db.ingest_pool()
        async with pool.connection() as conn:
            admitted = await _admit(conn, prepared, answers)
            for chunk in _chunks(admitted, cap):
                await _store_and_answer(conn, chunk, answers)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        # The database is down or saturated: what was not committed gets 503 (the device resends).
        log.warning("group ingest storage unavailable: %s", exc)
    return [storage_unavailable() if answer is None else answer for answer in answers]


async def _admit(
    conn: AsyncConnection[Any], prepared: Sequence[Prepared], answers: list[Answer | None]
) -> list[Pending]:
    key_ids = sorted({p.credentials.key_id for p in prepared if isinstance(p.credentials, Credentials)})
    keys = await keys_lookup(conn, key_ids) if key_ids else {}
    candidates: list[tuple[int, DeviceKeyRow, BatchIn | TypedBatchIn]] = []
    for index, p in enumerate(prepared):
        try:
            key, batch = _refusals(p, keys)
        except IngestError as exc:
            answers[index] = exc.answer
            continue
        candidates.append((index, key, batch))
    takes = [ratelimit.Take(key.device_id, key.site, max(1, len(batch.readings))) for _, key, batch in candidates]
    decisions = await ratelimit.rates_check(db.ingest_redis(), takes, limits=pipeline.rate_limits())
    now = dt.datetime.now(dt.UTC)
    admitted: list[Pending] = []
    for (index, key, batch), decision in zip(candidates, decisions, strict=True):
        try:
            pipeline.rate_refusal(decision)
        except IngestError as exc:
            answers[index] = exc.answer
            continue
        rows, rejected = validate_readings(batch, now)
        message = prepared[index].message
        credentials = prepared[index].credentials
        assert isinstance(credentials, Credentials)  # _refusals admitted it
        signed = Signed(credentials, message.body, message.door)
        admitted.append(Pending(index, key, signed, batch, rows, rejected, decision))
    return admitted


def _refusals(p: Prepared, keys: Mapping[str, DeviceKeyRow]) -> tuple[DeviceKeyRow, BatchIn | TypedBatchIn]:
    """The steps before the rate limit, in the contract's order (the first refusal answers)."""
    if isinstance(p.credentials, IngestError):
        raise p.credentials
    key = signature_verify(keys.get(p.credentials.key_id), credentials=p.credentials, body=p.message.body)
    if p.message.topic_device is not None and p.message.topic_device != key.device_id:
        raise IngestError("device_mismatch", "the topic's device does not belong to this key")
    if isinstance(p.batch, IngestError):
        raise p.batch
    batch_check(p.batch, key=key)
    return key, p.batch


def _chunks(admitted: list[Pending], cap: int) -> list[list[Pending]]:
    """Consecutive runs of at most `cap` rows (a message larger than the cap is a run of its own)."""
    chunks: list[list[Pending]] = []
    size = 0
    for pending in admitted:
        if not chunks or (size + len(pending.rows) > cap and chunks[-1]):
            chunks.append([])
            size = 0
        chunks[-1].append(pending)
        size += len(pending.rows)
    return chunks


async def _store_and_answer(conn: AsyncConnection[Any], chunk: list[Pending], answers: list[Answer | None]) -> None:
    now = dt.datetime.now(dt.UTC)
    try:
        stored = await group_store(conn, chunk, now=now)
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        if len(chunk) == 1:
            log.exception("ingest: message could not be stored")
            answers[chunk[0].index] = error("invalid_batch", "the batch could not be stored")
            return
        log.warning("ingest group of %d failed; storing its messages one by one", len(chunk), exc_info=True)
        for pending in chunk:
            await _store_and_answer(conn, [pending], answers)
        return
    publish.group_publish(stored.by_device)
    for pending, accepted in zip(chunk, stored.accepted, strict=True):
        answers[pending.index] = pipeline.stored_answer(
            pending.batch,
            rows=pending.rows,
            rejected=pending.rejected,
            accepted=accepted,
            now=now,
            decision=pending.decision,
        )


ReadingKey = tuple[int, str, int, dt.datetime]  # device, metric, seq, sample_time: the primary key


async def group_store(conn: AsyncConnection[Any], pending: Sequence[Pending], *, now: dt.datetime) -> GroupStored:
    """Store the valid rows of every pending message in one transaction; what it committed."""
    with_rows = [p for p in pending if p.rows]
    if not with_rows:
        return GroupStored([0] * len(pending), [])
    keys = {p.key.device_pk: p.key for p in with_rows}
    newest: dict[int, dt.datetime] = {}
    for p in with_rows:
        hi = max(r.sample_time for r in p.rows)
        newest[p.key.device_pk] = max(hi, newest.get(p.key.device_pk, hi))
    devices = sorted(keys)
    lo = min(r.sample_time for p in with_rows for r in p.rows)
    hi = max(newest.values())
    async with conn.transaction(), conn.cursor() as cur:
        async with conn.cursor() as spans_cur, conn.cursor() as cal_cur:
            async with conn.pipeline():
                await cur.execute(_LOCK_DEVICES_SQL, [now, devices, [newest[d] for d in devices]])
                await spans_cur.execute(_SPANS_SQL, [devices, hi, lo])
                await cal_cur.execute(_CALIBRATIONS_SQL, [devices])
            states: dict[int, tuple[Any, ...]] = {row[0]: (row[1], row[2]) for row in await cur.fetchall()}
            spans: dict[int, list[Span]] = defaultdict(list)
            for row in await spans_cur.fetchall():
                spans[row[0]].append((row[1], row[2], row[3], row[4], row[5]))
            calibrations: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
            for row in await cal_cur.fetchall():
                calibrations[row[0]].append((row[1], row[2], row[3]))
        known = {d: {c[0]: c[1] for c in calibrations[d]} for d in devices}
        owner: dict[ReadingKey, int] = {}  # each reading credited to the first message carrying it
        payload: list[str] = []
        for n, p in enumerate(pending):
            pk = p.key.device_pk
            fresh = []
            for r in p.rows:
                reading = (pk, r.metric, r.seq, r.sample_time)
                if reading not in owner:
                    owner[reading] = n
                    fresh.append(r)
            if fresh:
                payload.append(copy_text(pk, p.batch.firmware, fresh, spans[pk], known[pk], calibrations[pk]))
        async with cur.copy(f"COPY ingest_stage ({STAGE_COLUMNS}) FROM STDIN") as copy:
            await copy.write("".join(payload))
        # Each message's signed batch, kept as readings_store keeps one (a retransmit too), sent
        # in the same round trip as the move.
        kept = [KeptBatch(p.key.device_pk, p.signed, p.rows, now) for p in with_rows]
        async with conn.cursor() as keep_cur, conn.pipeline():
            await cur.execute(_MOVE_SQL)
            await batches_keep(keep_cur, kept)
        inserted = await cur.fetchall()
        annotations = await _provenance(cur, pending, states=states, spans=spans, known=known, now=now)
    accepted = [0] * len(pending)
    per_device: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in inserted:
        accepted[owner[(row[0], row[2], row[3], row[4])]] += 1
        per_device[row[0]].append(row[1:])
    by_device = [
        (keys[d], Stored(per_device[d], {s[0]: (s[3], s[4]) for s in spans[d]}, annotations[d]))
        for d in devices
        if per_device[d] or annotations[d]
    ]
    return GroupStored(accepted, by_device)


async def _provenance(
    cur: Any,
    pending: Sequence[Pending],
    *,
    states: dict[int, tuple[Any, ...]],
    spans: dict[int, list[Span]],
    known: dict[int, dict[str, Any]],
    now: dt.datetime,
) -> dict[int, list[AnnotationRow]]:
    """Each message's provenance in arrival order, as if it came alone: the next message of the
    same device sees the firmware and calibration this one left."""
    annotations: dict[int, list[AnnotationRow]] = defaultdict(list)
    for p in pending:
        if not p.rows:
            continue
        pk = p.key.device_pk
        state = states.get(pk)
        annotations[pk] += await provenance_record(
            cur,
            key=p.key,
            firmware=p.batch.firmware,
            rows=p.rows,
            state=state,
            spans=spans[pk],
            known=known[pk],
            now=now,
        )
        states[pk] = state_after(firmware=p.batch.firmware, rows=p.rows, state=state)
        for r in p.rows:
            if r.calibration_id and r.calibration_id not in known[pk]:
                known[pk][r.calibration_id] = {}  # recorded (coefficients '{}') by provenance_record
    return annotations


# ---- the writer --------------------------------------------------------------------------

Deliver = Callable[[Message, Answer], Awaitable[None]]


class GroupWriter:
    """Gathers messages from a door and commits them in groups; `deliver` gets each answer after
    its group's commit. A group closes PERFUSE_INGEST_GROUP_WINDOW_MS after its first message
    arrived, or at PERFUSE_INGEST_GROUP_MAX_ROWS readings; messages that queued up while the
    previous group was being stored are past their window already and go at once, so the group
    grows with the load instead of the latency."""

    def __init__(self, deliver: Deliver, *, window_ms: float | None = None, max_rows: int | None = None) -> None:
        self.deliver = deliver
        self.window = (settings.PERFUSE_INGEST_GROUP_WINDOW_MS if window_ms is None else window_ms) / 1000.0
        self.max_rows = settings.PERFUSE_INGEST_GROUP_MAX_ROWS if max_rows is None else max_rows
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.groups = 0
        self.messages = 0

    def put(self, message: Message) -> None:
        self.queue.put_nowait(message)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set and the queue is drained."""
        while not (stop.is_set() and self.queue.empty()):
            group = await self._gather(stop)
            if group:
                await self._commit(group)

    async def _gather(self, stop: asyncio.Event) -> list[Prepared]:
        first = await self._next(stop, timeout=0.2)
        if first is None:
            return []
        group = [message_prepare(first)]
        rows = group[0].readings
        deadline = first.arrived + self.window
        while rows < self.max_rows:
            message: Message | None
            try:
                message = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                message = await self._next(stop, timeout=deadline - time.monotonic())
            if message is None:
                break
            prepared = message_prepare(message)
            group.append(prepared)
            rows += prepared.readings
        return group

    async def _next(self, stop: asyncio.Event, *, timeout: float) -> Message | None:
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def _commit(self, group: list[Prepared]) -> None:
        try:
            answers = await group_handle(group, max_rows=self.max_rows)
        except Exception:  # a bug must not stop the door: nothing was acknowledged, the devices resend
            log.exception("ingest group of %d failed", len(group))
            answers = [storage_unavailable()] * len(group)
        self.groups += 1
        self.messages += len(group)
        for prepared, answer in zip(group, answers, strict=True):
            try:
                await self.deliver(prepared.message, answer)
            except Exception:
                log.exception("ingest: delivering an answer failed")


# ---- the HTTP door through the same writer (PERFUSE_INGEST_HTTP_GROUP) -------------------

# Per event loop (a server runs one); the loop is kept to tell a reused id() from its own.
_http_writers: dict[int, tuple[asyncio.AbstractEventLoop, GroupWriter]] = {}
_http_tasks: set[asyncio.Task[None]] = set()


def device_handler() -> Callable[..., Awaitable[Answer]]:
    """The HTTP doors' handler of a device batch: through the group writer when
    PERFUSE_INGEST_HTTP_GROUP is on, else a transaction per request (read per request, so the
    setting can be changed under test)."""
    return http_group_handle if settings.PERFUSE_INGEST_HTTP_GROUP else pipeline.handle


async def http_group_handle(*, body: bytes, headers: Mapping[str, str]) -> Answer:
    """One HTTP request answered through this event loop's shared group writer: concurrent
    requests share a transaction. Off by default (docs/benchmarks.md has the measurement)."""
    loop = asyncio.get_running_loop()
    entry = _http_writers.get(id(loop))
    if entry is None or entry[0] is not loop:
        entry = _http_writers[id(loop)] = (loop, GroupWriter(_resolve))
        _http_tasks.add(loop.create_task(entry[1].run(asyncio.Event())))  # for the life of the loop
    future: asyncio.Future[Answer] = loop.create_future()
    entry[1].put(Message(body, headers, token=future, door="http"))
    return await future


async def _resolve(message: Message, answer: Answer) -> None:
    if not message.token.done():  # the client may have gone away
        message.token.set_result(answer)
