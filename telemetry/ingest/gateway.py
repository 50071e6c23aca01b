"""Edge gateways (contract section 1c): one signed outer request carrying many devices' batches.

    outer credentials (401) → gateway key and signature (401) → envelope (400) → gateway id (403)
    → count of batches and readings (413 for the whole request)
    → per inner batch, in section 1's order: entry (400) → credentials, buffer window (401)
      → body base64 (400) → device key and signature (401) → body (400) → device/key match (403)
      → the gateway's ward or site (403) → rate (429) → item-by-item validation
    → store → answers → publish

`gateway_handle` is door-free: the HTTP view (telemetry/api.py, and the raw ASGI path in
telemetry/asgi.py) and the MQTT bridge (topic perfuse/v1/gateways/{id}/batches) frame the message
and deliver the `Answer`. The outer request is answered 200 whenever it is itself valid, with one
result per inner batch: what section 1 would have answered for it, status and body, so a device
behind a gateway learns the same codes as one that posts directly. Inner timestamps may be up to
PERFUSE_GATEWAY_MAX_BUFFER_SECONDS old (a gateway buffers while offline); the outer one has the
300 s window, so a captured outer request cannot be replayed later, and an inner batch replayed
inside a new outer request stores nothing twice (the idempotency key of section 1).

Storage: the inner batches that pass go into ONE transaction per gateway message (one commit for
a hub of a hundred devices, not a hundred) through the group writer's store step
(telemetry/ingest/group.py `group_store`, the one the MQTT bridge and the HTTP group writer use):
one COPY for every inner batch, the devices' state rows locked in device order (concurrent gateways
carrying the same devices wait instead of deadlocking), one ingest-log row per device (a device's
several inner batches, a gateway's offline backlog, share it), each inner batch credited with the
readings it was first to carry. Counts are answered only after the commit; if it fails, nothing
was committed and the whole request gets 503.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import psycopg
from django.conf import settings
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout

from telemetry import db, ratelimit
from telemetry.ingest import publish
from telemetry.ingest.answers import Answer, IngestError, storage_unavailable, too_large
from telemetry.ingest.auth import Credentials, DeviceKeyRow, credentials_check, keys_lookup, signature_verify
from telemetry.ingest.group import Pending, group_store
from telemetry.ingest.keep import Signed
from telemetry.ingest.pipeline import rate_limits, rate_refusal
from telemetry.ingest.validate import Row, batch_check, parse_batch, validate_readings
from telemetry.schemas import (
    GATEWAY_SCHEMA,
    BatchIn,
    ErrorDetail,
    GatewayItemResult,
    GatewayResult,
    IngestResult,
    Rejection,
    TypedBatchIn,
    gateway_decoder,
    inner_decoder,
)

log = logging.getLogger(__name__)

_GATEWAY_KEY_SQL = """
SELECT k.revoked_at IS NOT NULL, k.public_key, g.gateway_id, g.scope, w.code, w.site
FROM telemetry_gatewaykey k
JOIN telemetry_gateway g ON g.id = k.gateway_id
JOIN telemetry_ward w ON w.id = g.ward_id
WHERE k.key_id = %s
"""


@dataclass(frozen=True)
class GatewayKeyRow:
    revoked: bool
    public_key: bytes
    gateway_id: str
    scope: str  # "ward" or "site" (telemetry.models.Gateway.Scope)
    ward: str
    site: str

    def carries(self, key: DeviceKeyRow) -> bool:
        return key.site == self.site if self.scope == "site" else key.ward == self.ward


@dataclass
class Inner:
    """One inner batch on its way through the steps; `answer` is set once it is refused."""

    index: int
    credentials: Credentials | None = None
    body: bytes = b""
    batch: BatchIn | TypedBatchIn | None = None
    refusal: IngestError | None = None  # first refusal in section 1's order, before the key is known
    parse_refusal: IngestError | None = None  # the body's own 400, after the signature
    key: DeviceKeyRow | None = None
    answer: Answer | None = None
    rows: list[Row] | None = None
    rejected: list[Rejection] | None = None
    accepted: int = 0  # readings this message's transaction committed for it

    @property
    def device_id(self) -> str | None:
        if self.key is not None:
            return self.key.device_id
        return self.batch.device_id if self.batch is not None else None


async def gateway_handle(*, body: bytes, headers: Mapping[str, str], gateway_id: str | None = None) -> Answer:
    """Answer one gateway message. `gateway_id`: the id the door addressed (the MQTT topic's), if any."""
    try:
        return await _handle(body, headers, gateway_id)
    except IngestError as exc:
        return exc.answer
    except (psycopg.OperationalError, PoolTimeout) as exc:
        log.warning("gateway ingest storage unavailable: %s", exc)
        return storage_unavailable()


async def _handle(body: bytes, headers: Mapping[str, str], addressed: str | None) -> Answer:
    if len(body) > settings.PERFUSE_INGEST_MAX_BYTES:  # the HTTP doors refuse it earlier; MQTT here
        return too_large()
    wall = time.time()
    credentials = credentials_check(headers, now=wall)
    pool = await db.ingest_pool()
    async with pool.connection() as conn:
        gateway = await gateway_authenticate(conn, credentials=credentials, body=body)
        entries = _parse_envelope(body, gateway=gateway, addressed=addressed)
        inners = [_inner_parse(index, raw, now=wall) for index, raw in enumerate(entries)]
        _check_size(inners)
        await _authenticate_inners(conn, inners, gateway=gateway)
        await _rates(inners)
        now = dt.datetime.now(dt.UTC)
        for inner in inners:
            if inner.answer is None:
                assert inner.batch is not None
                inner.rows, inner.rejected = validate_readings(inner.batch, now)
        await _store(conn, [i for i in inners if i.answer is None and i.rows], now=now)
    return Answer(200, msgspec.to_builtins(GatewayResult(gateway.gateway_id, [_result(i, now) for i in inners])))


async def gateway_authenticate(conn: AsyncConnection[Any], *, credentials: Credentials, body: bytes) -> GatewayKeyRow:
    """The gateway key that signed the outer body; 401 when unknown, revoked or forged."""
    row = await (await conn.execute(_GATEWAY_KEY_SQL, [credentials.key_id])).fetchone()
    if row is None:
        raise IngestError("unknown_key", "no gateway key with this id")
    return signature_verify(
        GatewayKeyRow(row[0], bytes(row[1]), row[2], row[3], row[4], row[5]), credentials=credentials, body=body
    )


def _parse_envelope(body: bytes, *, gateway: GatewayKeyRow, addressed: str | None) -> list[msgspec.Raw]:
    try:
        envelope = gateway_decoder.decode(body)
    except msgspec.ValidationError as exc:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IngestError("malformed_json", "body is not JSON") from exc
        raise IngestError("invalid_batch", str(exc)) from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise IngestError("malformed_json", "body is not JSON (UTF-8)") from exc
    if envelope.schema != GATEWAY_SCHEMA:
        raise IngestError("wrong_schema", f"schema must be {GATEWAY_SCHEMA!r}")
    if envelope.gateway_id != gateway.gateway_id or (addressed is not None and addressed != gateway.gateway_id):
        raise IngestError("gateway_mismatch", "gateway_id does not belong to this key")
    if len(envelope.batches) > settings.PERFUSE_INGEST_MAX_READINGS:
        raise IngestError("too_many_readings", f"at most {settings.PERFUSE_INGEST_MAX_READINGS} batches per request")
    return envelope.batches


def _inner_parse(index: int, raw: msgspec.Raw, *, now: float) -> Inner:
    """Everything about one inner batch that needs no I/O: its entry, credentials, body."""
    inner = Inner(index)
    try:
        entry = inner_decoder.decode(raw)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
        inner.refusal = IngestError("invalid_batch", f"batch {index}: {exc}"[:300])
        return inner
    body_refusal = None
    try:
        inner.body = base64.b64decode(entry.body, validate=True)
    except (binascii.Error, ValueError):
        body_refusal = IngestError("invalid_batch", "body is not padded standard base64")
    else:
        try:
            inner.batch = parse_batch(inner.body)
        except IngestError as exc:
            inner.parse_refusal = exc
    fields = {
        "x-perfuse-key": entry.key,
        "x-perfuse-timestamp": str(entry.timestamp),
        "x-perfuse-signature": entry.signature,
    }
    try:
        inner.credentials = credentials_check(fields, now=now, max_age=settings.PERFUSE_GATEWAY_MAX_BUFFER_SECONDS)
    except IngestError as exc:
        inner.refusal = exc
    else:
        inner.refusal = body_refusal
    return inner


def _check_size(inners: list[Inner]) -> None:
    """5,000 readings in all (contract 1c), counted over every inner body that parses."""
    total = sum(len(i.batch.readings) for i in inners if i.batch is not None)
    if total > settings.PERFUSE_INGEST_MAX_READINGS:
        raise IngestError("too_many_readings", f"at most {settings.PERFUSE_INGEST_MAX_READINGS} readings per request")


async def _authenticate_inners(conn: AsyncConnection[Any], inners: list[Inner], *, gateway: GatewayKeyRow) -> None:
    """Each inner batch's device key (one query for all) and signature, then the checks of the
    batch against its key and against the gateway's ward or site."""
    wanted = sorted({i.credentials.key_id for i in inners if i.credentials is not None and i.refusal is None})
    keys = await keys_lookup(conn, wanted) if wanted else {}
    for inner in inners:
        try:
            _authorize(inner, keys, gateway=gateway)
        except IngestError as exc:
            inner.answer = exc.answer


def _authorize(inner: Inner, keys: dict[str, DeviceKeyRow], *, gateway: GatewayKeyRow) -> None:
    if inner.refusal is not None:
        raise inner.refusal
    assert inner.credentials is not None
    key = inner.key = signature_verify(
        keys.get(inner.credentials.key_id), credentials=inner.credentials, body=inner.body
    )
    if inner.parse_refusal is not None:
        raise inner.parse_refusal
    assert inner.batch is not None
    batch_check(inner.batch, key=key)
    if not gateway.carries(key):
        where = "site" if gateway.scope == "site" else "ward"
        raise IngestError("foreign_device", f"this gateway carries only devices of its own {where}")


async def _rates(inners: list[Inner]) -> None:
    """Every admitted inner batch's take from its device's and site's buckets, in one Redis round
    trip (a pipeline, in order: a device twice in the message pays twice), not one per device."""
    admitted = [i for i in inners if i.answer is None]
    takes = []
    for inner in admitted:
        assert inner.key is not None and inner.batch is not None
        takes.append(ratelimit.Take(inner.key.device_id, inner.key.site, max(1, len(inner.batch.readings))))
    decisions = await ratelimit.rates_check(db.ingest_redis(), takes, limits=rate_limits())
    for inner, decision in zip(admitted, decisions, strict=True):
        try:
            rate_refusal(decision)
        except IngestError as exc:
            inner.answer = exc.answer


async def _store(conn: AsyncConnection[Any], inners: list[Inner], *, now: dt.datetime) -> None:
    """One transaction for every admitted inner batch, by the group writer's store step."""
    if not inners:
        return
    pending = []
    for n, inner in enumerate(inners):
        assert inner.key is not None and inner.batch is not None and inner.rows is not None
        assert inner.credentials is not None and inner.rejected is not None
        # What the device signed is kept as it signed it (the inner body and credentials).
        signed = Signed(inner.credentials, inner.body, "gateway")
        pending.append(Pending(n, inner.key, signed, inner.batch, inner.rows, inner.rejected, None))
    stored = await group_store(conn, pending, now=now)
    for inner, accepted in zip(inners, stored.accepted, strict=True):
        inner.accepted = accepted
    publish.group_publish(stored.by_device)


def _result(inner: Inner, now: dt.datetime) -> GatewayItemResult:
    if inner.answer is not None:
        error = inner.answer.body["error"]
        result = GatewayItemResult(
            inner.index, inner.device_id, inner.answer.status, error=ErrorDetail(error["code"], error["detail"])
        )
        if inner.batch is not None:
            result.batch_id = inner.batch.batch_id
        if "Retry-After" in inner.answer.headers:
            result.retry_after = int(inner.answer.headers["Retry-After"])
        return result
    assert inner.batch is not None and inner.rows is not None and inner.rejected is not None
    accepted = inner.accepted
    counts = IngestResult(  # section 1's 200, as pipeline.handle builds it
        batch_id=inner.batch.batch_id,
        accepted=accepted,
        duplicates=len(inner.rows) - accepted,
        rejected=inner.rejected,
        ingest_time=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    return GatewayItemResult(inner.index, inner.device_id, 200, **msgspec.structs.asdict(counts))
