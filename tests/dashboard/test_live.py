"""Live sockets through the full ASGI application: authorization, snapshot then deltas, coalescing,
the bounded buffer with its resync marker, revocation and periodic re-checks.

Every frame received is decoded against its typed schema (dashboard/schemas.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from config import live
from config.asgi import application
from dashboard import schemas
from dashboard.consumers import coalesce
from tests import factories
from tests.live_support import HANDSHAKE, audit_events, insert_readings, patient, persona

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]


def _setup(n_points: int = 5) -> dict[str, Any]:
    ward_a = factories.ward("icu-a")
    ward_b = factories.ward("icu-b")
    p1, dev = patient("p-one", ward_a)
    now = dt.datetime.now(dt.UTC)
    insert_readings(p1, dev, [(now - dt.timedelta(seconds=n_points - i), 60.0 + i) for i in range(n_points)])
    return {
        "ward_a": ward_a,
        "clinician": persona("clinician", ward_a),
        "other": persona("clinician", ward_b),
        "compliance": persona("compliance"),
        "device": dev,
    }


setup = sync_to_async(_setup)


async def _open(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect()
    assert connected
    return comm


async def _frame(comm: WebsocketCommunicator, timeout: float = 3) -> dict[str, Any]:
    text = await comm.receive_from(timeout=timeout)
    schemas.frame_decoder.decode(text)  # raises if the frame drifts from its schema
    return orjson.loads(text)


def _batch(pseudonym: str, device: str, first: int, n: int, start: dt.datetime | None = None) -> dict[str, Any]:
    start = start or dt.datetime.now(dt.UTC)
    return {
        "type": "reading.batch",
        "patient": pseudonym,
        "ranges": [{"device": device, "first": first, "last": first + n - 1}],
        "points": [
            {
                "t": (start + dt.timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "metric": "tissue_o2",
                "value": 55.0,
                "quality": 0.9,
                "seq": first + i,
            }
            for i in range(n)
        ],
    }


@pytest.mark.parametrize("who", ["anonymous", "unverified", "other", "compliance"])
async def test_refused_with_4403_and_audited(who):
    data = await setup()
    if who == "anonymous":
        headers = list(HANDSHAKE)
    else:
        persona_ = data["clinician"] if who == "unverified" else data[who]
        headers = await sync_to_async(persona_.ws_headers)(verified=who != "unverified")
    comm = await _open("/ws/patients/p-one/live", headers)
    closed = await comm.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4403}
    events_ = await sync_to_async(audit_events)("live.subscribe")
    expected = {"anonymous": "not_authenticated", "unverified": "mfa_required", "other": "other_ward"}
    assert [(e.outcome, e.subject) for e in events_] == [("denied", "p-one")]
    assert events_[0].detail["reason"] == expected.get(who, "role_compliance")


async def test_snapshot_then_ingested_reading_arrives_as_delta():
    data = await setup(n_points=5)
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/patients/p-one/live", headers)
    snapshot = await _frame(comm)
    assert snapshot["type"] == "snapshot" and snapshot["patient"] == "p-one"
    assert [p["value"] for p in snapshot["points"]] == [60.0, 61.0, 62.0, 63.0, 64.0]
    assert snapshot["ranges"] == [{"device": "dev-p-one", "first": 1, "last": 5}]
    [event] = await sync_to_async(audit_events)("live.subscribe")
    assert event.outcome == "allowed" and event.actor_id == data["clinician"].user.pk

    # A reading posted through the real ingest API reaches the socket, with its seq range.
    dev = await sync_to_async(_sim_device)(data["device"])
    body = factories.batch_body(dev, [factories.reading(6, value=47.5), factories.reading(7, value=48.0)])
    r = await AsyncClient().post("/api/v1/ingest/readings", body, content_type="application/json", **_h(dev, body))
    assert r.status_code == 200 and r.json()["accepted"] == 2
    delta = await _frame(comm)
    assert delta["type"] == "reading.batch"
    assert delta["ranges"] == [{"device": "dev-p-one", "first": 6, "last": 7}]
    assert [p["value"] for p in delta["points"]] == [47.5, 48.0]
    await comm.disconnect()


def _sim_device(device: Any) -> factories.SimDevice:
    """A signing identity for an existing device: add a key, as a rotation would."""
    from cryptography.hazmat.primitives import serialization

    from telemetry.services import device_provision

    provisioned = device_provision(device_id=device.device_id, ward_code=device.ward.code)
    assert provisioned.private_key_pem is not None
    private = serialization.load_pem_private_key(provisioned.private_key_pem.encode(), password=None)
    return factories.SimDevice(device.device_id, provisioned.key.key_id, private, device.ward.code)  # type: ignore[arg-type]


def _h(dev: factories.SimDevice, body: bytes) -> dict[str, str]:
    return {"headers": dev.sign(body)}


async def test_frames_are_coalesced_per_socket():
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/patients/p-one/live", headers)
    await _frame(comm)  # snapshot
    for i in range(30):
        await live.publish_now([live.patient_group("p-one")], _batch("p-one", "dev-p-one", 100 + 2 * i, 2))
    points: list[dict[str, Any]] = []
    messages = 0
    while len(points) < 60:
        frame = await _frame(comm)
        messages += 1
        for f in frame["frames"] if frame["type"] == "frames" else [frame]:
            assert f["type"] == "reading.batch"
            points.extend(f["points"])
            # Contiguous ranges of one device are merged into one.
            assert len(f["ranges"]) == 1
    assert [p["seq"] for p in points] == list(range(100, 160))
    assert messages <= 5  # 30 events within a few ms: at most one message per 100 ms flush
    await comm.disconnect()


def test_coalescing_keeps_gaps_visible():
    a = _batch("p", "d1", 1, 3)
    b = _batch("p", "d1", 10, 2)  # seq 4..9 missing: the browser must see the hole
    c = _batch("p", "d1", 12, 1)
    [merged] = coalesce([a, b, c])
    assert merged["ranges"] == [{"device": "d1", "first": 1, "last": 3}, {"device": "d1", "first": 10, "last": 12}]
    assert len(merged["points"]) == 6


async def test_bounded_buffer_drops_oldest_and_sends_resync(settings):
    settings.PERFUSE_LIVE_MAX_PENDING_POINTS = 50
    settings.PERFUSE_LIVE_FLUSH_SECONDS = 1.0
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/patients/p-one/live", headers)
    await _frame(comm)  # snapshot
    # The first event is flushed at once; the next 20 batches of 10 points pile up for a second.
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(21):
        await live.publish_now(
            [live.patient_group("p-one")],
            _batch("p-one", "dev-p-one", 1000 + 10 * i, 10, start + dt.timedelta(seconds=10 * i)),
        )
    first = await _frame(comm)
    assert first["type"] == "reading.batch" and first["points"][0]["seq"] == 1000
    second = await _frame(comm)
    assert second["type"] == "frames"
    resync, batch = second["frames"]
    assert resync == {
        "type": "resync",
        "reason": "overflow",
        "patients": ["p-one"],
        "since": "2026-01-01T00:00:10.000Z",
    }
    seqs = [p["seq"] for p in batch["points"]]
    assert len(seqs) <= 50 and seqs[-1] == 1209  # newest kept, oldest dropped
    await comm.disconnect()


async def test_session_revocation_closes_the_socket():
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/patients/p-one/live", headers)
    await _frame(comm)
    await live.publish_now([live.user_group(data["clinician"].user.pk)], {"type": "session.revoked"})
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}


async def test_access_is_rechecked_while_connected(settings):
    settings.PERFUSE_LIVE_REJOIN_SECONDS = 0.2
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/patients/p-one/live", headers)
    await _frame(comm)
    await sync_to_async(data["clinician"].user.staff.wards.clear)()  # moved off the ward
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}


async def test_ward_socket_snapshot_then_tissue_o2_deltas_of_visible_patients():
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/ward/live", headers)
    snapshot = await _frame(comm)
    assert snapshot["type"] == "ward.snapshot"
    assert [c["pseudonym"] for c in snapshot["patients"]] == ["p-one"]
    assert snapshot["patients"][0]["value"] == 64.0
    batch = _batch("p-one", "dev-p-one", 50, 2)
    batch["points"].append({**batch["points"][0], "metric": "battery", "value": 3700.0, "seq": 52})
    stranger = _batch("p-stranger", "dev-x", 1, 1)  # not a patient this user may see
    await live.publish_now([live.ward_group("icu-a")], stranger)
    await live.publish_now([live.ward_group("icu-a")], batch)
    frame = await _frame(comm)
    assert frame["type"] == "reading.batch" and frame["patient"] == "p-one"
    assert [p["metric"] for p in frame["points"]] == ["tissue_o2", "tissue_o2"]
    [event] = await sync_to_async(audit_events)("ward.live.subscribe")
    assert event.outcome == "allowed" and event.detail["patients"] == ["p-one"]
    await comm.disconnect()


async def test_ward_socket_audits_a_patient_it_gains(settings):
    settings.PERFUSE_LIVE_REJOIN_SECONDS = 0.1
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/ward/live", headers)
    await _frame(comm)
    await sync_to_async(patient)("p-two", data["ward_a"])  # admitted while the overview is open
    # Whichever re-reads the membership first (the admission's patient.flow frame or the periodic
    # re-check) sends the resync; the patient.flow frame comes before or after it.
    frames: list[dict[str, Any]] = []
    while not any(f["type"] == "resync" for f in frames):
        message = await _frame(comm)
        frames.extend(message["frames"] if message["type"] == "frames" else [message])
    assert {f["type"] for f in frames} <= {"patient.flow", "resync"}
    resync = next(f for f in frames if f["type"] == "resync")
    assert resync["type"] == "resync" and resync["reason"] == "membership"
    [event] = await sync_to_async(audit_events)("ward.live.patients_added")
    assert event.outcome == "allowed" and event.detail["patients"] == ["p-two"]
    assert event.actor_username == data["clinician"].user.username
    await comm.disconnect()


async def test_ward_socket_refuses_unverified():
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)(verified=False)
    comm = await _open("/ws/ward/live", headers)
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}
    [event] = await sync_to_async(audit_events)("ward.live.subscribe")
    assert event.outcome == "denied" and event.detail["reason"] == "mfa_required"


async def test_periodic_rejoin_keeps_exactly_one_delivery(settings):
    settings.PERFUSE_LIVE_REJOIN_SECONDS = 0.05
    data = await setup()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    comm = await _open("/ws/patients/p-one/live", headers)
    await _frame(comm)
    await asyncio.sleep(0.4)  # several upkeep rounds: re-checks and group re-joins
    await live.publish_now([live.patient_group("p-one")], _batch("p-one", "dev-p-one", 500, 3))
    frame = await _frame(comm)
    assert [p["seq"] for p in frame["points"]] == [500, 501, 502]
    assert await comm.receive_nothing(timeout=0.3)  # re-joining never doubles a delivery
    await comm.disconnect()
