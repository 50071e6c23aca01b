"""The engine wakes on commit (LISTEN/NOTIFY from the ingest transaction, by a trigger on the ingest
log): with a poll interval of an hour, a committed reading is still processed, through the HTTP
and the gateway doors, and after the listening connection was killed; a rolled-back transaction
notifies nothing, a committed one once however many devices it wrote."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.test import AsyncClient

from telemetry import db, storage
from telemetry.engine import Engine, ReadingRow
from tests import factories
from tests.ingest_helpers import ago, query, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

HOUR = 3600.0
GUARD = 30.0  # a deadlock guard, far beyond any wake-up: the poll interval alone would take an hour

make_device = sync_to_async(factories.device)
make_gateway = sync_to_async(factories.gateway)


class Recorder:
    """The (device, seq) pairs whose processing committed; an event per change."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.ticked = threading.Event()
        self.changed = threading.Condition()

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        keys = {(r.device_id, r.seq) for r in rows}
        transaction.on_commit(lambda: self._add(keys))

    def _add(self, keys: set[tuple[int, int]]) -> None:
        with self.changed:
            self.seen |= keys
            self.changed.notify_all()

    def tick(self, *, now: dt.datetime) -> None:
        self.ticked.set()

    def wait_for(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.seen) >= count, timeout=GUARD)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[tuple[Engine, Recorder]]:
    recorder = Recorder()
    engine = Engine([recorder], interval=HOUR)
    worker = threading.Thread(target=engine.run, daemon=True)
    worker.start()
    # The first loop has run (nothing to do) and the engine now waits for a commit or the hour.
    assert await asyncio.to_thread(recorder.ticked.wait, GUARD)
    try:
        yield engine, recorder
    finally:
        engine.stop()
        await asyncio.to_thread(worker.join, GUARD)
    assert not worker.is_alive()


async def _listener_pid() -> int | None:
    rows = await query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
        ['LISTEN "perfuse_ingest"'],
    )
    return rows[0][0] if rows else None


async def test_a_committed_reading_is_processed_without_waiting_for_the_poll(engine):
    _, recorder = engine
    dev = await make_device(patient="p-wake")
    response = await send(AsyncClient(), dev, factories.series(1, 5, start=ago(30)))
    assert response.json()["accepted"] == 5
    assert await asyncio.to_thread(recorder.wait_for, 5)
    assert len(recorder.seen) == 5


async def test_a_gateway_message_wakes_the_engine_once_committed(engine):
    _, recorder = engine
    ward = await sync_to_async(factories.ward)()
    a, b = await make_device(ward.code), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    inners = [factories.inner(d, factories.batch_body(d, factories.series(1, 3, start=ago(30)))) for d in (a, b)]
    body = gw.envelope(inners)
    response = await AsyncClient().post(
        "/api/v1/ingest/gateway", body, content_type="application/json", headers=gw.sign(body)
    )
    assert [r["accepted"] for r in response.json()["results"]] == [3, 3]
    assert await asyncio.to_thread(recorder.wait_for, 6)


async def test_the_engine_listens_again_after_its_connection_is_killed(engine):
    _, recorder = engine
    old = await _listener_pid()
    assert old is not None
    await query("SELECT pg_terminate_backend(%s)", [old])
    deadline = time.monotonic() + GUARD
    while await _listener_pid() in (None, old):
        assert time.monotonic() < deadline, "the engine did not LISTEN again"
        await asyncio.sleep(0.05)
    dev = await make_device()
    assert (await send(AsyncClient(), dev, factories.series(1, 2, start=ago(30)))).json()["accepted"] == 2
    assert await asyncio.to_thread(recorder.wait_for, 2)


def _log_row(cursor: Any) -> None:
    cursor.execute(
        "INSERT INTO telemetry_ingest_log (device_id, min_sample_time, max_sample_time, accepted) "
        "VALUES (1, now(), now(), 1)"
    )


def test_the_ingest_log_notifies_once_per_committed_transaction_and_never_for_a_rollback():
    with db.listen_connect(storage.INGEST_CHANNEL) as listener:
        with pytest.raises(RuntimeError), transaction.atomic(), connection.cursor() as cursor:
            _log_row(cursor)
            raise RuntimeError("rolled back")
        with transaction.atomic(), connection.cursor() as cursor:
            for _ in range(3):  # three devices in one transaction (a gateway message, a group commit)
                _log_row(cursor)
        received = list(listener.notifies(timeout=GUARD, stop_after=1))
        received += list(listener.notifies(timeout=0.5))  # anything else already queued
    assert [(n.channel, n.payload) for n in received] == [("perfuse_ingest", "")]


async def test_without_listen_the_engine_polls_and_opens_no_listening_connection():
    recorder = Recorder()
    engine = Engine([recorder], interval=0.05, listen=False)
    worker = threading.Thread(target=engine.run, daemon=True)
    worker.start()
    try:
        assert await asyncio.to_thread(recorder.ticked.wait, GUARD)
        dev = await make_device()
        assert (await send(AsyncClient(), dev, factories.series(1, 2, start=ago(30)))).json()["accepted"] == 2
        assert await asyncio.to_thread(recorder.wait_for, 2)
        assert await _listener_pid() is None
    finally:
        engine.stop()
        await asyncio.to_thread(worker.join, GUARD)
