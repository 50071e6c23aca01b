"""Every live frame, built by the code that publishes or sends it, matches its typed schema; the
schemas refuse a frame that drifts; every time in a frame is UTC with milliseconds
(docs/live-protocol.md).

Published frames are caught on the real channel layer, as a consumer would receive them."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import msgspec
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient

from alerts.events import AlarmNotificationFrame, AlarmPauseFrame, AlarmTransitionFrame, ConsoleFrame
from alerts.notifiers import notify_escalation
from alerts.services import alarm_raise, patient_pause, rule_current_ward
from audit.access.sessions import user_sockets_close
from audit.trail import Actor
from config import live
from config.asgi import application
from config.live import SessionRevokedFrame
from telemetry.events import AnnotationAddedFrame, PatientFlowFrame, ReadingBatchFrame
from telemetry.models import Patient, Ward
from telemetry.stays import patient_discharge
from tests import factories
from tests.alarm_factories import verified, ws_headers
from tests.ingest_helpers import ago, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

PublishedFrame = (
    ReadingBatchFrame
    | AnnotationAddedFrame
    | AlarmTransitionFrame
    | AlarmPauseFrame
    | AlarmNotificationFrame
    | SessionRevokedFrame
    | PatientFlowFrame
)
MILLISECONDS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TIME_KEYS = {"t", "until", "since", "server_time", "at"}


def _times(value: Any, key: str = "") -> list[str]:
    """Every time in a frame: the values of `t`, `until`, `…_at` and the like, at any depth."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    if (key in TIME_KEYS or key.endswith("_at")) and value is not None:
        return [value]
    return []


def _assert_milliseconds(frame: dict[str, Any]) -> None:
    times = _times(frame)
    assert all(isinstance(t, str) and MILLISECONDS_UTC.fullmatch(t) for t in times), times


async def _listen(*groups: str) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    for group in groups:
        await layer.group_add(group, channel)
    return channel


async def _received(channel: str, count: int) -> list[dict[str, Any]]:
    layer = get_channel_layer()
    return [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(count)]


def _world(ward: Ward, nurse: User, clinician: User) -> dict[str, Any]:
    """Staff of `ward` (the nurse on call), and a patient there."""
    dev = factories.device(ward_code=ward.code, patient="pt-f")
    return {
        "dev": dev,
        "patient": Patient.objects.select_related("ward").get(pseudonym="pt-f"),
        "nurse": nurse,
        "clinician": clinician,
    }


def _alarm_acts(world: dict[str, Any]) -> None:
    """Raise, pause and escalate through the services, as the engine and staff do."""
    patient, clinician = world["patient"], verified(world["clinician"])
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(patient.ward), kind="low", onset=now, now=now, explain={}
    )
    actor = Actor(clinician.pk, clinician.username, "clinician")
    patient_pause(patient=patient, user=clinician, actor=actor, seconds=60, reason="turning")
    alarm.escalation_level = 1
    notify_escalation(alarm=alarm, now=now)


async def test_every_published_frame_matches_its_schema_with_millisecond_times(
    ward_a: Ward, oncall_nurse: User, ward_clinician: User
) -> None:
    world = await sync_to_async(_world)(ward_a, oncall_nurse, ward_clinician)
    await sync_to_async(live.publish_flush)()  # the admission's patient.flow frame left before we listen
    nurse, clinician = world["nurse"], world["clinician"]
    chart = await _listen(live.patient_group("pt-f"))
    console = await _listen(live.alarms_group(), live.alarms_user_group(nurse.pk))
    sessions = await _listen(live.user_group(clinician.pk))

    dev = world["dev"]
    await send(AsyncClient(), dev, factories.series(1, 5, start=ago(20)), firmware="fw-1")
    await send(AsyncClient(), dev, factories.series(6, 5, start=ago(10)), firmware="fw-2")
    await sync_to_async(_alarm_acts)(world)
    await sync_to_async(user_sockets_close)(user_id=clinician.pk, session_key="one-session")
    await sync_to_async(user_sockets_close)(user_id=clinician.pk)

    frames = [
        *await _received(chart, 5),  # two batches, the firmware mark, the transition, the alarm mark
        *await _received(console, 3),  # the transition, the pause, the notification
        *await _received(sessions, 2),
    ]
    # The discharge: the open alarm resolves (cause discharged), then the patient-flow frame.
    await sync_to_async(patient_discharge)(pseudonym="pt-f")
    discharge = await _received(chart, 2)
    assert [f["type"] for f in discharge] == ["alarm.transition", "patient.flow"]
    assert discharge[0]["transition"]["cause"] == "discharged" and discharge[1]["event"] == "discharged"
    frames += discharge
    for frame in frames:
        msgspec.convert(frame, PublishedFrame, strict=True)
        _assert_milliseconds(frame)
    assert {f["type"] for f in frames} == {
        "patient.flow",
        "reading.batch",
        "annotation.added",
        "alarm.transition",
        "alarm.pause",
        "alarm.notification",
        "session.revoked",
    }
    assert [f.get("session_key") for f in frames if f["type"] == "session.revoked"] == ["one-session", None]


async def test_console_snapshot_matches_its_schema_with_millisecond_times(
    ward_a: Ward, oncall_nurse: User, ward_clinician: User
) -> None:
    world = await sync_to_async(_world)(ward_a, oncall_nurse, ward_clinician)
    await sync_to_async(_alarm_acts)(world)
    comm = WebsocketCommunicator(
        application, "/ws/alarms/live", headers=await sync_to_async(ws_headers)(world["nurse"])
    )
    connected, _ = await comm.connect()
    assert connected
    text = await comm.receive_from(timeout=3)
    snapshot = msgspec.json.decode(text, type=ConsoleFrame)
    assert snapshot.alarms and snapshot.pauses and snapshot.notifications  # type: ignore[union-attr]
    _assert_milliseconds(msgspec.json.decode(text))
    await comm.disconnect()


def _batch() -> dict[str, Any]:
    return {
        "type": "reading.batch",
        "patient": "pt-f",
        "ranges": [{"device": "d", "first": 1, "last": 1}],
        "points": [{"t": "2026-01-01T00:00:00.000Z", "metric": "tissue_o2", "value": 60.0, "quality": 0.9, "seq": 1}],
    }


@pytest.mark.parametrize(
    "drift",
    [
        lambda f: f.update(extra=1),  # a field nobody declared
        lambda f: f.pop("ranges"),  # a field missing
        lambda f: f["points"][0].update(seq="1"),  # a field of the wrong type
        lambda f: f["points"][0].update(colour="red"),  # an undeclared field one level down
        lambda f: f.update(type="reading.batches"),  # an unknown frame type
    ],
)
def test_a_frame_that_drifts_from_its_schema_fails_validation(drift: Any) -> None:
    msgspec.convert(_batch(), PublishedFrame, strict=True)  # the frame as built is valid
    frame = _batch()
    drift(frame)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(frame, PublishedFrame, strict=True)
