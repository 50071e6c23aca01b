"""The one publisher (config.live): after commit, in commit order, from sync and async code, never
raising and never growing without bound while the channel layer fails or hangs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from config import live
from config.live import SessionRevokedFrame

pytestmark = pytest.mark.django_db(transaction=True)


def _frame(n: int) -> SessionRevokedFrame:
    return SessionRevokedFrame(session_key=f"s{n}")


async def _listen(group: str) -> str:
    channel = await get_channel_layer().new_channel()
    await get_channel_layer().group_add(group, channel)
    return channel


async def _keys(channel: str, count: int) -> list[str]:
    layer = get_channel_layer()
    return [(await asyncio.wait_for(layer.receive(channel), timeout=5))["session_key"] for _ in range(count)]


class Rolledback(Exception):
    pass


def _sync_writes() -> None:
    with transaction.atomic():
        live.publish_after_commit(["g.sync"], _frame(1))
        live.publish_after_commit(["g.sync"], _frame(2))
    with pytest.raises(Rolledback), transaction.atomic():
        live.publish_after_commit(["g.sync"], _frame(3))
        raise Rolledback
    live.publish_after_commit(["g.sync"], _frame(4))  # autocommit: at once


async def test_sync_callers_publish_after_commit_in_order_and_never_after_a_rollback() -> None:
    channel = await _listen("g.sync")
    await sync_to_async(_sync_writes)()
    assert await sync_to_async(live.publish_flush)()
    assert await _keys(channel, 3) == ["s1", "s2", "s4"]  # in commit order, so s3 never left


async def test_async_callers_publish_at_once_in_order() -> None:
    channel = await _listen("g.async")
    for n in range(50):
        live.publish_after_commit(["g.async"], _frame(n))
    assert await _keys(channel, 50) == [f"s{n}" for n in range(50)]


class _FailingLayer:
    def __init__(self, *, hang: bool) -> None:
        self.hang, self.calls = hang, 0

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()  # a Redis that accepts the connection and never answers
        raise ConnectionError("redis away")


@pytest.mark.parametrize("hang", [False, True])
async def test_a_failing_or_hanging_layer_never_raises_and_frames_flow_again(
    monkeypatch: Any, caplog: Any, hang: bool
) -> None:
    broken = _FailingLayer(hang=hang)
    monkeypatch.setattr(live, "PUBLISH_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(live, "get_channel_layer", lambda: broken)
    with caplog.at_level(logging.WARNING, logger="config.live"):
        live.publish_after_commit(["g.broken"], _frame(1))  # does not raise
        assert await sync_to_async(live.publish_flush)()  # given up, not stuck
    assert broken.calls == 1
    assert ("timed out" if hang else "failed") in caplog.text
    monkeypatch.undo()
    channel = await _listen("g.broken")
    live.publish_after_commit(["g.broken"], _frame(2))
    assert await _keys(channel, 1) == ["s2"]


async def test_a_full_queue_drops_its_oldest_frames(monkeypatch: Any) -> None:
    monkeypatch.setattr(live, "MAX_QUEUED_FRAMES", 3)
    publisher = live._Publisher()
    queue: asyncio.Queue[live.Item] = asyncio.Queue()
    for n in range(5):
        publisher._put(queue, (["g"], _frame(n)))
    kept = [queue.get_nowait()[1] for _ in range(queue.qsize())]
    assert [f.session_key for f in kept] == ["s2", "s3", "s4"]


async def test_a_batch_reaches_every_group_as_group_send_would_in_order() -> None:
    """The pipelined batch (one round trip per shard) against `publish_now` (a `group_send` per
    group): the same messages, in the same order, on every group's channel."""
    layer = get_channel_layer()
    groups = [f"g.batch.{n}" for n in range(6)]  # spread over the layer's shards
    batch: list[live.Item] = [([groups[n % 6], groups[(n + 1) % 6]], _frame(n)) for n in range(40)]
    assert live._pubsub_shards(layer, batch) is not None  # the pipelined path, not the fallback
    received = {}
    for way in ("group_send", "batch"):
        channels = {group: await _listen(group) for group in groups}
        if way == "batch":
            await live.publish_batch(batch)
        else:
            for item_groups, frame in batch:
                await live.publish_now(item_groups, frame)
        received[way] = {
            group: [
                await asyncio.wait_for(layer.receive(channel), timeout=5)
                for _ in range(sum(group in item_groups for item_groups, _ in batch))
            ]
            for group, channel in channels.items()
        }
    assert received["batch"] == received["group_send"]
    assert received["batch"]["g.batch.1"][:2] == [msgspec.to_builtins(_frame(0)), msgspec.to_builtins(_frame(1))]


async def test_frames_queued_together_are_sent_together_in_order() -> None:
    channel = await _listen("g.together")
    live._publisher.submit_all([(["g.together"], _frame(n)) for n in range(30)])
    assert await sync_to_async(live.publish_flush)()
    assert await _keys(channel, 30) == [f"s{n}" for n in range(30)]


async def test_a_batch_larger_than_one_call_is_split_in_order(monkeypatch: Any) -> None:
    monkeypatch.setattr(live, "_CALL_BYTES", 64)  # a frame or two per script call
    channel = await _listen("g.split")
    await live.publish_batch([(["g.split"], _frame(n)) for n in range(25)])
    assert await _keys(channel, 25) == [f"s{n}" for n in range(25)]


def _frames() -> list[live.Frame]:
    from telemetry import events

    points = [
        events.PointOut(t="2026-12-03T11:00:00.010Z", metric="tissue_o2", value=55.25, quality=0.93, seq=2**40 + 1),
        events.PointOut(t="2026-12-03T11:00:00.020Z", metric="tissue_o2", value=-1e-3, quality=None, seq=7),
    ]
    ranges = [events.SeqRange(device="dev-ü", first=7, last=2**40 + 1)]
    mark = events.AnnotationMark(id=3, kind="firmware", t="2026-12-03T11:00:00.000Z", text="Firmware 1 → 2")
    return [
        events.ReadingBatchFrame(patient="p-1", ranges=ranges, points=points * 300),  # past 64 kB: long arrays
        events.AnnotationAddedFrame(patient="p-1", annotation=mark),
        SessionRevokedFrame(),  # its default left out, as to_builtins leaves it out
        SessionRevokedFrame(session_key="s" * 300),
    ]


def test_frames_are_written_byte_for_byte_as_the_layers_serializer_writes_them() -> None:
    """The shortcut (msgspec's msgpack from the Struct) against the layer's own serializer."""
    layer = get_channel_layer()
    serialize = live._serializer(layer)
    assert serialize == live._MSGPACK.encode  # the configured layer takes the shortcut
    for frame in _frames():
        assert serialize(frame) == layer.serialize(msgspec.to_builtins(frame))


def test_an_encrypting_layer_serializes_frames_itself() -> None:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1"], symmetric_encryption_keys=["a secret"])
    serialize = live._serializer(layer)
    assert serialize != live._MSGPACK.encode
    for frame in _frames():
        payload = serialize(frame)
        assert payload != live._MSGPACK.encode(frame)  # encrypted
        assert layer.deserialize(payload) == msgspec.to_builtins(frame)
