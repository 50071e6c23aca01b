"""The alarm processor against PostgreSQL: lifecycle, timers, pauses, late data and restarts,
with time frozen (time-machine) and constructed signals."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator

import pytest
import time_machine

from alerts.engine import AlarmProcessor
from alerts.errors import AlarmConflict
from alerts.models import Alarm, AlarmPause, Notification
from alerts.services import alarm_acknowledge, alarm_decline, patient_pause
from audit.models import AuditEvent
from audit.trail import Actor
from telemetry.models import Annotation, Device, Patient
from tests import factories
from tests.alarm_factories import insert, seconds, staff, verified

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 1, 18, 14, 0, tzinfo=dt.UTC)
A = Alarm.State


class Bed:
    """One monitored patient, a processor, and a frozen clock that moves with the signal."""

    def __init__(self, traveller: time_machine.Coordinates) -> None:
        self.traveller = traveller
        dev = factories.device(patient="pt-alarm")
        self.device = Device.objects.get(device_id=dev.device_id)
        self.patient = Patient.objects.select_related("ward").get(pseudonym="pt-alarm")
        self.engine = AlarmProcessor()

    def at(self, s: float) -> dt.datetime:
        now = T0 + dt.timedelta(seconds=s)
        self.traveller.move_to(now)
        return now

    def feed(self, values: list[float], *, start: float, quality: float = 0.95, now: float | None = None) -> None:
        """Readings from `start` s, one a second, handed to the engine at `now` (default: last sample)."""
        rows = insert(self.patient, self.device, seconds(T0, values, start=start, quality=quality))
        self.engine.process(rows, now=self.at(now if now is not None else start + len(values) - 1))

    def tick(self, s: float) -> None:
        self.engine.tick(now=self.at(s))

    def alarms(self, kind: str | None = None) -> list[Alarm]:
        qs = Alarm.objects.filter(patient=self.patient).order_by("id")
        return list(qs.filter(kind=kind) if kind else qs)


@pytest.fixture
def bed() -> Iterator[Bed]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield Bed(traveller)


@pytest.fixture
def nurse(bed: Bed) -> Callable[[str], tuple[object, Actor]]:
    def make(name: str = "nurse") -> tuple[object, Actor]:
        user = verified(staff(name, "oncall", [bed.patient.ward]))
        return user, Actor(user.pk, user.username, "oncall")

    return make


def test_raise_after_the_sustain_delay_with_explanation(bed: Bed) -> None:
    bed.feed([45] * 10 + [33] * 30, start=0)  # 10..39: 29 s below
    assert bed.alarms() == []
    bed.feed([33], start=40)
    [alarm] = bed.alarms("low")
    assert (alarm.state, alarm.priority, alarm.category, alarm.latched) == (
        A.ACTIVE_UNACKNOWLEDGED,
        "medium",
        "physiological",
        False,
    )
    assert alarm.condition_started_at == T0 + dt.timedelta(seconds=10)
    assert alarm.rule.version == 1
    explain = alarm.explain
    assert explain["threshold"] == 35.0 and explain["delay_s"] == 30
    assert explain["samples"][-1]["value"] == 33 and explain["firmware"] == "fw-2.4.1"
    assert explain["calibration"]["id"] == "cal-1" and explain["device"] == bed.device.device_id
    assert [t.cause for t in alarm.transitions.all()] == ["raised"]
    assert AuditEvent.objects.filter(action="alarm.raised", subject="pt-alarm").count() == 1
    assert Annotation.objects.filter(patient=bed.patient, kind="alarm").count() == 1


def test_high_priority_latches_until_acknowledged(bed: Bed, nurse: Callable) -> None:
    bed.feed([60] * 5 + [20] * 11, start=0)
    [alarm] = bed.alarms("critical_low")
    assert alarm.latched and alarm.priority == "high"
    bed.feed([60] * 20, start=16)  # recovered past the margin for longer than the clear delay
    bed.tick(600)
    alarm.refresh_from_db()
    assert (alarm.state, alarm.condition_present) == (A.ACTIVE_UNACKNOWLEDGED, False)
    user, actor = nurse()
    alarm_acknowledge(alarm_id=alarm.pk, user=user, actor=actor, note="seen, repositioned sensor")
    bed.tick(601)  # cleared long ago: resolution is due at once
    alarm.refresh_from_db()
    assert alarm.state == A.RESOLVED
    assert [t.cause for t in alarm.transitions.all()] == [
        "raised", "condition_cleared", "escalated", "acknowledged", "resolved",
    ]  # fmt: skip


def test_medium_alarm_resolves_after_suppression_window_and_a_return_inside_it_updates(bed: Bed) -> None:
    bed.feed([33] * 31, start=0)
    bed.feed([40] * 16, start=31)  # cleared at 46
    [alarm] = bed.alarms("low")
    assert not Alarm.objects.get(pk=alarm.pk).condition_present
    bed.feed([33] * 31, start=47)  # back below within the 120 s window: same alarm, updated
    alarm.refresh_from_db()
    assert len(bed.alarms("low")) == 1
    assert (alarm.recurrences, alarm.condition_present) == (1, True)
    bed.feed([40] * 16, start=78)  # cleared again at 93
    bed.tick(93 + 119)
    assert Alarm.objects.get(pk=alarm.pk).state == A.ACTIVE_UNACKNOWLEDGED
    bed.tick(93 + 120)
    assert Alarm.objects.get(pk=alarm.pk).state == A.RESOLVED


def test_still_present_condition_re_alerts_after_acknowledgement(bed: Bed, nurse: Callable) -> None:
    bed.feed([33] * 31, start=0)
    [alarm] = bed.alarms("low")
    user, actor = nurse()
    bed.at(40)
    alarm_acknowledge(alarm_id=alarm.pk, user=user, actor=actor, note="")
    bed.feed([33] * 299, start=31, now=339)
    bed.tick(339)
    assert Alarm.objects.get(pk=alarm.pk).state == A.ACKNOWLEDGED
    bed.tick(340)  # 300 s after the acknowledgement
    alarm.refresh_from_db()
    assert alarm.state == A.ACTIVE_UNACKNOWLEDGED and alarm.activated_at == T0 + dt.timedelta(seconds=340)
    assert alarm.transitions.last().cause == "re_alert"


def test_escalation_to_oncall_and_decline_escalates_further(bed: Bed, nurse: Callable) -> None:
    oncall, actor = nurse("oncall-1")
    bed.feed([33] * 31, start=0)
    [alarm] = bed.alarms("low")
    bed.feed([33] * 118, start=31)
    bed.tick(148)
    assert Alarm.objects.get(pk=alarm.pk).escalation_level == 0
    bed.feed([33], start=150)
    bed.tick(150)  # 120 s after the raise at 30
    alarm.refresh_from_db()
    assert (alarm.escalation_level, alarm.ever_escalated) == (1, True)
    [note] = Notification.objects.filter(recipient=oncall)
    assert "Escalated (level 1)" in note.text
    assert AuditEvent.objects.filter(action="alarm.escalated").count() == 1
    alarm_decline(alarm_id=alarm.pk, user=oncall, actor=actor, reason="in theatre")
    alarm.refresh_from_db()
    assert alarm.escalation_level == 2
    assert alarm.transitions.last().cause == "declined"


def test_no_data_is_a_technical_alarm_from_the_tick_and_clears_when_data_returns(bed: Bed) -> None:
    bed.feed([60] * 10, start=0)
    bed.tick(128)
    assert bed.alarms("no_data") == []
    bed.tick(129)  # 120 s after the last sample at 9
    [alarm] = bed.alarms("no_data")
    assert (alarm.category, alarm.priority, alarm.condition_started_at) == (
        "technical",
        "medium",
        T0 + dt.timedelta(seconds=9),
    )
    bed.feed([60] * 5, start=130)
    bed.tick(135)
    alarm.refresh_from_db()
    assert not alarm.condition_present
    bed.tick(135 + 120)
    assert Alarm.objects.get(pk=alarm.pk).state == A.RESOLVED


def test_pause_holds_lower_priority_back_and_high_breaks_through(bed: Bed, nurse: Callable) -> None:
    user, actor = nurse()
    bed.at(0)
    pause = patient_pause(patient=bed.patient, user=user, actor=actor, seconds=120, priority="medium")
    assert pause.until == T0 + dt.timedelta(seconds=120)
    bed.feed([33] * 40, start=0)
    assert bed.alarms("low") == []  # held back by the pause
    bed.feed([20] * 11, start=40)
    assert len(bed.alarms("critical_low")) == 1  # higher priority breaks through
    bed.feed([33] * 70, start=51)
    bed.tick(120)
    [low] = bed.alarms("low")  # the pause is over and the condition is still there
    assert low.condition_started_at == T0
    assert low.raised_at == T0 + dt.timedelta(seconds=120)


def test_pause_longer_than_the_ward_maximum_is_refused_and_audited(bed: Bed, nurse: Callable) -> None:
    user, actor = nurse()
    with pytest.raises(Exception, match="A pause lasts"):
        patient_pause(patient=bed.patient, user=user, actor=actor, seconds=3600)
    assert AlarmPause.objects.count() == 0
    assert AuditEvent.objects.filter(action="alarm.paused", outcome="denied").count() == 1


def test_out_of_order_rows_in_one_batch_are_evaluated_by_sample_time(bed: Bed) -> None:
    samples = seconds(T0, [45] * 10 + [33] * 31)
    random.Random(5).shuffle(samples)
    rows = insert(bed.patient, bed.device, samples)
    bed.engine.process(rows, now=bed.at(45))
    [alarm] = bed.alarms("low")
    assert alarm.condition_started_at == T0 + dt.timedelta(seconds=10)


def test_late_readings_are_placed_by_sample_time(bed: Bed) -> None:
    # The gateway was offline: 0..9 normal and 40..49 arrive first, the desaturation 10..39 later.
    bed.feed([45] * 10, start=0)
    bed.feed([33] * 10, start=40)
    assert bed.alarms() == []
    bed.feed([33] * 30, start=10, now=60)
    [alarm] = bed.alarms("low")
    assert alarm.condition_started_at == T0 + dt.timedelta(seconds=10)
    assert alarm.explain["at"] == (T0 + dt.timedelta(seconds=40)).isoformat()


def test_late_data_does_not_raise_an_episode_twice(bed: Bed) -> None:
    bed.feed([33] * 31, start=0)
    bed.feed([33] * 10, start=40)
    bed.feed([33] * 9, start=31, now=50)  # fills the hole: replay sees the same episode
    assert len(bed.alarms("low")) == 1 and bed.alarms("low")[0].recurrences == 0


def test_engine_restart_mid_alarm_loses_nothing(bed: Bed) -> None:
    bed.feed([45] * 5 + [33] * 20, start=0)  # pending low since 5
    bed.engine = AlarmProcessor()  # restart: nothing but PostgreSQL survives
    bed.feed([33] * 11, start=25)
    [alarm] = bed.alarms("low")
    assert alarm.condition_started_at == T0 + dt.timedelta(seconds=5)  # onset from before the restart
    bed.engine = AlarmProcessor()
    bed.feed([33] * 5, start=36)
    assert len(bed.alarms("low")) == 1 and Alarm.objects.get(pk=alarm.pk).recurrences == 0
    bed.engine = AlarmProcessor()
    bed.feed([40] * 16, start=41)  # recovery seen by a third engine clears the same alarm
    alarm.refresh_from_db()
    assert (alarm.condition_present, alarm.condition_cleared_at) == (False, T0 + dt.timedelta(seconds=56))
    bed.engine = AlarmProcessor()
    bed.tick(56 + 120)
    assert Alarm.objects.get(pk=alarm.pk).state == A.RESOLVED
    assert [t.cause for t in alarm.transitions.all()] == ["raised", "condition_cleared", "resolved"]


def test_concurrent_style_double_acknowledgement_is_refused_and_audited(bed: Bed, nurse: Callable) -> None:
    bed.feed([33] * 31, start=0)
    [alarm] = bed.alarms("low")
    first, first_actor = nurse("nurse-a")
    second, second_actor = nurse("nurse-b")
    alarm_acknowledge(alarm_id=alarm.pk, user=first, actor=first_actor, note="mine")
    with pytest.raises(AlarmConflict) as refused:
        alarm_acknowledge(alarm_id=alarm.pk, user=second, actor=second_actor, note="me too")
    assert refused.value.code == "already_acknowledged"
    outcomes = sorted(AuditEvent.objects.filter(action="alarm.acknowledged").values_list("actor_username", "outcome"))
    assert outcomes == [("nurse-a", "allowed"), ("nurse-b", "denied")]
    assert Annotation.objects.filter(kind="acknowledgement", patient=bed.patient).count() == 1


def test_a_rule_changed_mid_stream_judges_the_next_readings(bed: Bed) -> None:
    from alerts.services import rule_current_ward, rule_update

    bed.feed([40] * 40, start=0)  # above the default low threshold (35): nothing
    assert bed.alarms() == []
    # The processor now holds this patient's evaluator (and the rules) in memory; a new ward rule
    # version must reach it before the next reading is judged.
    admin = verified(staff("admin", "admin"))
    values = rule_current_ward(bed.patient.ward).values() | {"low_threshold": 45}
    rule_update(ward=bed.patient.ward, actor=Actor(admin.pk, "admin", "admin"), user=admin, values=values)
    bed.feed([40] * 31, start=40)
    [alarm] = bed.alarms("low")
    assert alarm.rule.version == 2 and alarm.explain["threshold"] == 45.0
    assert alarm.explain["rule"]["low_threshold"] == 45.0
