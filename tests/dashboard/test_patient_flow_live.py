"""Discharge and transfer as the staff sees them, through the full ASGI application, the real
channel layer (Redis) and PostgreSQL: open alarms resolve with cause `discharged`, the patient's
socket closes with 4410 and stays closed, the ward overview drops the card live, later readings of
the device are stored unassigned; a transfer ends the old ward's live view, keeps its history
readable for the time the patient was theirs, and reaches the new ward's (empty) overview.

Every frame received is decoded against its typed schema (dashboard/schemas.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from alerts.models import Alarm, AlarmTransition
from alerts.services import alarm_raise, rule_current_ward
from alerts.vocabulary import Kind, State
from config.asgi import application
from dashboard import schemas
from telemetry.models import Device, Patient, Reading
from telemetry.stays import patient_discharge, patient_transfer
from tests import factories
from tests.live_support import audit_events, insert_readings, persona

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]


def _setup() -> dict[str, Any]:
    ward_a, ward_b = factories.ward("icu-a"), factories.ward("icu-b")
    sim = factories.device(ward_a.code, device_id="dev-flow-1", patient="p-flow")
    patient = Patient.objects.select_related("ward").get(pseudonym="p-flow")
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient,
        rule=rule_current_ward(ward_a),
        kind=Kind.LOW,
        onset=now - dt.timedelta(minutes=2),
        now=now - dt.timedelta(minutes=1),
        explain={},
    )
    return {
        "ward_a": ward_a,
        "ward_b": ward_b,
        "sim": sim,
        "alarm": alarm,
        "clinician": persona("clinician", ward_a),
        "receiving": persona("clinician", ward_b),
    }


async def _open(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect()
    assert connected
    return comm


async def _frames(comm: WebsocketCommunicator, timeout: float = 5) -> list[dict[str, Any]]:
    """The frames of the next WebSocket message (a `frames` wrapper unwrapped)."""
    text = await comm.receive_from(timeout=timeout)
    schemas.frame_decoder.decode(text)  # raises if the frame drifts from its schema
    message = orjson.loads(text)
    return message["frames"] if message["type"] == "frames" else [message]


async def _until(comm: WebsocketCommunicator, frame_type: str) -> list[dict[str, Any]]:
    """Every frame up to and including the first of `frame_type`."""
    seen: list[dict[str, Any]] = []
    while not any(f["type"] == frame_type for f in seen):
        seen.extend(await _frames(comm))
    return seen


async def test_discharge_resolves_alarms_closes_sockets_and_drops_the_card() -> None:
    data = await sync_to_async(_setup)()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    chart = await _open("/ws/patients/p-flow/live", headers)
    assert (await _frames(chart))[0]["type"] == "snapshot"
    overview = await _open("/ws/ward/live", headers)
    [snapshot] = await _frames(overview)
    assert [(c["pseudonym"], c["bed"], c["devices"]) for c in snapshot["patients"]] == [("p-flow", "", ["dev-flow-1"])]

    await sync_to_async(patient_discharge)(pseudonym="p-flow")

    # The chart's socket: the discharge frame, then closed with 4410.
    flow = [f for f in await _until(chart, "patient.flow") if f["type"] == "patient.flow"]
    assert [(f["patient"], f["event"]) for f in flow] == [("p-flow", "discharged")]
    assert await chart.receive_output(timeout=5) == {"type": "websocket.close", "code": 4410}
    # The overview: the discharge frame for the card it shows, then a membership resync.
    frames = await _until(overview, "resync")
    assert ("patient.flow", "discharged") in [(f["type"], f.get("event")) for f in frames]
    assert frames[-1] == {"type": "resync", "reason": "membership", "patients": [], "since": None}
    listing = await sync_to_async(data["clinician"].client)()
    body = (await sync_to_async(listing.get)("/api/v1/patients/")).json()
    assert body["patients"] == []

    # The open alarm resolved with cause `discharged`, audited as such.
    alarm = await sync_to_async(Alarm.objects.get)(pk=data["alarm"].pk)
    assert alarm.state == State.RESOLVED and alarm.resolved_at is not None
    last = await sync_to_async(lambda: AlarmTransition.objects.filter(alarm=alarm).order_by("-id").first())()
    assert last is not None and (last.cause, last.from_state, last.to_state) == (
        "discharged",
        "active_unacknowledged",
        "resolved",
    )
    assert [e.subject for e in await sync_to_async(audit_events)("alarm.discharged")] == ["p-flow"]

    # A new socket for the patient is refused with 4410 (history stays on the chart), audited.
    again = await _open("/ws/patients/p-flow/live", headers)
    assert await again.receive_output(timeout=5) == {"type": "websocket.close", "code": 4410}
    refused = (await sync_to_async(audit_events)("live.subscribe"))[-1]
    assert (refused.outcome, refused.detail["reason"]) == ("denied", "discharged")
    # ... while its history is still readable by the ward's staff.
    chart_page = await sync_to_async(listing.get)("/patients/p-flow/")
    assert chart_page.status_code == 200

    # A reading the device sends after the discharge is stored without a patient.
    sim = data["sim"]
    reading = factories.batch_body(sim, [factories.reading(1)])
    answer = await AsyncClient().post(
        "/api/v1/ingest/readings", reading, content_type="application/json", headers=sim.sign(reading)
    )
    assert answer.status_code == 200, answer.content
    rows = await sync_to_async(lambda: list(Reading.objects.filter(device__device_id="dev-flow-1")))()
    assert [r.patient_id for r in rows] == [None]
    await overview.disconnect()


def _transfer_setup() -> dict[str, Any]:
    data = _setup()
    patient = Patient.objects.get(pseudonym="p-flow")
    device = data["sim"].device_id
    now = dt.datetime.now(dt.UTC)
    dev = Device.objects.get(device_id=device)
    insert_readings(patient, dev, [(now - dt.timedelta(minutes=20 - i), 60.0 + i) for i in range(10)])
    data["transfer_at"] = now - dt.timedelta(minutes=15, seconds=30)  # 5 readings before, 5 after
    return data


async def test_transfer_moves_live_access_and_keeps_the_old_wards_history() -> None:
    data = await sync_to_async(_transfer_setup)()
    old_headers = await sync_to_async(data["clinician"].ws_headers)()
    new_headers = await sync_to_async(data["receiving"].ws_headers)()
    chart = await _open("/ws/patients/p-flow/live", old_headers)
    await _frames(chart)  # snapshot
    receiving = await _open("/ws/ward/live", new_headers)
    [empty] = await _frames(receiving)
    assert empty["patients"] == []  # nobody on icu-b yet

    at = data["transfer_at"]
    await sync_to_async(patient_transfer)(pseudonym="p-flow", ward_code="icu-b", bed="7", at=at)

    # The old ward's chart socket: access re-checked on the frame, closed with 4403.
    assert await chart.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    # The new ward's empty overview hears the admission to its ward and gains the patient.
    frames = await _until(receiving, "resync")
    assert [(f["patient"], f["event"], f["bed"]) for f in frames if f["type"] == "patient.flow"] == [
        ("p-flow", "transferred", "7")
    ]
    added = await sync_to_async(audit_events)("ward.live.patients_added")
    assert [e.detail["patients"] for e in added] == [["p-flow"]]

    start = (at - dt.timedelta(hours=1)).isoformat()
    end = dt.datetime.now(dt.UTC).isoformat()
    query = {"start": start, "end": end}
    old = await sync_to_async(data["clinician"].client)()
    new = await sync_to_async(data["receiving"].client)()
    old_series = (await sync_to_async(old.get)("/api/v1/patients/p-flow/series", query)).json()
    new_series = (await sync_to_async(new.get)("/api/v1/patients/p-flow/series", query)).json()
    # The old ward sees the time the patient was theirs; the new ward the whole record.
    assert [p["value"] for p in old_series["points"]] == [60.0, 61.0, 62.0, 63.0, 64.0]
    assert [p["value"] for p in new_series["points"]] == [60.0 + i for i in range(10)]
    reads = await sync_to_async(audit_events)("series.read")
    assert [e.detail["reason"] for e in reads] == ["former_ward", "ward"]
    # The alarm raised on the old ward stays there (alerts/models.py: the ward at raise time).
    alarm = await sync_to_async(Alarm.objects.get)(pk=data["alarm"].pk)
    assert alarm.ward_id == data["ward_a"].id and alarm.state == State.ACTIVE_UNACKNOWLEDGED
    # The old ward's clinician is refused the live feed now, audited.
    again = await _open("/ws/patients/p-flow/live", old_headers)
    assert await again.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    refused = (await sync_to_async(audit_events)("live.subscribe"))[-1]
    assert (refused.outcome, refused.detail["reason"]) == ("denied", "former_ward")
    await receiving.disconnect()
