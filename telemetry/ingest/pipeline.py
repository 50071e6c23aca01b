"""The ingest pipeline: the steps in the contract's order, for one device's batch.

    credentials (401) → key and signature (401) → envelope (400) → device/key match (403)
    → size (413) → rate (429) → item-by-item validation → store → answer → publish

Each step is a function of its own module (auth, validate, store, publish) taking plain values,
so every door runs the same steps with its own framing. `handle` is the HTTP door's composition,
shared by the raw ASGI fast path (telemetry/asgi.py) and the Django view (telemetry/api.py),
which therefore answer identically; `precheck` is what HTTP can refuse before the body is read.
The MQTT bridge runs the same steps over a group of messages (telemetry/ingest/group.py: one key
lookup, one rate-limit round trip and one transaction for the group); `rate_refusal`,
`rate_limits` and `stored_answer` are the pieces both compositions share.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping

import msgspec
import psycopg
from django.conf import settings
from django.utils.http import parse_header_parameters
from psycopg_pool import PoolTimeout

from telemetry import db, ratelimit
from telemetry.ingest import publish
from telemetry.ingest.answers import Answer, IngestError, error, storage_unavailable, too_large
from telemetry.ingest.auth import DeviceKeyRow, credentials_check, device_authenticate
from telemetry.ingest.keep import Signed
from telemetry.ingest.store import Stored, readings_store
from telemetry.ingest.validate import Row, batch_check, parse_batch, validate_readings
from telemetry.schemas import BatchIn, IngestResult, Rejection, TypedBatchIn

log = logging.getLogger(__name__)


def precheck(*, method: str, content_type: str, declared_length: str | None) -> Answer | None:
    """What can be refused before the body is read: method, media type, declared size."""
    if method != "POST":
        return error("method_not_allowed", "use POST", {"Allow": "POST"})
    if parse_header_parameters(content_type)[0] != "application/json":
        return error("unsupported_media_type", "Content-Type must be application/json")
    try:
        declared = int(declared_length or 0)
    except ValueError:
        declared = 0
    if declared > settings.PERFUSE_INGEST_MAX_BYTES:
        return too_large()
    return None


async def handle(*, body: bytes, headers: Mapping[str, str]) -> Answer:
    try:
        return await _handle(body, headers)
    except IngestError as exc:
        return exc.answer
    except (psycopg.OperationalError, PoolTimeout) as exc:
        # The database is down or saturated: nothing was committed (see storage_unavailable).
        log.warning("ingest storage unavailable: %s", exc)
        return storage_unavailable()


async def _handle(body: bytes, headers: Mapping[str, str]) -> Answer:
    credentials = credentials_check(headers, now=time.time())
    pool = await db.ingest_pool()
    async with pool.connection() as conn:
        key = await device_authenticate(conn, credentials=credentials, body=body)
        batch = parse_batch(body)
        batch_check(batch, key=key)
        decision = await rate_check(key=key, cost=max(1, len(batch.readings)))
        now = dt.datetime.now(dt.UTC)
        rows, rejected = validate_readings(batch, now)
        signed = Signed(credentials, body, "http")
        stored = (
            await readings_store(conn, key=key, batch=batch, rows=rows, now=now, signed=signed)
            if rows
            else Stored([], {}, [])
        )
    publish.stored_publish(key, stored)
    return stored_answer(batch, rows=rows, rejected=rejected, accepted=len(stored.inserted), now=now, decision=decision)


def stored_answer(
    batch: BatchIn | TypedBatchIn,
    *,
    rows: list[Row],
    rejected: list[Rejection],
    accepted: int,
    now: dt.datetime,
    decision: ratelimit.RateDecision | None,
) -> Answer:
    """The 200 answer: `accepted` of the valid `rows` were committed, the others were duplicates."""
    result = IngestResult(
        batch_id=batch.batch_id,
        accepted=accepted,
        duplicates=len(rows) - accepted,
        rejected=rejected,
        ingest_time=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    return Answer(200, msgspec.to_builtins(result), decision.headers() if decision is not None else {})


async def rate_check(*, key: DeviceKeyRow, cost: int) -> ratelimit.RateDecision | None:
    """Take `cost` readings from the device's and the site's buckets, or refuse with 429. None when
    the limiter is unavailable (the batch is admitted: an outage of it must not refuse clinical data)."""
    decision = await ratelimit.rate_check(
        db.ingest_redis(), device=key.device_id, site=key.site, cost=cost, limits=rate_limits()
    )
    rate_refusal(decision)
    return decision


def rate_refusal(decision: ratelimit.RateDecision | None) -> None:
    """429 when the decision refuses (with the headers a device needs to back off)."""
    if decision is not None and not decision.allowed:
        raise IngestError(
            "rate_limited",
            "too many readings; retry later",
            {**decision.headers(), "Retry-After": str(decision.retry_after_seconds)},
        )


def rate_limits() -> ratelimit.Limits:
    return ratelimit.Limits(
        device_rate=settings.PERFUSE_RATE_DEVICE_PER_SECOND,
        device_burst=settings.PERFUSE_RATE_DEVICE_BURST,
        site_rate=settings.PERFUSE_RATE_SITE_PER_SECOND,
        site_burst=settings.PERFUSE_RATE_SITE_BURST,
    )
