"""The alarms app's live frames: types, and who receives each (docs/live-protocol.md).

Each `*_publish` function builds one frame and hands it to config.live.publish_after_commit, so
it leaves only when the act's transaction committed. Frames are hints: the console refetches the
list over REST after a reconnect, the chart and the overview refetch on `alarm.transition`.
`alarm.snapshot` is built by the console socket (alerts/consumers.py) from the rows.
"""

from __future__ import annotations

import msgspec

from alerts.models import Alarm, AlarmPause, AlarmTransition, Notification, OnCallShift
from alerts.schemas import AlarmOut, TransitionOut, alarm_out, transition_out
from config import live
from config.live import Frame
from telemetry.events import annotation_publish
from telemetry.models import Annotation


class AlarmTransitionFrame(Frame, tag="alarm.transition"):
    """Every transition, with the alarm as the REST API shows it after the transition."""

    patient: str
    alarm: AlarmOut
    transition: TransitionOut


class AlarmPauseFrame(Frame, tag="alarm.pause"):
    patient: str
    ward: str
    until: str
    priority: str
    by: str


class NotificationOut(msgspec.Struct, forbid_unknown_fields=True):
    """An in-app notification (an escalation addressed to the user), as the snapshot lists it."""

    id: int
    alarm: int
    text: str
    created_at: str


class AlarmNotificationFrame(NotificationOut, Frame, tag="alarm.notification"):
    """One new notification, live: the snapshot's item with its `type`."""


class PauseOut(msgspec.Struct, forbid_unknown_fields=True):
    patient: str
    until: str
    priority: str


class OnCallOut(msgspec.Struct, forbid_unknown_fields=True):
    """A shift in progress on the on-call roster: who escalations of the ward reach first."""

    ward: str
    user: str
    name: str
    note: str
    starts_at: str
    ends_at: str


def oncall_out(shift: OnCallShift) -> OnCallOut:
    """Needs the shift's user and ward loaded."""
    return OnCallOut(
        ward=shift.ward.code,
        user=shift.user.get_username(),
        name=shift.user.get_full_name(),
        note=shift.note,
        starts_at=live.iso(shift.starts_at),
        ends_at=live.iso(shift.ends_at),
    )


class AlarmSnapshotFrame(Frame, tag="alarm.snapshot"):
    """First frame of the console: the open alarms in scope (the PERFUSE_CONSOLE_SNAPSHOT_MAX most
    urgent, in console order; `alarms_total` says how many are open), active pauses, recent
    notifications, and who is on call now on the wards in scope (the roster; both people during a
    handover)."""

    alarms: list[AlarmOut]
    alarms_total: int
    pauses: list[PauseOut]
    notifications: list[NotificationOut]
    server_time: str
    oncall: list[OnCallOut]


ConsoleFrame = AlarmSnapshotFrame | AlarmTransitionFrame | AlarmPauseFrame | AlarmNotificationFrame


def transition_publish(*, alarm: Alarm, transition: AlarmTransition) -> None:
    """To the patient's chart, the ward overview and every alarm console (which filter by scope)."""
    frame = AlarmTransitionFrame(
        patient=alarm.patient.pseudonym, alarm=alarm_out(alarm), transition=transition_out(transition)
    )
    groups = [live.patient_group(alarm.patient.pseudonym), live.ward_group(alarm.ward.code), live.alarms_group()]
    live.publish_after_commit(groups, frame)


def mark_publish(*, alarm: Alarm, note: Annotation) -> None:
    """An alarm or acknowledgement mark on the patient's chart."""
    annotation_publish(pseudonym=alarm.patient.pseudonym, note=note)


def pause_publish(*, pause: AlarmPause, by: str) -> None:
    """The consoles' frame; charts learn of pauses from alarms."""
    frame = AlarmPauseFrame(
        patient=pause.patient.pseudonym,
        ward=pause.patient.ward.code,
        until=live.iso(pause.until),
        priority=pause.priority,
        by=by,
    )
    live.publish_after_commit([live.alarms_group()], frame)


def notification_publish(*, note: Notification) -> None:
    """To the recipient's alarm consoles only."""
    frame = AlarmNotificationFrame(
        id=note.pk, alarm=note.alarm_id, text=note.text, created_at=live.iso(note.created_at)
    )
    live.publish_after_commit([live.alarms_user_group(note.recipient_id)], frame)
