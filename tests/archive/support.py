"""Helpers of the archive tests: a past day's readings sent through the real ingest, and the
hot store's rows of a day, every column."""

from __future__ import annotations

import datetime as dt
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient

from telemetry.archive.objects import FileStore, ObjectStore, S3Store
from tests import factories
from tests.ingest_helpers import send

METRICS = [("tissue_o2", "%", 55.0), ("spo2", "%", 97.0), ("skin_temp", "degF", 97.9)]


def at(day: dt.date, seconds: float) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


async def ingest(dev: factories.SimDevice, day: dt.date, *, batches: int, per_batch: int, start: float = 36000) -> None:
    """`batches` signed batches of `per_batch` readings per metric, one a second from `start` s after
    midnight of `day` (with a quality, a calibration id and firmware), each answered 200."""
    client = AsyncClient()
    seq = 0
    for b in range(batches):
        items = []
        for i in range(per_batch):
            t = at(day, start + b * per_batch + i + 0.123456)
            seq += 1
            for n, (metric, unit, value) in enumerate(METRICS):
                items.append(
                    factories.reading(
                        seq,
                        t,
                        metric=metric,
                        unit=unit,
                        value=value + (seq % 7) / 3,
                        signal_quality=0.9 - n / 10,
                        calibration_id="cal-1" if metric == "tissue_o2" else None,
                    )
                )
        response = await send(client, dev, items, firmware="fw-2.4.1", batch_id=f"b-{b}")
        assert response.status_code == 200, response.content
        assert response.json()["accepted"] == len(items)


def _day_rows(day: dt.date) -> list[tuple[Any, ...]]:
    lo = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM telemetry_reading WHERE sample_time >= %s AND sample_time < %s "
            "ORDER BY device_id, metric, sample_time, seq",
            [lo, lo + dt.timedelta(days=1)],
        )
        return cursor.fetchall()


day_rows = sync_to_async(_day_rows)


def _sql(statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.fetchall() if cursor.description else []


sql = sync_to_async(_sql)


make_device = sync_to_async(factories.device)


async def two_wards(day: dt.date) -> tuple[factories.SimDevice, factories.SimDevice, factories.SimDevice]:
    await sync_to_async(factories.ward)("icu-a")
    await sync_to_async(factories.ward)("icu-b")
    a1 = await make_device("icu-a", patient="p-a1")
    a2 = await make_device("icu-a", patient="p-a2")
    b1 = await make_device("icu-b", patient="p-b1")
    await ingest(a1, day, batches=3, per_batch=40)
    await ingest(a2, day, batches=2, per_batch=25)
    await ingest(b1, day, batches=1, per_batch=30, start=86400 - 10)  # crosses midnight into today
    return a1, a2, b1


def overwrite(store: ObjectStore, key: str, data: bytes) -> None:
    if isinstance(store, FileStore):
        path = store.root / key
        path.chmod(0o644)
        path.write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=data)
