"""Group commit (telemetry/ingest/group.py): many devices' messages in one transaction, answered
exactly as the HTTP pipeline answers them one at a time."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient

from telemetry import db as telemetry_db
from telemetry.ingest import group, pipeline
from telemetry.ingest.answers import Answer
from tests import factories
from tests.ingest_helpers import ago, post, query, reading_count, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)

Scenario = list[tuple[factories.SimDevice, bytes, dict[str, str]]]


def _headers(dev: factories.SimDevice, body: bytes, **changes: Any) -> dict[str, str]:
    signed = {name.lower(): value for name, value in dev.sign(body).items()}
    signed.update(changes)
    return {k: v for k, v in signed.items() if v is not None}


def scenario(a: factories.SimDevice, b: factories.SimDevice, c: factories.SimDevice) -> Scenario:
    """Messages exercising every outcome, in arrival order (the same for both doors)."""
    t = ago(120)
    first = factories.batch_body(
        a, [factories.reading(i, t.replace(second=i), calibration_id="cal-1") for i in range(1, 6)], firmware="fw-1"
    )
    overlap = factories.batch_body(
        a,
        [factories.reading(i, t.replace(second=i), calibration_id="cal-2") for i in range(4, 9)],
        firmware="fw-2",
    )
    mixed = factories.batch_body(
        b, [*factories.series(1, 3, start=t), factories.reading(4, t, metric="glucose")], batch_id="b-1"
    )
    twice = factories.batch_body(b, [factories.reading(10, t), factories.reading(10, t)])
    c_ok = factories.batch_body(c, factories.series(1, 2, start=t))
    big = factories.batch_body(c, factories.series(100, 60, start=t))
    messages: Scenario = [
        (a, first, _headers(a, first)),
        (b, mixed, _headers(b, mixed)),
        (a, first, _headers(a, first)),  # a retransmit in the same group
        (a, overlap, _headers(a, overlap)),  # two new, three already sent; firmware and calibration change
        (c, c_ok, _headers(c, c_ok, **{"x-perfuse-signature": _headers(a, c_ok)["x-perfuse-signature"]})),
        (c, b'{"schema": "other/1", "device_id": "x", "readings": []}', {}),
        (b, factories.batch_body(a, factories.series(20, 1)), {}),  # b signs a's batch: 403
        (c, c_ok, _headers(c, c_ok, **{"x-perfuse-key": None})),
        (b, twice, _headers(b, twice)),
        (c, c_ok, _headers(c, c_ok)),
        (a, overlap, _headers(a, overlap, **{"x-perfuse-timestamp": str(int(time.time()) - 1000)})),
        (b, mixed, _headers(b, mixed, **{"x-perfuse-key": "k_nobodyhasthis"})),
        (c, b"not json", {}),
        (c, big, _headers(c, big)),  # over the device's burst: 429
        (c, c_ok, _headers(c, c_ok)),  # the retransmit of an accepted batch
    ]
    # Signed where the headers were left empty above (the refusal is about the body).
    return [(dev, body, headers or _headers(dev, body)) for dev, body, headers in messages]


def _comparable(answer: Answer) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {k: v for k, v in answer.body.items() if k != "ingest_time"}
    headers = {k: v for k, v in answer.headers.items() if k not in ("X-RateLimit-Remaining", "X-RateLimit-Reset")}
    return answer.status, body, headers


async def _world(tag: str) -> tuple[factories.SimDevice, ...]:
    ward = await sync_to_async(factories.ward)(f"w-{tag}", site=f"site-{tag}")
    return (
        await make_device(ward.code, patient=f"p-{tag}-a"),
        await make_device(ward.code),
        await make_device(ward.code, patient=f"p-{tag}-c"),
    )


async def _annotations(device_id: str) -> list[tuple[Any, ...]]:
    return await query(
        "SELECT kind, text FROM telemetry_annotation n JOIN telemetry_device d ON d.id = n.device_id "
        "WHERE d.device_id = %s ORDER BY n.id",
        [device_id],
    )


async def test_a_group_answers_and_stores_exactly_as_http_one_at_a_time(settings):
    settings.PERFUSE_RATE_DEVICE_BURST = 50
    http_world, group_world = await _world("h"), await _world("g")
    http = [await pipeline.handle(body=body, headers=h) for _, body, h in scenario(*http_world)]
    messages = [group.Message(body, h, topic_device=dev.device_id) for dev, body, h in scenario(*group_world)]
    grouped = await group.group_handle([group.message_prepare(m) for m in messages])

    assert [_comparable(x) for x in grouped] == [_comparable(x) for x in http]
    statuses = [x.status for x in grouped]
    assert statuses == [200, 200, 200, 200, 401, 400, 403, 401, 200, 200, 401, 401, 400, 429, 200]
    assert [(x.body["accepted"], x.body["duplicates"]) for x in grouped if x.status == 200] == [
        (5, 0),
        (3, 0),
        (0, 5),
        (3, 2),
        (1, 1),
        (2, 0),
        (0, 2),
    ]
    for h_dev, g_dev in zip(http_world, group_world, strict=True):
        h_rows, g_rows = await stored(h_dev.device_id), await stored(g_dev.device_id)
        # All but the sample time (each world's scenario is built at its own moment) and the patient id.
        assert [r[:2] + r[3:6] + r[7:] for r in g_rows] == [r[:2] + r[3:6] + r[7:] for r in h_rows]
        assert [r[6] is None for r in g_rows] == [r[6] is None for r in h_rows]
        assert await _annotations(g_dev.device_id) == await _annotations(h_dev.device_id)
    assert await _annotations(group_world[0].device_id) == [
        ("firmware", "Firmware fw-1 → fw-2"),
        ("calibration", "Calibration cal-1 → cal-2"),
    ]
    # One transaction for the whole group, one work-queue row per device in it.
    pks = [d.device_id for d in group_world]
    txids = await query(
        "SELECT DISTINCT r.ingest_txid FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
        "WHERE d.device_id = ANY(%s)",
        [pks],
    )
    assert len(txids) == 1
    logged = await query(
        "SELECT d.device_id, l.accepted FROM telemetry_ingest_log l JOIN telemetry_device d ON d.id = l.device_id "
        "WHERE l.txid = %s ORDER BY d.device_id",
        [txids[0][0]],
    )
    assert logged == sorted(
        [(group_world[0].device_id, 8), (group_world[1].device_id, 4), (group_world[2].device_id, 2)]
    )


async def test_a_group_over_the_row_cap_is_split_into_transactions():
    devices = [await make_device() for _ in range(4)]
    bodies = [(d, factories.batch_body(d, factories.series(1, 30))) for d in devices]
    prepared = [group.message_prepare(group.Message(b, _headers(d, b))) for d, b in bodies]
    answers = await group.group_handle(prepared, max_rows=60)
    assert [a.body["accepted"] for a in answers] == [30] * 4
    (transactions,) = await query("SELECT count(DISTINCT ingest_txid) FROM telemetry_reading")
    assert transactions[0] == 2


async def test_a_message_postgresql_refuses_fails_alone_and_its_group_is_stored(monkeypatch):
    devices = [await make_device() for _ in range(3)]
    bodies = [(d, factories.batch_body(d, factories.series(1, 5))) for d in devices]
    real_validate = group.validate_readings

    def poisoned(batch: Any, now: Any) -> Any:
        # A NUL byte PostgreSQL refuses, slipped past validation: the safety net must isolate it.
        rows, rejected = real_validate(batch, now)
        if batch.device_id == devices[1].device_id:
            rows[0].calibration_id = "bad\x00"
        return rows, rejected

    monkeypatch.setattr(group, "validate_readings", poisoned)
    prepared = [group.message_prepare(group.Message(b, _headers(d, b))) for d, b in bodies]
    answers = await group.group_handle(prepared)
    assert [a.status for a in answers] == [200, 400, 200]
    assert answers[1].body["error"]["code"] == "invalid_batch"
    assert [a.body.get("accepted") for a in answers] == [5, None, 5]
    assert await reading_count() == 10


async def test_the_database_unavailable_answers_503_and_counts_nothing(settings, monkeypatch):
    dev = await make_device()
    body = factories.batch_body(dev, factories.series(1, 3))
    prepared = group.message_prepare(group.Message(body, _headers(dev, body)))
    settings.PERFUSE_INGEST_POOL_TIMEOUT_SECONDS = 0.5
    monkeypatch.setattr(telemetry_db, "_conninfo", lambda: {"host": "127.0.0.1", "port": 1, "dbname": "x"})
    answers = await group.group_handle([prepared])
    assert answers[0].status == 503 and answers[0].body["error"]["code"] == "storage_unavailable"


async def test_the_writer_gathers_a_window_and_delivers_after_the_commit():
    devices = [await make_device() for _ in range(6)]
    delivered: list[tuple[str, int, int]] = []

    async def deliver(message: group.Message, answer: Answer) -> None:
        # Delivery comes after the commit: the message's readings are visible to another connection.
        rows = await stored(message.topic_device or "")
        delivered.append((message.topic_device or "", answer.body["accepted"], len(rows)))

    writer = group.GroupWriter(deliver, window_ms=200, max_rows=10_000)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    for d in devices:
        body = factories.batch_body(d, factories.series(1, 4))
        writer.put(group.Message(body, _headers(d, body), topic_device=d.device_id))
    await _until(lambda: len(delivered) == 6)
    stop.set()
    await task
    assert sorted(delivered) == sorted((d.device_id, 4, 4) for d in devices)
    assert writer.groups == 1 and writer.messages == 6


async def test_the_writer_closes_a_group_at_the_row_cap():
    devices = [await make_device() for _ in range(4)]
    answers: list[Answer] = []

    async def deliver(message: group.Message, answer: Answer) -> None:
        answers.append(answer)

    writer = group.GroupWriter(deliver, window_ms=60_000, max_rows=20)
    stop = asyncio.Event()
    for d in devices:
        body = factories.batch_body(d, factories.series(1, 10))
        writer.put(group.Message(body, _headers(d, body)))
    task = asyncio.create_task(writer.run(stop))
    await _until(lambda: len(answers) == 4)
    stop.set()
    await task
    assert writer.groups == 2
    assert [a.body["accepted"] for a in answers] == [10] * 4


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_http_through_the_group_writer_shares_transactions_and_counts_the_same(settings):
    settings.PERFUSE_INGEST_HTTP_GROUP = True
    # The group closes at its row cap, once all ten requests are in (the window is no factor).
    settings.PERFUSE_INGEST_GROUP_WINDOW_MS = 60_000
    settings.PERFUSE_INGEST_GROUP_MAX_ROWS = 200
    devices = [await make_device(patient=f"p-http-{i}") for i in range(5)]
    bodies = [(d, factories.batch_body(d, factories.series(1, 20))) for d in devices]
    client = AsyncClient()
    responses = await asyncio.gather(*(post(client, d, b) for d, b in bodies + bodies))
    assert {r.status_code for r in responses} == {200}
    results = [r.json() for r in responses]
    assert sum(r["accepted"] for r in results) == 100 == await reading_count()
    assert all(r["accepted"] + r["duplicates"] == 20 for r in results)
    (transactions,) = await query("SELECT count(DISTINCT ingest_txid) FROM telemetry_reading")
    assert transactions[0] == 1  # requests in flight together were committed together


def _verify_batch(batch_pk: int) -> dict[str, Any]:
    out = StringIO()
    call_command("verify_batch", "--batch", str(batch_pk), "--json", stdout=out)  # exits 1 when it fails
    answer: dict[str, Any] = json.loads(out.getvalue())
    return answer


async def test_every_message_of_a_group_is_kept_as_signed_and_verify_batch_proves_it():
    a, b, c = await _world("k")
    t = ago(60)
    first = factories.batch_body(a, factories.series(1, 4, start=t), firmware="fw-1")
    # seq 3-4 again (same sample times), 5-6 new
    overlap = factories.batch_body(a, factories.series(3, 4, start=t + dt.timedelta(seconds=2)), firmware="fw-1")
    other = factories.batch_body(b, factories.series(1, 2, start=t))
    rejected = factories.batch_body(c, [factories.reading(1, t, value=250.0)])  # nothing valid to store
    messages = [
        (d, body, _headers(d, body)) for d, body in [(a, first), (b, other), (a, first), (a, overlap), (c, rejected)]
    ]
    prepared = [group.message_prepare(group.Message(body, h)) for _, body, h in messages]
    answers = await group.group_handle(prepared)
    assert [(x.body["accepted"], x.body["duplicates"]) for x in answers] == [(4, 0), (2, 0), (0, 4), (2, 2), (0, 0)]
    kept = await query(
        "SELECT b.id, d.device_id, b.door, b.key_id, b.signed_at, b.signature, b.readings, b.seq_min, b.seq_max, "
        "b.ingest_txid FROM telemetry_signed_batch b JOIN telemetry_device d ON d.id = b.device_id ORDER BY b.id"
    )
    # One kept batch per message with valid readings (the retransmit too), with its own credentials.
    assert [(row[1], row[2], row[3], str(row[4]), base64.b64encode(bytes(row[5])).decode()) for row in kept] == [
        (d.device_id, "mqtt", d.key_id, h["x-perfuse-timestamp"], h["x-perfuse-signature"]) for d, _, h in messages[:4]
    ]
    assert [row[6:9] for row in kept] == [(4, 1, 4), (2, 1, 2), (4, 1, 4), (4, 3, 6)]
    # In the group's one transaction, with its readings.
    assert {row[9] for row in kept} == {
        row[0] for row in await query("SELECT DISTINCT ingest_txid FROM telemetry_reading")
    }
    assert len({row[9] for row in kept}) == 1
    for row in kept:
        answer = await sync_to_async(_verify_batch)(row[0])
        (check,) = answer["batches"]
        assert answer["ok"] and check["signature_valid"], check
        assert check["matched"] == check["readings"] == row[6]


async def test_http_through_the_group_writer_keeps_each_request_as_signed(settings):
    settings.PERFUSE_INGEST_HTTP_GROUP = True
    dev = await make_device(patient="p-http-kept")
    body = factories.batch_body(dev, factories.series(1, 3))
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 200 and response.json()["accepted"] == 3
    ((batch_pk, door, size),) = await query("SELECT id, door, body_size FROM telemetry_signed_batch")
    assert (door, size) == ("http", len(body))
    answer = await sync_to_async(_verify_batch)(batch_pk)
    assert answer["ok"] and answer["batches"][0]["matched"] == 3
