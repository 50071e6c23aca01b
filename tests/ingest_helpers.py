"""Helpers for ingest tests: post a signed batch through the full ASGI stack, read what was stored."""

from __future__ import annotations

import datetime as dt
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient

from tests import factories

URL = "/api/v1/ingest/readings"


async def post(
    client: AsyncClient,
    dev: factories.SimDevice,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Any:
    return await client.post(
        URL, body, content_type=content_type, headers=dev.sign(body) if headers is None else headers
    )


async def send(client: AsyncClient, dev: factories.SimDevice, readings: list[dict[str, Any]], **envelope: Any) -> Any:
    return await post(client, dev, factories.batch_body(dev, readings, **envelope))


def _query(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchall()


query = sync_to_async(_query, thread_sensitive=True)


async def stored(device_id: str) -> list[tuple[Any, ...]]:
    """(seq, metric, sample_time, value, raw_value, raw_unit, patient_id, calibration_id, firmware) by seq."""
    return await query(
        "SELECT r.seq, r.metric, r.sample_time, r.value, r.raw_value, r.raw_unit, r.patient_id, r.calibration_id, "
        "r.firmware FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
        "WHERE d.device_id = %s ORDER BY r.seq, r.metric",
        [device_id],
    )


async def reading_count() -> int:
    return (await query("SELECT count(*) FROM telemetry_reading"))[0][0]


def ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
