"""Edge gateways (contract section 1c): `POST /api/v1/ingest/gateway` through the ASGI stack, and the
door-free `gateway_handle` the MQTT bridge calls."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import yaml
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.test import AsyncClient, Client

from config import live
from config.asgi import application
from telemetry import db as telemetry_db
from telemetry.ingest import group as group_module
from telemetry.ingest.gateway import gateway_handle
from telemetry.services import device_key_revoke, gateway_key_revoke
from tests import factories
from tests.ingest_helpers import ago, query, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

URL = "/api/v1/ingest/gateway"
DAY = 86400

make_device = sync_to_async(factories.device)
make_gateway = sync_to_async(factories.gateway)
make_ward = sync_to_async(factories.ward)


async def post(gw: factories.SimGateway, inners: list[dict[str, Any]], **kwargs: Any) -> Any:
    body = gw.envelope(inners)
    return await post_body(gw, body, **kwargs)


async def post_body(gw: factories.SimGateway, body: bytes, *, stamp: int | None = None) -> Any:
    return await AsyncClient().post(URL, body, content_type="application/json", headers=gw.sign(body, stamp))


def device_batch(dev: factories.SimDevice, first: int, n: int, **envelope: Any) -> bytes:
    return factories.batch_body(dev, factories.series(first, n, start=ago(600)), **envelope)


def codes(response: Any) -> list[tuple[int, int, str | None]]:
    assert response.status_code == 200, response.content
    return [(r["index"], r["status"], (r.get("error") or {}).get("code")) for r in response.json()["results"]]


async def test_a_valid_gateway_batch_stores_each_device_in_one_transaction():
    ward = await make_ward()
    a, b = await make_device(ward.code, patient="p-gw-a"), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    response = await post(
        gw, [factories.inner(a, device_batch(a, 1, 5, batch_id="a-1")), factories.inner(b, device_batch(b, 1, 3))]
    )
    assert codes(response) == [(0, 200, None), (1, 200, None)]
    body = response.json()
    assert body["gateway_id"] == gw.device_id
    first, second = body["results"]
    assert (first["device_id"], first["batch_id"], first["accepted"], first["duplicates"]) == (a.device_id, "a-1", 5, 0)
    assert (second["device_id"], second["accepted"], second["rejected"]) == (b.device_id, 3, [])
    assert first["ingest_time"].endswith("Z")
    assert len(await stored(a.device_id)) == 5 and len(await stored(b.device_id)) == 3
    # One commit for the gateway message: both devices' ingest-log rows carry one transaction id.
    rows = await query("SELECT DISTINCT txid FROM telemetry_ingest_log")
    assert len(rows) == 1


async def test_item_rejections_inside_an_inner_batch_are_what_section_1_answers():
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    items = [factories.reading(1, ago(30)), {**factories.reading(2, ago(29)), "value": 250.0}]
    response = await post(gw, [factories.inner(dev, factories.batch_body(dev, items))])
    (result,) = response.json()["results"]
    assert (result["status"], result["accepted"]) == (200, 1)
    assert [(r["index"], r["seq"], r["code"]) for r in result["rejected"]] == [(1, 2, "out_of_range")]


async def test_a_forged_inner_signature_is_refused_and_its_neighbours_stored():
    ward = await make_ward()
    dev, victim = await make_device(ward.code), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    forged = factories.inner(dev, device_batch(victim, 1, 4))  # dev's signature over victim's batch
    forged["key"] = victim.key_id
    tampered = factories.inner(dev, device_batch(dev, 10, 2))
    tampered["body"] = base64.b64encode(device_batch(dev, 10, 3)).decode()  # body changed after signing
    response = await post(gw, [forged, factories.inner(dev, device_batch(dev, 1, 2)), tampered])
    assert codes(response) == [(0, 401, "bad_signature"), (1, 200, None), (2, 401, "bad_signature")]
    assert response.json()["results"][0]["device_id"] == victim.device_id
    assert await stored(victim.device_id) == []
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2]


async def test_inner_batches_refused_one_by_one_with_section_1_codes():
    ward = await make_ward()
    dev, other = await make_device(ward.code), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    revoked = await make_device(ward.code)
    await sync_to_async(device_key_revoke)(key_id=revoked.key_id)
    good = factories.inner(dev, device_batch(dev, 1, 2))
    mismatch = factories.inner(dev, device_batch(other, 1, 2))  # signed by dev's key, claims another device
    unknown = {**factories.inner(dev, device_batch(dev, 5, 1)), "key": "k_nobody"}
    bad_base64 = {**factories.inner(dev, device_batch(dev, 6, 1)), "body": "not base64!"}
    not_json = factories.inner(dev, b"{oops")
    response = await post(
        gw,
        [
            good,
            mismatch,
            unknown,
            bad_base64,
            not_json,
            {"key": dev.key_id},
            factories.inner(revoked, device_batch(revoked, 1, 1)),
            {**good, "signature": "short"},
        ],
    )
    assert codes(response) == [
        (0, 200, None),
        (1, 403, "device_mismatch"),
        (2, 401, "unknown_key"),
        (3, 400, "invalid_batch"),
        (4, 400, "malformed_json"),
        (5, 400, "invalid_batch"),
        (6, 401, "revoked_key"),
        (7, 401, "malformed_signature"),
    ]
    assert all(r["error"]["detail"] for r in response.json()["results"][1:])
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2]


async def test_a_gateway_carries_only_devices_of_its_ward_or_site():
    ward, neighbour = await make_ward(site="north"), await make_ward(site="north")
    far = await make_ward(site="south")
    own, next_door, elsewhere = (
        await make_device(ward.code),
        await make_device(neighbour.code),
        await make_device(far.code),
    )
    inners = [factories.inner(d, device_batch(d, 1, 2)) for d in (own, next_door, elsewhere)]
    hub = await make_gateway(ward.code)
    assert codes(await post(hub, inners)) == [(0, 200, None), (1, 403, "foreign_device"), (2, 403, "foreign_device")]
    site_hub = await make_gateway(ward.code, scope="site")
    response = await post(site_hub, inners)
    assert codes(response) == [(0, 200, None), (1, 200, None), (2, 403, "foreign_device")]
    assert [r.get("accepted") for r in response.json()["results"]] == [0, 2, None]  # own: already stored
    assert await stored(elsewhere.device_id) == []


async def test_inner_timestamps_may_be_a_day_old_not_older(settings):
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    now = int(time.time())
    response = await post(
        gw,
        [
            factories.inner(dev, device_batch(dev, 1, 1), stamp=now - DAY + 60),  # buffered for almost a day
            factories.inner(dev, device_batch(dev, 2, 1), stamp=now - DAY - 60),  # beyond the day
            factories.inner(dev, device_batch(dev, 3, 1), stamp=now + 400),  # ahead of the clock
        ],
    )
    assert codes(response) == [(0, 200, None), (1, 401, "stale_timestamp"), (2, 401, "stale_timestamp")]
    assert "86400 s" in response.json()["results"][1]["error"]["detail"]
    settings.PERFUSE_GATEWAY_MAX_BUFFER_SECONDS = 3600
    response = await post(gw, [factories.inner(dev, device_batch(dev, 4, 1), stamp=now - 7200)])
    assert codes(response) == [(0, 401, "stale_timestamp")]
    assert [r[0] for r in await stored(dev.device_id)] == [1]


async def test_limits_apply_to_the_whole_request():
    ward = await make_ward()
    a, b = await make_device(ward.code), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    half = [factories.reading(i, ago(3000 - i / 2)) for i in range(2501)]
    over = [factories.inner(a, factories.batch_body(a, half)), factories.inner(b, factories.batch_body(b, half))]
    response = await post(gw, over)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_readings"
    padding = factories.batch_body(a, [factories.reading(1, ago(5), calibration_id="c" * 60)] * 4000)
    huge = gw.envelope([factories.inner(a, padding)] * 2)
    assert len(huge) > 1024 * 1024
    response = await post_body(gw, huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert await stored(a.device_id) == [] and await stored(b.device_id) == []


async def test_the_outer_request_is_signed_by_the_gateways_own_key():
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw, other = await make_gateway(ward.code), await make_gateway(ward.code)
    inners = [factories.inner(dev, device_batch(dev, 1, 2))]
    body = gw.envelope(inners)
    cases = [
        (dev.sign(body), 401, "unknown_key"),  # a device key cannot sign for a gateway
        ({**gw.sign(body), "X-Perfuse-Signature": other.sign(body)["X-Perfuse-Signature"]}, 401, "bad_signature"),
        (other.sign(body), 403, "gateway_mismatch"),  # a valid key of another gateway
        ({}, 401, "missing_credentials"),
    ]
    for headers, status, code in cases:
        response = await AsyncClient().post(URL, body, content_type="application/json", headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    await sync_to_async(gateway_key_revoke)(key_id=gw.key_id)
    response = await post_body(gw, body)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "revoked_key")
    assert await stored(dev.device_id) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b'{"schema": "perfuse.readings/1", "gateway_id": "GW", "batches": []}', "wrong_schema"),
        (b'{"schema": "perfuse.gateway/1", "gateway_id": "GW"}', "invalid_batch"),
        (b'{"schema": "perfuse.gateway/1", "gateway_id": "GW", "batches": {}}', "invalid_batch"),
    ],
)
async def test_a_malformed_outer_body_is_a_400(body: bytes, code: str):
    gw = await make_gateway((await make_ward()).code)
    body = body.replace(b'"GW"', orjson.dumps(gw.device_id))
    response = await post_body(gw, body)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)


async def test_a_retransmitted_gateway_batch_stores_nothing_twice():
    ward = await make_ward()
    a, b = await make_device(ward.code, patient="p-gw-retx"), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    inners = [factories.inner(a, device_batch(a, 1, 4)), factories.inner(b, device_batch(b, 1, 2))]
    body = gw.envelope(inners)
    first, again = await post_body(gw, body), await post_body(gw, body)  # the ack was lost: same bytes
    assert [(r["accepted"], r["duplicates"]) for r in first.json()["results"]] == [(4, 0), (2, 0)]
    assert [(r["accepted"], r["duplicates"]) for r in again.json()["results"]] == [(0, 4), (0, 2)]
    # The same device batch twice in one request: stored once, counted as duplicates the second time.
    twice = factories.inner(a, device_batch(a, 10, 3))
    response = await post(gw, [twice, factories.inner(b, device_batch(b, 10, 1)), twice])
    assert [(r["accepted"], r["duplicates"]) for r in response.json()["results"]] == [(3, 0), (1, 0), (0, 3)]
    assert len(await stored(a.device_id)) == 7 and len(await stored(b.device_id)) == 3


async def test_a_replayed_outer_request_is_stale_and_a_replayed_inner_batch_a_duplicate():
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    captured = factories.inner(dev, device_batch(dev, 1, 3))
    body = gw.envelope([captured])
    old = int(time.time()) - 400
    response = await post_body(gw, body, stamp=old)  # replayed after the outer window
    assert (response.status_code, response.json()["error"]["code"]) == (401, "stale_timestamp")
    assert await stored(dev.device_id) == []
    assert codes(await post(gw, [captured])) == [(0, 200, None)]
    # A gateway (or an eavesdropper holding a gateway key) sends the device's captured batch again.
    thief = await make_gateway(ward.code)
    response = await post(thief, [captured])
    assert [(r["accepted"], r["duplicates"]) for r in response.json()["results"]] == [(0, 3)]
    assert len(await stored(dev.device_id)) == 3


async def test_an_inner_batch_over_the_rate_limit_gets_a_429_with_retry_after(settings):
    settings.PERFUSE_RATE_DEVICE_BURST = 5
    settings.PERFUSE_RATE_DEVICE_PER_SECOND = 1
    ward = await make_ward()
    busy, calm = await make_device(ward.code), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    response = await post(
        gw, [factories.inner(busy, device_batch(busy, 1, 6)), factories.inner(calm, device_batch(calm, 1, 2))]
    )
    assert codes(response) == [(0, 429, "rate_limited"), (1, 200, None)]
    assert response.json()["results"][0]["retry_after"] >= 1
    assert await stored(busy.device_id) == []


async def test_the_inner_batches_take_from_their_buckets_in_order_in_one_round_trip(settings):
    """One pipelined take for the whole message, charged in the message's order: a device twice
    in it pays twice, as two requests would, and only the batch past the burst is refused."""
    settings.PERFUSE_RATE_DEVICE_BURST = 5
    settings.PERFUSE_RATE_DEVICE_PER_SECOND = 1
    ward = await make_ward()
    dev, other = await make_device(ward.code), await make_device(ward.code)
    gw = await make_gateway(ward.code)
    response = await post(
        gw,
        [
            factories.inner(dev, device_batch(dev, 1, 3)),
            factories.inner(other, device_batch(other, 1, 3)),
            factories.inner(dev, device_batch(dev, 4, 3)),
        ],
    )
    assert codes(response) == [(0, 200, None), (1, 200, None), (2, 429, "rate_limited")]
    assert len(await stored(dev.device_id)) == 3 and len(await stored(other.device_id)) == 3


async def test_gateway_handle_is_door_free_and_checks_the_addressed_gateway():
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    body = gw.envelope([factories.inner(dev, device_batch(dev, 1, 2))])
    headers = {name.lower(): value for name, value in gw.sign(body).items()}
    wrong = await gateway_handle(body=body, headers=headers, gateway_id="another-hub")
    assert (wrong.status, wrong.body["error"]["code"]) == (403, "gateway_mismatch")
    answer = await gateway_handle(body=body, headers=headers, gateway_id=gw.device_id)
    assert answer.status == 200 and answer.body["results"][0]["accepted"] == 2
    huge = await gateway_handle(body=b" " * (1024 * 1024 + 1), headers=headers)
    assert (huge.status, huge.body["error"]["code"]) == (413, "body_too_large")


async def test_the_raw_asgi_path_answers_as_the_django_view():
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    body = gw.envelope([factories.inner(dev, device_batch(dev, 1, 3))])
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as fast:
        via_fast = await fast.post(URL, content=body, headers={**gw.sign(body), "Content-Type": "application/json"})
        refused = await fast.post(URL, content=body, headers={**gw.sign(body), "Content-Type": "text/plain"})
    via_django = await post_body(gw, body)
    assert via_fast.status_code == 200 and via_fast.json()["results"][0]["accepted"] == 3
    assert via_django.json()["results"][0]["duplicates"] == 3
    assert (refused.status_code, refused.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_provision_gateway_prints_its_key_and_refuses_a_device_id(capsys):
    ward = factories.ward()
    call_command("provision_gateway", "hub-icu-1", "--ward", ward.code, "--json")
    out = orjson.loads(capsys.readouterr().out)
    assert out["gateway_id"] == "hub-icu-1" and out["key_id"].startswith("g_")
    assert "PRIVATE KEY" in out["private_key_pem"]
    dev = factories.device(ward.code)
    with pytest.raises(Exception, match="is a device id"):
        call_command("provision_gateway", dev.device_id, "--ward", ward.code)
    call_command("revoke_gateway_key", out["key_id"], "--json")
    assert orjson.loads(capsys.readouterr().out)["key_id"] == out["key_id"]


def test_the_openapi_schema_describes_the_gateway_endpoint():
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    operation = schema["paths"][URL]["post"]
    assert {p["name"] for p in operation["parameters"]} == {
        "X-Perfuse-Key",
        "X-Perfuse-Timestamp",
        "X-Perfuse-Signature",
    }
    assert set(operation["responses"]) == {"200", "400", "401", "403", "405", "413", "415", "503"}
    assert "`gateway_mismatch`" in operation["responses"]["403"]["description"]
    assert "`foreign_device`" in operation["responses"]["200"]["description"]
    readings_403 = schema["paths"]["/api/v1/ingest/readings"]["post"]["responses"]["403"]["description"]
    assert "gateway_mismatch" not in readings_403
    components = schema["components"]["schemas"]
    inner = components["GatewayBatch"]["properties"]["batches"]["items"]
    assert inner == {"$ref": "#/components/schemas/GatewayInnerBatch"}
    assert set(components["GatewayInnerBatch"]["required"]) == {"key", "timestamp", "signature", "body"}
    item = components["GatewayItemResult"]
    assert set(item["required"]) == {"index", "device_id", "status"}
    assert {"accepted", "duplicates", "rejected", "error", "retry_after"} <= set(item["properties"])


async def test_a_database_outage_answers_the_whole_request_503(settings, monkeypatch):
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    settings.PERFUSE_INGEST_POOL_TIMEOUT_SECONDS = 0.5
    monkeypatch.setattr(telemetry_db, "_conninfo", lambda: {"host": "127.0.0.1", "port": 1, "dbname": "x"})
    response = await post(gw, [factories.inner(dev, device_batch(dev, 1, 2))])
    assert (response.status_code, response.json()["error"]["code"]) == (503, "storage_unavailable")
    assert int(response["Retry-After"]) >= 1


async def test_each_patient_behind_a_gateway_gets_its_live_frame_after_the_commit():
    ward = await make_ward()
    a, b = await make_device(ward.code, patient="p-gw-live-a"), await make_device(ward.code, patient="p-gw-live-b")
    gw = await make_gateway(ward.code)
    layer = get_channel_layer()
    channels = {}
    for pseudonym in ("p-gw-live-a", "p-gw-live-b"):
        channels[pseudonym] = await layer.new_channel()
        await layer.group_add(live.patient_group(pseudonym), channels[pseudonym])
    inners = [factories.inner(d, device_batch(d, 1, n)) for d, n in ((a, 3), (b, 2))]
    assert codes(await post(gw, inners)) == [(0, 200, None), (1, 200, None)]
    for pseudonym, device, n in (("p-gw-live-a", a, 3), ("p-gw-live-b", b, 2)):
        frame = await asyncio.wait_for(layer.receive(channels[pseudonym]), timeout=5)
        assert frame["type"] == "reading.batch" and frame["patient"] == pseudonym
        assert frame["ranges"] == [{"device": device.device_id, "first": 1, "last": n}]


async def test_one_devices_several_inner_batches_share_the_one_transaction():
    # A gateway's offline backlog: the device's batches, overlapping, in one message; each is
    # credited with the readings it was first to carry, and one commit stores them all.
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    items = factories.series(1, 5, start=ago(600))
    backlog = [factories.batch_body(dev, items[:3]), factories.batch_body(dev, items[1:])]
    response = await post(gw, [factories.inner(dev, body) for body in backlog])
    assert codes(response) == [(0, 200, None), (1, 200, None)]
    first, second = response.json()["results"]
    assert (first["accepted"], first["duplicates"]) == (3, 0)
    assert (second["accepted"], second["duplicates"]) == (2, 2)
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2, 3, 4, 5]
    assert len(await query("SELECT DISTINCT txid FROM telemetry_ingest_log")) == 1


async def test_storage_lost_inside_the_transaction_answers_503_and_stores_nothing(monkeypatch):
    # The database failing inside the message's one transaction (a moment no real outage can be
    # timed to, hence the stand-in for the step that keeps the signed batches) rolls all of it
    # back; the whole request is answered 503, and sent again it stores everything once.
    ward = await make_ward()
    dev = await make_device(ward.code)
    gw = await make_gateway(ward.code)
    real = group_module.batches_keep

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    inners = [factories.inner(dev, device_batch(dev, 1, 2)), factories.inner(dev, device_batch(dev, 3, 2))]
    monkeypatch.setattr(group_module, "batches_keep", failing)
    response = await post(gw, inners)
    assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
    assert await stored(dev.device_id) == []
    monkeypatch.setattr(group_module, "batches_keep", real)
    response = await post(gw, inners)
    assert codes(response) == [(0, 200, None), (1, 200, None)]
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2, 3, 4]
