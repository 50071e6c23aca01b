"""One test per row of the ingest contract's answer table (contract section 1), through the ASGI stack."""

from __future__ import annotations

import asyncio
import base64
import time

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from telemetry.services import device_key_revoke
from tests import factories
from tests.ingest_helpers import URL, ago, post, reading_count, send, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)


def error_code(response) -> str:
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body["error"]) == {"code", "detail"} and body["error"]["detail"]
    return body["error"]["code"]


# --- 200 -----------------------------------------------------------------------------------------


async def test_200_counts_accepted_duplicates_and_rejections_by_index():
    dev = await make_device(patient="p-200")
    client = AsyncClient()
    start = ago(60)
    first = await send(client, dev, factories.series(1, 3, start=start), batch_id="b-1")
    assert first.status_code == 200
    assert first.json()["accepted"] == 3 and first.json()["duplicates"] == 0 and first.json()["batch_id"] == "b-1"

    items = [
        *factories.series(1, 2, start=start),  # already stored: duplicates
        {**factories.reading(10), "value": 250.0},  # a percentage above 100
        {**factories.reading(11), "metric": "heart_rate"},
        {**factories.reading(12), "unit": "kPa"},  # kPa is no unit of tissue_o2
        {"seq": 13, "metric": "tissue_o2"},  # required fields missing
        factories.reading(14),  # new and valid
        factories.reading(15, t=ago(-400)),  # more than 300 s in the future
        "not an object",
    ]
    response = await send(client, dev, items)
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1 and body["duplicates"] == 2
    assert [(r["index"], r["seq"], r["code"]) for r in body["rejected"]] == [
        (2, 10, "out_of_range"),
        (3, 11, "unknown_metric"),
        (4, 12, "unknown_unit"),
        (5, 13, "invalid_reading"),
        (7, 15, "future_sample_time"),
        (8, None, "invalid_reading"),
    ]
    assert all(r["detail"] for r in body["rejected"])
    assert body["ingest_time"].endswith("Z")
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2, 3, 14]


async def test_200_rejects_items_older_than_the_horizon_as_too_old():
    # Contract section 1: late data is stored back to PERFUSE_INGEST_MAX_AGE_DAYS (default 30).
    dev = await make_device(patient="p-horizon")
    day = 86400
    items = [
        factories.reading(1, ago(31 * day)),
        factories.reading(2, ago(29 * day)),
        factories.reading(3, ago(5)),
        factories.reading(4, ago(400 * day)),
    ]
    response = await send(AsyncClient(), dev, items)
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["seq"], r["code"]) for r in body["rejected"]] == [(0, 1, "too_old"), (3, 4, "too_old")]
    assert all("30 days" in r["detail"] for r in body["rejected"])
    assert [r[0] for r in await stored(dev.device_id)] == [2, 3]


async def test_the_ingest_horizon_is_a_setting(settings):
    settings.PERFUSE_INGEST_MAX_AGE_DAYS = 2
    dev = await make_device()
    items = [factories.reading(1, ago(2 * 86400 + 60)), factories.reading(2, ago(2 * 86400 - 60))]
    body = (await send(AsyncClient(), dev, items)).json()
    assert body["accepted"] == 1
    assert [(r["seq"], r["code"]) for r in body["rejected"]] == [(1, "too_old")]


async def test_200_carries_rate_limit_headers():
    dev = await make_device()
    response = await send(AsyncClient(), dev, factories.series(1, 10))
    assert response.status_code == 200
    assert int(response["X-RateLimit-Limit"]) >= int(response["X-RateLimit-Remaining"]) >= 0
    assert int(response["X-RateLimit-Reset"]) >= 0


# --- 400 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b'{"schema": "perfuse.readings/2", "device_id": "DEV", "readings": []}', "wrong_schema"),
        (b'{"schema": "perfuse.readings/1", "device_id": "DEV"}', "invalid_batch"),
        (b'{"schema": "perfuse.readings/1", "device_id": "DEV", "readings": {"seq": 1}}', "invalid_batch"),
        (b'{"schema": "perfuse.readings/1", "device_id": "DEV", "readings": [], "extra": 1}', "invalid_batch"),
        (b'[{"schema": "perfuse.readings/1"}]', "invalid_batch"),
        (
            b'{"schema": "perfuse.readings/1", "device_id": "DEV", "firmware": "fw\\u0000", "readings": []}',
            "invalid_batch",
        ),
        (b'{"schema": "perfuse.readings/1", "device_id": "DEV", "firmware": "\xff", "readings": []}', "invalid_batch"),
        (b'{"schema": "perfuse.readings/1", "device_id": "DEV", "readings": [%s]}' % (b"[" * 100_000), "invalid_batch"),
        (
            b'{"schema": "perfuse.readings/1", "device_id": "DEV", "firmware": "\\ud800", "readings": []}',
            "invalid_batch",
        ),
        (b'{"schema": "perfuse.readings/1", "device_id": "DEV", "readings": [NaN]}', "malformed_json"),
    ],
    ids=[
        "syntax",
        "not-utf8",
        "schema",
        "no-readings",
        "readings-object",
        "extra",
        "array",
        "nul",
        "bad-utf8",
        "deep",
        "surrogate",
        "nan",
    ],
)
async def test_400_bad_envelope(body: bytes, code: str):
    dev = await make_device()
    body = body.replace(b"DEV", dev.device_id.encode())
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 400
    assert error_code(response) == code
    assert await reading_count() == 0


# --- 401 -----------------------------------------------------------------------------------------


async def _valid(dev: factories.SimDevice) -> tuple[bytes, dict[str, str]]:
    body = factories.batch_body(dev, factories.series(1, 2))
    return body, dev.sign(body)


@pytest.mark.parametrize("missing", ["X-Perfuse-Key", "X-Perfuse-Timestamp", "X-Perfuse-Signature"])
async def test_401_missing_credentials(missing: str):
    dev = await make_device()
    body, headers = await _valid(dev)
    del headers[missing]
    response = await post(AsyncClient(), dev, body, headers=headers)
    assert response.status_code == 401 and error_code(response) == "missing_credentials"


@pytest.mark.parametrize(
    ("header", "value", "code"),
    [
        ("X-Perfuse-Key", "k" * 65, "malformed_credentials"),
        ("X-Perfuse-Key", "k_\x00nul", "malformed_credentials"),
        ("X-Perfuse-Key", "k_ünïcode", "malformed_credentials"),
        ("X-Perfuse-Timestamp", "12.5", "malformed_credentials"),
        ("X-Perfuse-Timestamp", "-1", "malformed_credentials"),
        ("X-Perfuse-Timestamp", "\xb9\xb2\xb3", "malformed_credentials"),  # superscript digits
        ("X-Perfuse-Signature", "not base64!", "malformed_signature"),
        ("X-Perfuse-Signature", base64.b64encode(b"short").decode(), "malformed_signature"),
        ("X-Perfuse-Signature", base64.urlsafe_b64encode(b"\xfb" * 64).decode().rstrip("="), "malformed_signature"),
        ("X-Perfuse-Key", "k_doesnotexist", "unknown_key"),
        ("X-Perfuse-Signature", base64.b64encode(b"\x00" * 64).decode(), "bad_signature"),
    ],
)
async def test_401_malformed_unknown_or_wrongly_signed(header: str, value: str, code: str):
    dev = await make_device()
    body, headers = await _valid(dev)
    headers[header] = value
    response = await post(AsyncClient(), dev, body, headers=headers)
    assert response.status_code == 401 and error_code(response) == code


async def test_401_signature_of_other_body_or_other_key():
    dev, other = await make_device(), await make_device()
    body, headers = await _valid(dev)
    tampered = body.replace(b"62.5", b"12.5")
    response = await post(AsyncClient(), dev, tampered, headers=headers)
    assert response.status_code == 401 and error_code(response) == "bad_signature"
    # Signed by another device's private key but presenting this device's key id.
    forged = {**other.sign(body), "X-Perfuse-Key": dev.key_id}
    response = await post(AsyncClient(), dev, body, headers=forged)
    assert response.status_code == 401 and error_code(response) == "bad_signature"


@pytest.mark.parametrize("offset", [-302, 302, -86400])  # a second of slack for the clock turning
async def test_401_stale_timestamp(offset: int):
    dev = await make_device()
    body = factories.batch_body(dev, factories.series(1, 2))
    response = await post(AsyncClient(), dev, body, headers=dev.sign(body, stamp=int(time.time()) + offset))
    assert response.status_code == 401 and error_code(response) == "stale_timestamp"


async def test_401_revoked_key_takes_effect_at_once():
    dev = await make_device()
    client = AsyncClient()
    assert (await send(client, dev, factories.series(1, 2))).status_code == 200
    await sync_to_async(device_key_revoke)(key_id=dev.key_id)
    response = await send(client, dev, factories.series(3, 2))
    assert response.status_code == 401 and error_code(response) == "revoked_key"
    assert len(await stored(dev.device_id)) == 2


# --- 403 / 413 / 415 -----------------------------------------------------------------------------


async def test_403_device_id_of_another_device():
    dev, other = await make_device(), await make_device()
    body = factories.batch_body(other, factories.series(1, 2))
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 403 and error_code(response) == "device_mismatch"
    assert await reading_count() == 0


async def test_413_body_above_one_mebibyte():
    dev = await make_device()
    body = factories.batch_body(dev, factories.series(1, 2), batch_id=None, pad="x" * (1024 * 1024))
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 413 and error_code(response) == "body_too_large"


async def test_413_more_than_5000_readings():
    dev = await make_device()
    body = factories.batch_body(
        dev, [factories.reading(i, metric="battery", value=3700, unit="mV") for i in range(5001)]
    )
    assert len(body) < 1024 * 1024
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 413 and error_code(response) == "too_many_readings"
    assert await reading_count() == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_415_not_json(content_type: str):
    dev = await make_device()
    body, headers = await _valid(dev)
    response = await post(AsyncClient(), dev, body, headers=headers, content_type=content_type)
    assert response.status_code == 415 and error_code(response) == "unsupported_media_type"


async def test_json_with_charset_parameter_is_accepted():
    dev = await make_device()
    body, headers = await _valid(dev)
    response = await post(AsyncClient(), dev, body, headers=headers, content_type="application/json; charset=utf-8")
    assert response.status_code == 200


async def test_405_other_methods_answer_json():
    response = await AsyncClient().get(URL)
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"


# --- 429 -----------------------------------------------------------------------------------------


async def test_429_device_bucket_is_atomic_under_concurrent_requests(settings):
    settings.PERFUSE_RATE_DEVICE_BURST = 1000
    settings.PERFUSE_RATE_DEVICE_PER_SECOND = 1  # refill during the test is far below one batch
    dev = await make_device()
    client = AsyncClient()
    bodies = [factories.batch_body(dev, factories.series(i * 100, 100)) for i in range(24)]
    responses = await asyncio.gather(*(post(client, dev, b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    # Exactly burst / cost requests fit: a read-then-write limiter would let more slip through.
    assert statuses == [200] * 10 + [429] * 14
    for r in responses:
        assert int(r["X-RateLimit-Limit"]) == 1000
        assert 0 <= int(r["X-RateLimit-Remaining"]) <= 900
        if r.status_code == 429:
            assert int(r["X-RateLimit-Remaining"]) < 100
            assert error_code(r) == "rate_limited"
            assert int(r["Retry-After"]) >= 1
            assert int(r["X-RateLimit-Reset"]) >= 1
    assert await reading_count() == 1000


async def test_429_site_bucket_is_shared_by_devices_of_a_site(settings):
    settings.PERFUSE_RATE_SITE_BURST = 300
    settings.PERFUSE_RATE_SITE_PER_SECOND = 1
    ward = await sync_to_async(factories.ward)(site="north")
    a, b = await make_device(ward.code), await make_device(ward.code)
    client = AsyncClient()
    assert (await send(client, a, factories.series(1, 200))).status_code == 200
    limited = await send(client, b, factories.series(1, 200))
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"
    assert limited["X-RateLimit-Limit"] == "300" and int(limited["Retry-After"]) >= 90
    other_site = await make_device()
    assert (await send(client, other_site, factories.series(1, 200))).status_code == 200


# --- payload hardening ---------------------------------------------------------------------------


async def test_hostile_items_are_rejected_one_by_one_never_5xx():
    dev = await make_device()
    good = factories.reading(1)
    hostile: list[object] = [
        {**factories.reading(2), "seq": True},
        {**factories.reading(3), "value": True},
        {**factories.reading(6), "seq": -1},
        {**factories.reading(7), "calibration_id": "cal\u0000x"},
        {**factories.reading(8), "sample_time": "0001-01-01T00:00:00+01:00"},
        {**factories.reading(9), "sample_time": "2026-01-18T14:32:12"},  # no offset
        {**factories.reading(10), "signal_quality": 1.5},
        {**factories.reading(11), "metric": "tissue_o2\u0000"},
        {**factories.reading(12), "unit": "%" * 10_000},
        {**factories.reading(13), "value": None},
        {"seq": 14, **{f"k{i}": i for i in range(50)}},
        [],
        None,
        42,
    ]
    body = factories.batch_body(dev, [good, *hostile])
    # JSON that orjson will not write for us: huge numbers and invalid UTF-8 inside one item.
    t = good["sample_time"].encode()
    raw = [
        b'{"seq":4,"sample_time":"%s","metric":"tissue_o2","value":1%s,"unit":"%%"}' % (t, b"0" * 30),
        b'{"seq":18446744073709551616,"sample_time":"%s","metric":"tissue_o2","value":1,"unit":"%%"}' % t,
        b'{"seq":15,"sample_time":"%s","metric":"tissue_o2","value":1e999999,"unit":"%%"}' % t,
        b'{"seq":16,"sample_time":"%s","metric":"\xff","value":1,"unit":"%%"}' % t,
        b'{"seq":17,"sample_time":"%s","metric":"tissue_o2","value":1,"unit":"%%","calibration_id":"\\udc00"}' % t,
    ]
    body = body[: body.rindex(b"]}")] + b"," + b",".join(raw) + b"]}"
    hostile += raw
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["accepted"] == 1
    assert [r["index"] for r in result["rejected"]] == list(range(1, len(hostile) + 1))
    assert [r["seq"] for r in result["rejected"][:2]] == [None, 3]  # a bool is not a seq
    assert result["rejected"][3]["seq"] == 7
    assert result["rejected"][-5]["seq"] == 4  # rejected as out of range, seq still reported
    assert result["rejected"][-5]["code"] == "out_of_range"
    assert result["rejected"][-3]["code"] == "invalid_reading"  # 1e999999 is no double
    assert result["rejected"][-1]["seq"] == 17 and result["rejected"][-1]["code"] == "invalid_reading"
    assert len(await stored(dev.device_id)) == 1


async def test_duplicate_readings_inside_one_batch_are_stored_once():
    dev = await make_device()
    item = factories.reading(1)
    body = factories.batch_body(dev, [item, item, {**item, "value": 70.0}])
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 200
    assert response.json()["accepted"] == 1 and response.json()["duplicates"] == 2
    assert [r[3] for r in await stored(dev.device_id)] == [62.5]


async def test_duplicate_json_keys_take_the_last_value():
    dev = await make_device()
    t = factories.reading(1)["sample_time"]
    body = (
        b'{"schema":"perfuse.readings/1","device_id":"%s","readings":[{"seq":1,"seq":2,"sample_time":"%s",'
        b'"metric":"tissue_o2","value":60,"unit":"%%"}]}' % (dev.device_id.encode(), t.encode())
    )
    response = await post(AsyncClient(), dev, body)
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert [r[0] for r in await stored(dev.device_id)] == [2]


async def test_empty_batch_is_fine():
    dev = await make_device()
    response = await send(AsyncClient(), dev, [])
    assert response.status_code == 200
    assert orjson.loads(response.content)["accepted"] == 0
