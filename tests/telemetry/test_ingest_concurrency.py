"""Concurrency and failure behaviour of the ingest: retransmits racing each other, acknowledged ==
committed, a Redis outage, and the live frame that follows a commit."""

from __future__ import annotations

import asyncio
import random

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import AsyncClient

from config import live
from telemetry import db as telemetry_db
from tests import factories
from tests.ingest_helpers import ago, post, query, reading_count, send, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)


async def test_concurrent_retransmits_of_one_batch_store_each_reading_once():
    dev = await make_device(patient="p-retx")
    body = factories.batch_body(dev, factories.series(1, 300), firmware="fw-1")
    client = AsyncClient()
    responses = await asyncio.gather(*(post(client, dev, body) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    results = [r.json() for r in responses]
    assert sum(r["accepted"] for r in results) == 300
    assert all(r["accepted"] + r["duplicates"] == 300 for r in results)
    assert await reading_count() == 300
    assert [r[0] for r in await stored(dev.device_id)] == list(range(1, 301))


async def test_overlapping_out_of_order_batches_of_a_new_device_race_without_errors():
    # Before the device has any state row, racing transactions must still serialise per device
    # (otherwise they can deadlock on each other's index entries and answer 5xx).
    dev = await make_device()
    items = factories.series(1, 400, start=ago(500))
    bodies = [factories.batch_body(dev, items[i : i + 200]) for i in range(0, 400, 100)]
    bodies += [factories.batch_body(dev, list(reversed(items[i : i + 200]))) for i in range(0, 400, 100)]
    client = AsyncClient()
    responses = await asyncio.gather(*(post(client, dev, b) for b in bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert sum(r.json()["accepted"] for r in responses) == 400
    assert await reading_count() == 400


async def test_readings_committed_equal_readings_acknowledged():
    rng = random.Random(7)
    devices = [await make_device(patient=f"p-ack-{i}") for i in range(3)]
    pools = {d.device_id: factories.series(1, 600, start=ago(700)) for d in devices}
    bodies = []
    for _ in range(30):
        dev = rng.choice(devices)
        start = rng.randrange(0, 550)
        items = pools[dev.device_id][start : start + rng.randrange(1, 120)]
        bodies.append((dev, factories.batch_body(dev, items)))
    client = AsyncClient()
    responses = await asyncio.gather(*(post(client, d, b) for d, b in bodies))
    assert {r.status_code for r in responses} == {200}
    acknowledged = sum(r.json()["accepted"] for r in responses)
    assert acknowledged == await reading_count()
    (logged,) = await query("SELECT coalesce(sum(accepted), 0) FROM telemetry_ingest_log")
    assert logged[0] == acknowledged


async def _drain_publishes() -> None:
    assert await sync_to_async(live.publish_flush)(timeout=10)


async def test_redis_outage_does_not_fail_ingest(settings):
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.REDIS_URL = settings.PERFUSE_RATELIMIT_REDIS_URL = dead
    settings.CHANNEL_LAYERS = {"default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": [dead]}}}
    dev = await make_device(patient="p-outage")
    response = await send(AsyncClient(), dev, factories.series(1, 50), firmware="fw-x")
    assert response.status_code == 200 and response.json()["accepted"] == 50
    assert "X-RateLimit-Limit" not in response  # limiter unavailable: admitted, not throttled
    assert len(await stored(dev.device_id)) == 50
    await _drain_publishes()  # the live publish fails quietly and promptly, it does not hang


async def test_database_outage_answers_503_with_retry_after(settings, monkeypatch):
    dev = await make_device()
    settings.PERFUSE_INGEST_POOL_TIMEOUT_SECONDS = 0.5
    monkeypatch.setattr(telemetry_db, "_conninfo", lambda: {"host": "127.0.0.1", "port": 1, "dbname": "x"})
    response = await send(AsyncClient(), dev, factories.series(1, 5))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert int(response["Retry-After"]) >= 1


async def test_live_frame_reaches_subscribed_groups_after_commit():
    dev = await make_device(patient="p-live")
    layer = get_channel_layer()
    patient_channel = await layer.new_channel()
    ward_channel = await layer.new_channel()
    await layer.group_add(live.patient_group("p-live"), patient_channel)
    await layer.group_add(live.ward_group(dev.ward_code), ward_channel)
    items = factories.series(10, 5, start=ago(10))
    response = await send(AsyncClient(), dev, items)
    assert response.json()["accepted"] == 5

    frame = await asyncio.wait_for(layer.receive(patient_channel), timeout=5)
    assert frame["type"] == "reading.batch" and frame["patient"] == "p-live"
    assert frame["ranges"] == [{"device": dev.device_id, "first": 10, "last": 14}]
    assert [p["seq"] for p in frame["points"]] == [10, 11, 12, 13, 14]
    assert frame["points"][0]["t"] == items[0]["sample_time"][:23] + "Z"
    assert {p["metric"] for p in frame["points"]} == {"tissue_o2"}
    # The frame follows the commit: the readings it announces are already readable.
    assert len(await stored(dev.device_id)) == 5
    assert (await asyncio.wait_for(layer.receive(ward_channel), timeout=5))["type"] == "reading.batch"

    # A retransmit commits nothing and so announces nothing; a firmware change is announced.
    await send(AsyncClient(), dev, items, firmware="fw-1")
    await send(AsyncClient(), dev, [factories.reading(20, ago(1))], firmware="fw-2")
    kinds = [(await asyncio.wait_for(layer.receive(patient_channel), timeout=5))["type"] for _ in range(2)]
    assert kinds == ["reading.batch", "annotation.added"]
    await _drain_publishes()
