"""Who hears about an escalation, and through which channels.

A Notifier delivers one escalation to a list of recipients. The in-app channel stores a
Notification per recipient (shown on the console) and pushes it live after commit. Other channels
(email, pager) plug in through settings.PERFUSE_ALARM_NOTIFIERS (dotted class paths); the
LoggingNotifier writes each escalation to the `perfuse.alarms.notify` logger, which operations can
route to a pager gateway.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import Protocol

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import Q
from django.utils.module_loading import import_string

from alerts.events import notification_publish
from alerts.models import Alarm, Notification
from audit.access.policy import ADMIN, ONCALL

DEFAULT_NOTIFIERS = ["alerts.notifiers.InAppNotifier", "alerts.notifiers.LoggingNotifier"]
notify_log = logging.getLogger("perfuse.alarms.notify")


class Notifier(Protocol):
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime) -> None: ...


class InAppNotifier:
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime) -> None:
        for user in recipients:
            note = Notification.objects.create(recipient=user, alarm=alarm, created_at=now, text=text[:300])
            notification_publish(note=note)


class LoggingNotifier:
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime) -> None:
        notify_log.warning(
            "escalation alarm=%s level=%s recipients=%s text=%s",
            alarm.pk,
            alarm.escalation_level,
            ",".join(sorted(u.username for u in recipients)),
            text,
        )


@lru_cache(maxsize=1)
def configured() -> list[Notifier]:
    paths = getattr(settings, "PERFUSE_ALARM_NOTIFIERS", DEFAULT_NOTIFIERS)
    return [import_string(path)() for path in paths]


def escalation_recipients(alarm: Alarm) -> list[User]:
    """Level 1: on-call staff of the alarm's ward, or every on-call user when none covers it (an
    escalation must reach someone). Level 2 adds administrators."""
    users = get_user_model().objects.filter(is_active=True)
    oncall = users.filter(groups__name=ONCALL)
    chosen = list(oncall.filter(staff__wards=alarm.ward_id).distinct()) or list(oncall.distinct())
    if alarm.escalation_level >= 2:
        more = users.filter(Q(groups__name=ADMIN)).distinct()
        chosen += [u for u in more if u not in chosen]
    return chosen


def notify_escalation(*, alarm: Alarm, now: dt.datetime) -> None:
    recipients = escalation_recipients(alarm)
    text = (
        f"Escalated (level {alarm.escalation_level}): {alarm.priority} {alarm.get_kind_display()} "
        f"for {alarm.patient.pseudonym} on {alarm.ward.code}"
    )
    if not recipients:
        notify_log.error("escalation of alarm %s reached nobody: no on-call or admin users", alarm.pk)
    for notifier in configured():
        notifier.notify(alarm=alarm, recipients=recipients, text=text, now=now)
