"""`batches_copy` (the group writer's one COPY of signed batches) keeps exactly what
`batches_keep` (the statement of unnest arrays) keeps: the same bytes, credentials, codec, spans."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from telemetry import db as telemetry_db
from telemetry.ingest.auth import Credentials
from telemetry.ingest.keep import BODY_COMPRESS_MIN, KeptBatch, Signed, batches_copy, batches_keep, body_decompress
from telemetry.ingest.validate import Row

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

_COLUMNS = (
    "key_id, signed_at, signature, body, body_codec, body_size, door, received_at, readings, seq_min, seq_max, "
    "min_sample_time, max_sample_time"
)
T0 = dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _batches(device_pk: int) -> list[KeptBatch]:
    """The same three batches for any device: a small body with COPY's special characters, a
    compressed random one, and one of every byte value."""
    rng = random.Random(3)
    bodies = [b'{"x": "\\\\ \\t \\n \\r"}', rng.randbytes(BODY_COMPRESS_MIN + 500), bytes(range(256)) * 8]
    kept = []
    for n, body in enumerate(bodies):
        rows = [
            Row(i, 10 * n + i, T0 + dt.timedelta(seconds=i), "tissue_o2", 60.0, 60.0, "%", None, None)
            for i in range(n + 1)
        ]
        credentials = Credentials(f"k_key-{n}_x", 1_764_590_400 + n, rng.randbytes(64))
        kept.append(KeptBatch(device_pk, Signed(credentials, body, ("http", "mqtt", "gateway")[n]), rows, T0))
    return kept


async def test_the_copy_keeps_what_the_statement_keeps() -> None:
    pool = await telemetry_db.ingest_pool()
    rows = {}
    async with pool.connection() as conn, conn.transaction(force_rollback=True), conn.cursor() as cur:
        await batches_keep(cur, _batches(1))
        await batches_copy(cur, _batches(2))
        for device in (1, 2):
            await cur.execute(
                f"SELECT {_COLUMNS} FROM telemetry_signed_batch WHERE device_id = %s ORDER BY key_id", [device]
            )
            rows[device] = await cur.fetchall()
    assert len(rows[1]) == 3 and rows[2] == rows[1]
    for row, kept in zip(rows[2], _batches(2), strict=True):
        key_id, stamp, signature, body, codec, size, door, _, readings, seq_min, seq_max, t_min, t_max = row
        assert (key_id, stamp, bytes(signature)) == (
            kept.signed.credentials.key_id,
            kept.signed.credentials.stamp,
            kept.signed.credentials.signature,
        )
        assert body_decompress(bytes(body), size=size, codec=codec) == kept.signed.body
        assert (door, readings, seq_min, seq_max, t_min) == (
            kept.signed.door,
            len(kept.rows),
            kept.rows[0].seq,
            kept.rows[-1].seq,
            T0,
        )
        assert t_max == kept.rows[-1].sample_time
    assert [r[4] for r in rows[2]] == ["identity", "zstd", "zstd"]
