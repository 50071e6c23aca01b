"""The on-call roster: who escalations reach first (and how they widen), shifts edited by
administrators and audited, the roster page, and who is on call on the console."""

from __future__ import annotations

import datetime as dt
import io
import re
from typing import Any

import msgspec
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.management import call_command

from alerts.errors import AlarmForbidden, ShiftInvalid
from alerts.events import ConsoleFrame
from alerts.models import Alarm, Notification, OnCallShift
from alerts.notifiers import escalation_recipients, recipients_at
from alerts.services import alarm_raise, alarm_timers, rule_current_ward, shift_create, shift_delete, shift_update
from audit.models import AuditEvent
from audit.trail import Actor
from config.asgi import application
from telemetry.models import Patient
from tests import factories
from tests.alarm_factories import staff, verified, verified_client, ws_headers

pytestmark = pytest.mark.django_db
HOUR = dt.timedelta(hours=1)


def _world() -> dict[str, Any]:
    ward = factories.ward("icu-r")
    other = factories.ward("ward-r2")
    factories.device(ward_code="icu-r", patient="pt-r")
    return {
        "ward": ward,
        "patient": Patient.objects.select_related("ward").get(pseudonym="pt-r"),
        "anna": staff("anna", "oncall", [ward]),
        "ben": staff("ben", "oncall", [ward]),
        "cleo": staff("cleo", "clinician", [ward]),
        "elsewhere": staff("elsewhere", "oncall", [other]),
        "admin": verified(staff("boss", "admin")),
    }


@pytest.fixture
def world() -> dict[str, Any]:
    return _world()


def _shift(world: dict[str, Any], who: str, start: dt.timedelta, end: dt.timedelta, note: str = "") -> OnCallShift:
    now = dt.datetime.now(dt.UTC)
    ward = (
        world["ward"] if world[who].staff.wards.filter(pk=world["ward"].pk).exists() else world[who].staff.wards.get()
    )
    return OnCallShift.objects.create(
        ward=ward, user=world[who], starts_at=now + start, ends_at=now + end, note=note, created_by="t", created_at=now
    )


def _alarm(world: dict[str, Any], level: int = 0) -> Alarm:
    now = dt.datetime.now(dt.UTC)
    patient = world["patient"]
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(patient.ward), kind="low", onset=now, now=now, explain={}
    )
    alarm.escalation_level = level
    return alarm


def _names(users: list[Any]) -> list[str]:
    return sorted(u.username for u in users)


def _admin_actor(world: dict[str, Any]) -> Actor:
    return Actor(world["admin"].pk, "boss", "admin")


def test_escalation_reaches_the_rostered_nurse_first_then_widens(world: dict[str, Any]) -> None:
    _shift(world, "cleo", -HOUR, 8 * HOUR)  # a clinician on call for the ward tonight
    alarm = _alarm(world)
    assert _names(escalation_recipients(alarm)) == ["cleo"]  # not every on-call user of the ward
    alarm.escalation_level = 2
    assert _names(escalation_recipients(alarm)) == ["anna", "ben", "boss", "cleo"]
    assert escalation_recipients(alarm)[0].username == "cleo"  # the roster first

    now = dt.datetime.now(dt.UTC)
    alarm_timers(alarm_id=alarm.pk, now=now + dt.timedelta(seconds=121))  # the engine's escalation
    assert [n.recipient.username for n in Notification.objects.filter(alarm=alarm)] == ["cleo"]


def test_handover_notifies_both_and_shifts_not_in_progress_do_not_count(world: dict[str, Any]) -> None:
    _shift(world, "anna", -8 * HOUR, 0.25 * HOUR)  # ending: handing over
    _shift(world, "ben", -0.25 * HOUR, 8 * HOUR)  # starting
    _shift(world, "cleo", -20 * HOUR, -8 * HOUR)  # over
    _shift(world, "cleo", 2 * HOUR, 10 * HOUR)  # later
    assert _names(escalation_recipients(_alarm(world))) == ["anna", "ben"]


def test_an_empty_roster_falls_back_to_the_wards_oncall_staff_then_to_every_oncall_user(world: dict[str, Any]) -> None:
    alarm = _alarm(world)
    assert _names(escalation_recipients(alarm)) == ["anna", "ben"]
    world["anna"].groups.clear()
    world["ben"].groups.clear()
    assert _names(recipients_at(alarm, level=1, now=dt.datetime.now(dt.UTC))) == ["elsewhere"]


def test_a_deactivated_user_on_shift_is_not_notified(world: dict[str, Any]) -> None:
    _shift(world, "cleo", -HOUR, HOUR)
    world["cleo"].is_active = False
    world["cleo"].save()
    assert _names(escalation_recipients(_alarm(world))) == ["anna", "ben"]  # roster empty in effect


def test_shift_edits_are_audited_with_before_and_after(world: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    admin, actor = world["admin"], _admin_actor(world)
    shift = shift_create(
        ward=world["ward"],
        user_id=world["anna"].pk,
        starts_at=now,
        ends_at=now + 12 * HOUR,
        note=" charge nurse ",
        actor=actor,
        user=admin,
    )
    assert (shift.note, shift.created_by) == ("charge nurse", "boss")
    created = AuditEvent.objects.get(action="oncall_shift.created")
    assert created.detail["shift"]["user"] == "anna" and created.detail["shift"]["ward"] == "icu-r"
    shift_update(shift_id=shift.pk, starts_at=now, ends_at=now + 10 * HOUR, note="", actor=actor, user=admin)
    updated = AuditEvent.objects.get(action="oncall_shift.updated")
    assert updated.detail["before"]["ends_at"] != updated.detail["shift"]["ends_at"]
    shift_delete(shift_id=shift.pk, actor=actor, user=admin)
    assert not OnCallShift.objects.exists()
    assert AuditEvent.objects.get(action="oncall_shift.deleted").detail["shift"]["id"] == shift.pk


@pytest.mark.parametrize(
    ("who", "start", "end", "field"),
    [
        ("anna", 2 * HOUR, HOUR, "ends_at"),  # ends before it starts
        ("anna", 0 * HOUR, 73 * HOUR, "ends_at"),  # longer than 72 h
        ("anna", -10 * HOUR, -HOUR, "ends_at"),  # in the past
        ("elsewhere", 0 * HOUR, 8 * HOUR, "user"),  # not staff of the ward
        ("boss", 0 * HOUR, 8 * HOUR, "user"),  # an administrator is not ward on-call staff
    ],
)
def test_invalid_shifts_are_refused_and_audited(
    world: dict[str, Any], who: str, start: dt.timedelta, end: dt.timedelta, field: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    person = world["admin"] if who == "boss" else world[who]
    with pytest.raises(ShiftInvalid) as refused:
        shift_create(
            ward=world["ward"],
            user_id=person.pk,
            starts_at=now + start,
            ends_at=now + end,
            note="",
            actor=_admin_actor(world),
            user=world["admin"],
        )
    assert field in refused.value.detail
    assert not OnCallShift.objects.exists()
    assert AuditEvent.objects.get(action="oncall_shift.created").outcome == "denied"


def test_one_persons_overlapping_shifts_are_refused_but_a_handover_is_not(world: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    actor, admin = _admin_actor(world), world["admin"]

    def add(who: str, start: dt.timedelta, end: dt.timedelta) -> OnCallShift:
        return shift_create(
            ward=world["ward"],
            user_id=world[who].pk,
            starts_at=now + start,
            ends_at=now + end,
            note="",
            actor=actor,
            user=admin,
        )

    add("anna", HOUR, 9 * HOUR)
    add("ben", 8.5 * HOUR, 17 * HOUR)  # handover 8.5 h - 9 h
    with pytest.raises(ShiftInvalid, match="already has a shift"):
        add("anna", 8 * HOUR, 12 * HOUR)
    assert OnCallShift.objects.count() == 2


def test_only_staff_managers_edit_the_roster_and_past_shifts_are_history(world: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    clinician = verified(world["cleo"])
    with pytest.raises(AlarmForbidden):
        shift_create(
            ward=world["ward"],
            user_id=world["anna"].pk,
            starts_at=now,
            ends_at=now + HOUR,
            note="",
            actor=Actor(clinician.pk, "cleo", "clinician"),
            user=clinician,
        )
    assert AuditEvent.objects.get(action="oncall_shift.created").outcome == "denied"
    past = _shift(world, "anna", -10 * HOUR, -HOUR)
    with pytest.raises(ShiftInvalid, match="history"):
        shift_delete(shift_id=past.pk, actor=_admin_actor(world), user=world["admin"])
    assert OnCallShift.objects.filter(pk=past.pk).exists()


def test_roster_page_lists_adds_and_refuses_other_roles(world: dict[str, Any]) -> None:
    _shift(world, "anna", -HOUR, 0.25 * HOUR)
    _shift(world, "ben", -0.25 * HOUR, 8 * HOUR)
    admin = verified_client(world["admin"])
    page = admin.get("/alarms/oncall/?ward=icu-r")
    assert page.status_code == 200
    html = page.content.decode()
    now_list = html.split('id="oncall-now"')[1].split("</ul>")[0]
    assert "anna" in now_list and "ben" in now_list
    assert "handover with anna" in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # no inline script (CSP)
    assert AuditEvent.objects.filter(action="oncall_roster.viewed", detail__ward="icu-r").count() == 1

    start = (dt.datetime.now(dt.UTC) + 9 * HOUR).strftime("%Y-%m-%dT%H:%M")
    end = (dt.datetime.now(dt.UTC) + 17 * HOUR).strftime("%Y-%m-%dT%H:%M")
    data = {
        "ward": "icu-r",
        "act": "create",
        "user": world["cleo"].pk,
        "starts_at": start,
        "ends_at": end,
        "note": "night",
    }
    response = admin.post("/alarms/oncall/", data)
    assert response.status_code == 302 and response["Location"].endswith("?ward=icu-r&saved=1")
    assert OnCallShift.objects.filter(user=world["cleo"], note="night").exists()
    bad = admin.post("/alarms/oncall/", {**data, "ends_at": start})
    assert bad.status_code == 400 and "must be after the start" in bad.content.decode()

    assert verified_client(world["cleo"]).get("/alarms/oncall/").status_code == 403


def test_the_console_shows_who_is_on_call_now(world: dict[str, Any]) -> None:
    _shift(world, "ben", -HOUR, 8 * HOUR, note="charge nurse")
    html = verified_client(world["anna"]).get("/alarms/").content.decode()
    shown = html.split('id="alarm-oncall"')[1].split("</ul>")[0]
    assert "icu-r" in shown and "ben" in shown and "charge nurse" in shown


@pytest.mark.django_db(transaction=True)
async def test_the_console_snapshot_carries_the_oncall_shifts_in_scope() -> None:
    def setup() -> dict[str, Any]:
        world = _world()
        _shift(world, "ben", -HOUR, 8 * HOUR)
        _shift(world, "elsewhere", -HOUR, HOUR)  # on call for another ward
        return world

    world = await sync_to_async(setup)()
    comm = WebsocketCommunicator(application, "/ws/alarms/live", headers=await sync_to_async(ws_headers)(world["anna"]))
    connected, _ = await comm.connect()
    assert connected
    snapshot = msgspec.json.decode(await comm.receive_from(timeout=3), type=ConsoleFrame)
    await comm.disconnect()
    oncall = snapshot.oncall  # type: ignore[union-attr]
    assert [(o.ward, o.user) for o in oncall] == [("icu-r", "ben")]  # another ward's roster is not in scope
    assert oncall[0].ends_at.endswith("Z")


def test_demo_roster_seed_is_idempotent_and_escalations_reach_the_rostered_nurse() -> None:
    call_command("seed_demo", stdout=io.StringIO())
    for _ in range(2):
        call_command("seed_demo_roster", stdout=io.StringIO())
    shifts = list(OnCallShift.objects.order_by("starts_at").values_list("user__username", "ward__code"))
    assert shifts == [("oncall", "icu-demo"), ("clinician", "icu-demo")]
    assert get_user_model().objects.get(username="oncall").email == "oncall@example.org"
    factories.device(ward_code="icu-demo", patient="pt-demo")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-demo")
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(patient.ward), kind="low", onset=now, now=now, explain={}
    )
    assert _names(escalation_recipients(alarm)) == ["oncall"]
