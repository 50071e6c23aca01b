"""Every accepted batch is kept as signed (exact bytes, key id, timestamp, signature) in the
transaction of its readings, and `verify_batch` proves the stored readings against it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient

from telemetry.ingest.keep import BODY_COMPRESS_MIN, body_compress, body_decompress
from tests import factories
from tests.archive.support import at, ingest, sql
from tests.ingest_helpers import ago, post, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)


def _verify(*args: str) -> tuple[int, dict[str, Any]]:
    """Run verify_batch --json; its exit status and answer."""
    from io import StringIO

    out = StringIO()
    try:
        call_command("verify_batch", *args, "--json", stdout=out)
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, json.loads(out.getvalue())


verify = sync_to_async(_verify)


async def test_the_signed_batch_is_kept_exactly_with_its_credentials():
    dev = await make_device(patient="p-kept")
    body = factories.batch_body(dev, [factories.reading(1, ago(20)), factories.reading(2, ago(10))], firmware="fw-1")
    headers = dev.sign(body)
    response = await post(AsyncClient(), dev, body, headers=headers)
    assert response.status_code == 200 and response.json()["accepted"] == 2
    ((key_id, stamp, signature, stored, codec, size, door, readings, seq_min, seq_max, batch_txid),) = await sql(
        "SELECT key_id, signed_at, signature, body, body_codec, body_size, door, readings, seq_min, seq_max, "
        "ingest_txid FROM telemetry_signed_batch"
    )
    assert (key_id, str(stamp), door, readings, seq_min, seq_max) == (
        dev.key_id,
        headers["X-Perfuse-Timestamp"],
        "http",
        2,
        1,
        2,
    )
    assert base64.b64encode(bytes(signature)).decode() == headers["X-Perfuse-Signature"]
    # A small body is kept as it came; compressing ~200 bytes one at a time does not pay.
    assert len(body) < BODY_COMPRESS_MIN
    assert codec == "identity" and bytes(stored) == body and size == len(body)
    assert body_decompress(bytes(stored), size=size, codec=codec) == body
    # The same transaction as its readings.
    assert await sql("SELECT DISTINCT ingest_txid FROM telemetry_reading") == [(batch_txid,)]


async def test_a_large_body_is_kept_compressed_and_read_back_exactly():
    dev = await make_device(patient="p-kept-large")
    body = factories.batch_body(dev, [factories.reading(n, ago(60 - n)) for n in range(1, 41)], firmware="fw-1")
    assert len(body) >= BODY_COMPRESS_MIN
    response = await post(AsyncClient(), dev, body, headers=dev.sign(body))
    assert response.status_code == 200 and response.json()["accepted"] == 40
    ((stored, codec, size),) = await sql("SELECT body, body_codec, body_size FROM telemetry_signed_batch")
    assert codec == "zstd" and len(bytes(stored)) < size == len(body)
    assert body_decompress(bytes(stored), size=size, codec=codec) == body


async def test_a_retransmit_is_kept_and_a_batch_with_nothing_to_store_is_not():
    dev = await make_device(patient="p-retransmit")
    items = [factories.reading(1, ago(20))]
    assert (await send(AsyncClient(), dev, items)).json()["accepted"] == 1
    assert (await send(AsyncClient(), dev, items)).json()["duplicates"] == 1
    rejected = await send(AsyncClient(), dev, [factories.reading(2, ago(5), value=250.0)])
    assert rejected.json()["accepted"] == 0 and rejected.json()["rejected"][0]["code"] == "out_of_range"
    assert await sql("SELECT count(*), sum(readings) FROM telemetry_signed_batch") == [(2, 2)]


async def test_verify_batch_by_id_by_device_and_seq_and_by_reading():
    dev = await make_device(patient="p-verify")
    t = ago(60)
    await send(AsyncClient(), dev, [factories.reading(1, t), factories.reading(2, t, metric="spo2", value=96)])
    await send(AsyncClient(), dev, [factories.reading(3, ago(30))])
    ids = [row[0] for row in await sql("SELECT id FROM telemetry_signed_batch ORDER BY id")]
    status, answer = await verify("--batch", str(ids[0]))
    assert status == 0 and answer["ok"] and answer["source"] == "hot"
    (batch,) = answer["batches"]
    assert (batch["id"], batch["signature_valid"], batch["readings"], batch["matched"]) == (ids[0], True, 2, 2)
    status, answer = await verify("--device", dev.device_id, "--seq", "3")
    assert status == 0 and [b["id"] for b in answer["batches"]] == [ids[1]]
    # A reading names the batch that committed it, not a retransmit of it.
    await send(AsyncClient(), dev, [factories.reading(1, t)])
    status, answer = await verify(
        "--device", dev.device_id, "--seq", "1", "--metric", "tissue_o2", "--sample-time", t.isoformat()
    )
    assert status == 0 and [b["id"] for b in answer["batches"]] == [ids[0]]
    status, answer = await verify("--device", dev.device_id, "--seq", "1")
    assert status == 0 and len(answer["batches"]) == 2  # the original and the retransmit


async def test_verify_batch_fails_on_a_changed_reading_a_changed_body_and_an_unsigned_row(yesterday):
    dev = await make_device(patient="p-tamper")
    await ingest(dev, yesterday, batches=1, per_batch=3)
    (batch_id,) = [row[0] for row in await sql("SELECT id FROM telemetry_signed_batch")]
    assert (await verify("--batch", str(batch_id)))[0] == 0
    await sql("UPDATE telemetry_reading SET raw_value = raw_value + 1 WHERE seq = 2 AND metric = 'spo2'")
    status, answer = await verify("--batch", str(batch_id))
    assert status == 1 and not answer["ok"]
    assert answer["batches"][0]["signature_valid"]
    assert answer["batches"][0]["problems"] == [
        f"spo2 seq 2 at {at(yesterday, 36001.123456).isoformat()}: raw_value differs"
    ]
    # A row written by the batch's transaction that the device never signed.
    await sql(
        "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, raw_unit, "
        "ingest_txid) SELECT device_id, patient_id, 'battery', 99, sample_time, 3600, 3600, 'mV', ingest_txid "
        "FROM telemetry_reading WHERE seq = 1 AND metric = 'spo2'"
    )
    status, answer = await verify("--batch", str(batch_id))
    assert any("battery seq 99" in p and "not signed" in p for p in answer["batches"][0]["problems"])
    # The kept body changed: the device's signature no longer matches it.
    ((kept, size, codec),) = await sql("SELECT body, body_size, body_codec FROM telemetry_signed_batch")
    original = body_decompress(bytes(kept), size=size, codec=codec)
    forged = original.replace(b'"value":55.333', b'"value":56.333')
    assert forged != original
    await sql(
        "UPDATE telemetry_signed_batch SET body = %s, body_size = %s, body_codec = 'zstd'",
        [body_compress(forged), len(forged)],
    )
    status, answer = await verify("--batch", str(batch_id))
    assert status == 1 and not answer["batches"][0]["signature_valid"]
