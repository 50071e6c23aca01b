"""`WS /ws/alarms/live` through the full ASGI application: who may subscribe (4403 + audit),
snapshot, then live transitions filtered by the viewer's scope; every frame checked against its
typed schema (alerts/events.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from alerts.events import AlarmSnapshotFrame, AlarmTransitionFrame
from alerts.models import Alarm
from alerts.schemas import AlarmOut
from alerts.selectors import alarms_open_sorted
from alerts.services import alarm_acknowledge, alarm_raise, rule_current_ward
from audit.models import AuditEvent
from audit.trail import Actor
from config.asgi import application
from telemetry.models import Patient
from tests import factories
from tests.alarm_factories import staff, verified, ws_headers

pytestmark = pytest.mark.django_db(transaction=True)


def _world() -> dict[str, Any]:
    ward_a = factories.ward("icu-a")
    factories.ward("icu-b")
    factories.device(ward_code="icu-a", patient="pt-a")
    factories.device(ward_code="icu-b", patient="pt-b")
    return {
        "a": Patient.objects.select_related("ward").get(pseudonym="pt-a"),
        "b": Patient.objects.select_related("ward").get(pseudonym="pt-b"),
        "nurse": staff("oncall-a", "oncall", [ward_a]),
        "clinician": staff("clin-a", "clinician", [ward_a]),
        "compliance": staff("comp", "compliance"),
    }


def _raise(patient: Patient, kind: str = "low") -> int:
    now = dt.datetime.now(dt.UTC)
    rule = rule_current_ward(patient.ward)
    return alarm_raise(patient=patient, rule=rule, kind=kind, onset=now, now=now, explain={}).pk


async def _open(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws/alarms/live", headers=headers)
    connected, _ = await comm.connect()
    assert connected
    return comm


@pytest.mark.parametrize("who", ["anonymous", "unverified", "compliance"])
async def test_refused_with_4403_and_audited(who: str) -> None:
    world = await sync_to_async(_world)()
    user = None if who == "anonymous" else world["compliance" if who == "compliance" else "clinician"]
    headers = await sync_to_async(ws_headers)(user, otp=who != "unverified")
    comm = await _open(headers)
    closed = await comm.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4403}
    count = await sync_to_async(AuditEvent.objects.filter(action="alarm.console_subscribed", outcome="denied").count)()
    assert count == 1
    await comm.disconnect()


async def test_snapshot_then_live_transitions_in_scope_only() -> None:
    world = await sync_to_async(_world)()
    first = await sync_to_async(_raise)(world["a"], "critical_low")
    comm = await _open(await sync_to_async(ws_headers)(world["nurse"]))
    snapshot = await comm.receive_json_from(timeout=3)
    assert snapshot["type"] == "alarm.snapshot"
    assert [a["id"] for a in snapshot["alarms"]] == [first]
    msgspec.convert(snapshot["alarms"][0], AlarmOut, strict=True)
    await sync_to_async(_raise)(world["b"])  # another ward: not for this console
    second = await sync_to_async(_raise)(world["a"], "low")
    frame = await comm.receive_json_from(timeout=3)
    msgspec.convert(frame, AlarmTransitionFrame, strict=True)
    assert (frame["type"], frame["alarm"]["id"], frame["transition"]["cause"]) == ("alarm.transition", second, "raised")

    def ack() -> None:
        user = verified(world["clinician"])
        alarm_acknowledge(alarm_id=second, user=user, actor=Actor(user.pk, user.username, "clinician"), note="ok")

    await sync_to_async(ack)()
    frame = await comm.receive_json_from(timeout=3)
    assert (frame["alarm"]["state"], frame["alarm"]["acknowledged_by"], frame["alarm"]["note"]) == (
        "acknowledged", "clin-a", "ok",
    )  # fmt: skip
    assert await comm.receive_nothing(timeout=0.2)
    allowed = await sync_to_async(
        AuditEvent.objects.filter(action="alarm.console_subscribed", outcome="allowed", actor_username="oncall-a").count
    )()
    assert allowed == 1
    await comm.disconnect()


def _lose_access(user: Any, how: str) -> None:
    """Access taken away behind the socket's back: no `session.revoked` frame is sent."""
    from django.contrib.sessions.models import Session
    from django_otp.plugins.otp_totp.models import TOTPDevice

    if how == "deactivated":
        user.is_active = False
        user.save(update_fields=["is_active"])
    elif how == "role_removed":
        user.groups.clear()
    elif how == "session_deleted":
        Session.objects.all().delete()
    elif how == "otp_device_removed":
        TOTPDevice.objects.filter(user=user).delete()


@pytest.mark.parametrize("how", ["deactivated", "role_removed", "session_deleted", "otp_device_removed"])
async def test_access_is_rechecked_while_connected(settings: Any, how: str) -> None:
    settings.PERFUSE_LIVE_REJOIN_SECONDS = 0.1
    world = await sync_to_async(_world)()
    comm = await _open(await sync_to_async(ws_headers)(world["nurse"]))
    assert (await comm.receive_json_from(timeout=3))["type"] == "alarm.snapshot"
    await sync_to_async(_lose_access)(world["nurse"], how)
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}
    await comm.disconnect()


async def test_ward_scope_follows_the_staff_profile_while_connected(settings: Any) -> None:
    settings.PERFUSE_LIVE_REJOIN_SECONDS = 0.1
    world = await sync_to_async(_world)()
    comm = await _open(await sync_to_async(ws_headers)(world["clinician"]))
    assert (await comm.receive_json_from(timeout=3))["type"] == "alarm.snapshot"

    def move_to_ward_b() -> None:
        staff = world["clinician"].staff
        staff.wards.set([world["b"].ward])

    await sync_to_async(move_to_ward_b)()
    assert await comm.receive_nothing(timeout=0.5)  # re-checked a few times: still allowed
    await sync_to_async(_raise)(world["a"])  # the ward the clinician left
    in_b = await sync_to_async(_raise)(world["b"])
    frame = await comm.receive_json_from(timeout=3)
    assert (frame["type"], frame["alarm"]["id"]) == ("alarm.transition", in_b)
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


async def test_snapshot_lists_the_most_urgent_open_alarms_up_to_the_cap_and_counts_them_all(settings) -> None:
    """Thousands of open alarms would make a first frame over the WebSocket's 1 MiB limit (seen
    with 20,000 quiet devices): the snapshot lists the most urgent PERFUSE_CONSOLE_SNAPSHOT_MAX."""
    settings.PERFUSE_CONSOLE_SNAPSHOT_MAX = 2
    world = await sync_to_async(_world)()
    low = await sync_to_async(_raise)(world["a"], "low")
    critical = await sync_to_async(_raise)(world["a"], "critical_low")
    later = await sync_to_async(_raise)(world["a"], "rapid_fall")
    comm = await _open(await sync_to_async(ws_headers)(world["nurse"]))
    snapshot = msgspec.convert(await comm.receive_json_from(timeout=3), AlarmSnapshotFrame, strict=True)
    expected = await sync_to_async(
        lambda: list(
            alarms_open_sorted(Alarm.objects.filter(pk__in=[low, critical, later])).values_list("pk", flat=True)
        )
    )()
    assert snapshot.alarms_total == 3 and [a["id"] for a in snapshot.alarms] == expected[:2]
    assert expected[0] == critical  # the most urgent is listed
    event = await sync_to_async(AuditEvent.objects.filter(action="alarm.console_subscribed", outcome="allowed").latest)(
        "id"
    )
    assert (event.detail["count"], event.detail["listed"]) == (3, 2)
    await comm.disconnect()
