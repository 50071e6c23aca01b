"""Pure lifecycle decisions on an alarm's stored fields and the current time (no I/O).

The engine's timers ask these on every tick; the answers depend only on the arguments, so tests
can freeze time and walk an alarm through its life.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

from alerts.vocabulary import PRIORITY_RANK, State

# The states by the short names these rules use.
ACTIVE, ACKNOWLEDGED, RESOLVED = State.ACTIVE_UNACKNOWLEDGED, State.ACKNOWLEDGED, State.RESOLVED
# 0: the ward's own staff; 1: the on-call role; 2: on-call and administrators (supervisor).
MAX_ESCALATION_LEVEL = 2


@dataclass(frozen=True)
class AlarmView:
    """The fields of an alarm the lifecycle rules read."""

    state: str
    priority: str
    latched: bool
    condition_present: bool
    condition_cleared_at: dt.datetime | None
    activated_at: dt.datetime
    acknowledged_at: dt.datetime | None
    escalation_level: int
    escalated_at: dt.datetime | None
    responsible_id: int | None

    @classmethod
    def of(cls, alarm: Any) -> AlarmView:
        """The view of anything with these attributes: an Alarm row, or the engine's timer row."""
        return cls(**{f.name: getattr(alarm, f.name) for f in fields(cls)})


def due_resolution(a: AlarmView, *, now: dt.datetime, suppression_window: dt.timedelta) -> bool:
    """Resolve once the condition has been gone for the suppression window, unless it is latched
    (high priority) and nobody has acknowledged it yet. A return inside the window reopens nothing:
    the alarm is still open and is simply updated."""
    if a.state == RESOLVED or a.condition_present or a.condition_cleared_at is None:
        return False
    if a.latched and a.state == ACTIVE:
        return False
    return now >= a.condition_cleared_at + suppression_window


def due_realert(a: AlarmView, *, now: dt.datetime, realert_interval: dt.timedelta) -> bool:
    """An acknowledged alarm whose condition is still present alerts again after the interval."""
    return (
        a.state == ACKNOWLEDGED
        and a.condition_present
        and a.acknowledged_at is not None
        and now >= a.acknowledged_at + realert_interval
    )


def due_escalation(a: AlarmView, *, now: dt.datetime, escalation_delay: dt.timedelta) -> bool:
    """Unacknowledged and nobody has accepted responsibility: one level up per escalation delay."""
    if a.state != ACTIVE or a.responsible_id is not None or a.escalation_level >= MAX_ESCALATION_LEVEL:
        return False
    since = max(a.activated_at, a.escalated_at) if a.escalated_at else a.activated_at
    return now >= since + escalation_delay


def suppressed_by_pause(priority: str, pause_priority: str | None) -> bool:
    """While a patient is paused, alarms of the pause's priority or lower are not raised; a higher
    priority breaks through."""
    return pause_priority is not None and PRIORITY_RANK[priority] <= PRIORITY_RANK[pause_priority]
