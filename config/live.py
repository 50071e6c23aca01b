"""Live frames: the one publisher, the group names, the one time format and the frame base type.

Frames are hints, rows are the truth. The channel layer is at-most-once, so a frame may be lost;
browsers detect that (seq gaps, `resync`, reconnect) and refetch rows over REST. Nothing here ever
fails a write.

Every frame is a `Frame` (a msgspec Struct tagged by its `type`), defined and built by the code
that owns it (telemetry.events, alerts.events, dashboard.schemas, SessionRevokedFrame below).

`publish_after_commit(groups, frame)` is the one way to publish:
- From sync code (the engine, web requests, management commands) it registers
  `transaction.on_commit`: the frame leaves once its rows are committed, and never on rollback
  (outside an atomic block Django runs the callback at once).
- From async code (the ASGI ingest fast path commits on its own psycopg connection; Django's
  transactions cannot be used in an event loop) the caller calls it after its commit and the
  frame is queued at once.
- Either way the frame joins one queue drained by one long-lived event loop in a daemon thread,
  which sends frames in the order they were queued, that is in commit order: what queued while
  the previous send was out leaves together, PUBLISHed in one script call per Redis shard
  (`publish_batch`); a writer with many frames at once (a group commit) hands them over
  together (`publish_all_after_commit`). The writer never waits for Redis. Measured here,
  `async_to_sync(publish)` per frame from a plain thread (an event loop and a Redis connection
  per call) cost tens of milliseconds per frame and stalled the alarm engine during bursts (a
  gateway going silent raises many no-data alarms at once); a task per request on the caller's
  loop (the ingest path before) could pile up without end while Redis hung.
- It never raises: a layer error is logged and the frame dropped; a send that hangs is abandoned
  after PUBLISH_TIMEOUT_SECONDS; the queue holds at most MAX_QUEUED_FRAMES and drops its oldest
  frame when full, so a Redis that hangs cannot grow the process's memory without end.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.serializers import MsgPackSerializer
from django.db import transaction

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
# A frame is a few kB (a reading batch of 500 points about 60 kB); the bound matters only while
# Redis hangs, and is far above what a burst of alarms (one frame each) queues while Redis is up.
MAX_QUEUED_FRAMES = 5000
EXIT_FLUSH_SECONDS = 2.0


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Base of every live frame: one JSON object whose `type` is the subclass's tag. Decoding
    refuses unknown fields, so tests that decode what was sent catch a frame drifting."""


class SessionRevokedFrame(Frame, tag="session.revoked"):
    """On `user.<id>`: the session `session_key` ended (logout, idle expiry), or every session of
    the user when it is None (logout everywhere, deactivation). `/ws/session` tells its page with
    a keyless one."""

    session_key: str | None = None


# iso() runs once per point of every published reading batch (500 per ingest request), where
# datetime.isoformat was a tenth of a Daphne's time under load: the text up to the second is
# cached per second and the milliseconds come from a table. Readings of one batch share a few
# seconds, so the cache hits nearly always; it is emptied when it grows past its bound.
_MILLIS = tuple(f".{i:03d}Z" for i in range(1000))
_SECOND_TEXT: dict[int, str] = {}
_SECOND_TEXT_MAX = 4096
# The zones psycopg gives a timestamptz of a server whose TimeZone is UTC (ZoneInfo caches one
# instance per key): times in them need no conversion.
_UTC_ZONES = frozenset({dt.UTC, ZoneInfo("UTC"), ZoneInfo("Etc/UTC")})


def iso(t: dt.datetime) -> str:
    """The one time format of live frames and of the chart and alarm APIs: UTC, milliseconds, 'Z'
    (ISO-8601 strings of one format sort as times): what
    `t.astimezone(UTC).isoformat(timespec="milliseconds")` gives with 'Z' for '+00:00'."""
    if t.tzinfo not in _UTC_ZONES:
        t = t.astimezone(dt.UTC)
    key = t.toordinal() * 86400 + t.hour * 3600 + t.minute * 60 + t.second
    head = _SECOND_TEXT.get(key)
    if head is None:
        if len(_SECOND_TEXT) >= _SECOND_TEXT_MAX:
            _SECOND_TEXT.clear()
        head = _SECOND_TEXT[key] = t.replace(microsecond=0, tzinfo=None).isoformat()
    return head + _MILLIS[t.microsecond // 1000]


# ---- group names -------------------------------------------------------------------------


def patient_group(pseudonym: str) -> str:
    """Everything about one patient: readings, marks, alarm transitions (the chart's socket)."""
    return f"patient.{pseudonym}"


def ward_group(ward_code: str) -> str:
    """Readings and alarm transitions of one ward's patients (the overview's socket)."""
    return f"ward.{ward_code}"


def user_group(user_id: int) -> str:
    """Every socket of one staff user joins this, so logout/expiry can close them all."""
    return f"user.{user_id}"


def alarms_group() -> str:
    """Every alarm transition, for the alarm console (consumers filter by the viewer's scope)."""
    return "alarms"


def alarms_user_group(user_id: int) -> str:
    """Alarm notifications meant for one staff member (their alarm consoles join it)."""
    return f"alarms.user.{user_id}"


# ---- publishing --------------------------------------------------------------------------

Message = Mapping[str, Any]


async def publish_now(groups: Sequence[str], frame: Frame | Message) -> None:
    """Send one frame to several groups from async code, now; never raises. The publisher's loop
    sends every queued frame through it (tests use it to inject frames)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = msgspec.to_builtins(frame) if isinstance(frame, Frame) else dict(frame)
    for group in groups:
        try:
            await layer.group_send(group, message)
        except Exception:  # the live layer is best effort by design
            log.warning("live publish to %s failed", group, exc_info=True)


Item = tuple[Sequence[str], Frame]

# At most this many queued frames leave in one batch (one pipelined round trip per Redis shard).
MAX_BATCH_FRAMES = 500


async def publish_batch(items: Sequence[Item]) -> None:
    """Send several frames, each to its groups, from async code, now; never raises.

    With the Redis pub/sub layer every frame of the batch is serialized once and PUBLISHed to each
    of its groups in one round trip per shard connection (one script call), in queue order: what the
    consumers receive is exactly what `group_send` would have sent (the layer's own channel names,
    shards and serializer), and each group keeps the order of its frames (a group lives on one
    shard). Measured (docs/benchmarks.md, Fleet), a `group_send` per group and frame (a round trip
    and a socket write each) cost the MQTT bridge about a third of its CPU per reading. Any other
    layer gets `publish_now` per frame."""
    layer = get_channel_layer()
    if layer is None or not items:
        return
    shards = _pubsub_shards(layer, items)
    if shards is None:
        for groups, frame in items:
            await publish_now(groups, frame)
        return
    results = await asyncio.gather(*(_shard_publish(shard, sends) for shard, sends in shards), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):  # the live layer is best effort by design
            log.warning("live publish of %d frames failed", len(items), exc_info=result)


def _pubsub_shards(layer: Any, items: Sequence[Item]) -> list[tuple[Any, list[tuple[str, bytes]]]] | None:
    """The PUBLISHes of `items` grouped by the layer's shard connection, or None when the layer is
    not channels_redis's pub/sub layer (or its internals are not the ones this was written for)."""
    if not isinstance(layer, RedisPubSubChannelLayer):
        return None
    try:
        loop_layer = layer._get_layer()
        channel_name, shard_of = loop_layer._get_group_channel_name, loop_layer._get_shard
        serialize = _serializer(layer)
        by_shard: dict[int, tuple[Any, list[tuple[str, bytes]]]] = {}
        for groups, frame in items:
            payload = serialize(frame)
            for group in groups:
                channel = channel_name(group)
                shard = shard_of(channel)
                by_shard.setdefault(id(shard), (shard, []))[1].append((channel, payload))
    except AttributeError:
        log.warning("channels_redis internals changed: publishing frame by frame", exc_info=True)
        return None
    return list(by_shard.values())


_MSGPACK = msgspec.msgpack.Encoder()


def _serializer(layer: RedisPubSubChannelLayer) -> Callable[[Frame], bytes]:
    """How the layer's serializer would write a frame, made cheaper where that is exact: its plain
    msgpack (no encryption, no random prefix) of `msgspec.to_builtins(frame)` is the bytes msgspec
    writes from the Struct directly, without the dicts in between (a 500-point reading batch:
    ≈ 0.05 against 0.3 ms). Any other configuration goes through the layer's own serializer."""
    serializer = layer._serializer
    if isinstance(serializer, MsgPackSerializer) and serializer.crypter is None and not serializer.random_prefix_length:
        return _MSGPACK.encode
    return lambda frame: bytes(layer.serialize(msgspec.to_builtins(frame)))


# Every PUBLISH of a batch for one shard in one script call: one reply to parse instead of one
# per PUBLISH, which redis-py parses in Python (measured: ~3 against ~22 µs of CPU per PUBLISH).
# Subscribers receive exactly what PUBLISH sends them, in the order of ARGV.
_PUBLISH_ALL = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end return #ARGV / 2"
# A call carries at most this many bytes of frames (a burst of big reading batches is split).
_CALL_BYTES = 1 << 20


async def _shard_publish(shard: Any, sends: list[tuple[str, bytes]]) -> None:
    async with shard._lock:  # the shard's own lock, as its `publish` takes it
        shard._ensure_redis()
        script = shard._redis.register_script(_PUBLISH_ALL)
        args: list[str | bytes] = []
        size = 0
        for channel, payload in sends:
            if args and size + len(payload) > _CALL_BYTES:
                await script(keys=[], args=args)
                args, size = [], 0
            args += (channel, payload)
            size += len(payload)
        await script(keys=[], args=args)


class _Publisher:
    """One queue, one event loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Item] | None = None
        self._dropped = 0

    def _start(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[Item]]:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                queue: asyncio.Queue[Item] = asyncio.Queue()
                threading.Thread(target=self._run, args=(loop, queue), name="live-publisher", daemon=True).start()
                self._loop, self._queue = loop, queue
            assert self._queue is not None
            return self._loop, self._queue

    def _run(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Item]) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._drain(queue))

    async def _drain(self, queue: asyncio.Queue[Item]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH_FRAMES and not queue.empty():  # what queued meanwhile goes along
                batch.append(queue.get_nowait())
            try:
                await asyncio.wait_for(publish_batch(batch), PUBLISH_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("live publish of %d frames (%s…) timed out", len(batch), type(batch[0][1]).__name__)
            except Exception:  # frames that cannot be sent must not stop the ones after them
                log.warning("live publish of %d frames failed", len(batch), exc_info=True)
            finally:
                for _ in batch:
                    queue.task_done()

    def _put(self, queue: asyncio.Queue[Item], item: Item) -> None:
        """In the publisher's loop: queue the frame, dropping the oldest one when full."""
        if queue.qsize() >= MAX_QUEUED_FRAMES:
            queue.get_nowait()
            queue.task_done()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("live publisher full: %d frames dropped so far (Redis slow or away?)", self._dropped)
        queue.put_nowait(item)

    def _put_all(self, queue: asyncio.Queue[Item], items: list[Item]) -> None:
        for item in items:
            self._put(queue, item)

    def submit(self, groups: Sequence[str], frame: Frame) -> None:
        self.submit_all([(groups, frame)])

    def submit_all(self, items: Sequence[Item]) -> None:
        """Queue frames in order with one wake-up of the publisher's loop (not one per frame)."""
        if not items:
            return
        try:
            loop, queue = self._start()
            copied: list[Item] = [(list(groups), frame) for groups, frame in items]
            loop.call_soon_threadsafe(self._put_all, queue, copied)
        except Exception:  # e.g. the interpreter is shutting down: hints lost, never a failed write
            log.warning("live publish of %d frames not queued", len(items), exc_info=True)

    def flush(self, timeout: float) -> bool:
        """Wait until every frame queued so far was sent (or given up); False on timeout."""
        with self._lock:
            loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return True
        done = asyncio.run_coroutine_threadsafe(queue.join(), loop)
        try:
            done.result(timeout)
        except TimeoutError:
            done.cancel()
            return False
        return True


_publisher = _Publisher()


def publish_after_commit(groups: Sequence[str], frame: Frame) -> None:
    """Send `frame` to `groups` once the caller's transaction committed; never blocks, never raises.

    Sync callers: after the current Django transaction commits (at once outside one). Async
    callers (no Django transaction can be open in an event loop): call it after your commit."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        transaction.on_commit(partial(_publisher.submit, groups, frame))
    else:
        _publisher.submit(groups, frame)


def publish_all_after_commit(items: Sequence[Item]) -> None:
    """`publish_after_commit` for several frames at once, in order (a group commit's frames): one
    hand-over to the publisher's thread instead of one per frame."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        transaction.on_commit(partial(_publisher.submit_all, list(items)))
    else:
        _publisher.submit_all(items)


def publish_flush(timeout: float = 10.0) -> bool:
    """Block until the frames queued so far have been sent; False when `timeout` ran out.
    For processes that end (one-shot management commands, tests), never for a writer."""
    return _publisher.flush(timeout)


# A one-shot command (a discharge, a key revocation) exits right after its commit: give its frames
# a moment to leave before the daemon thread dies with the interpreter.
atexit.register(publish_flush, EXIT_FLUSH_SECONDS)
