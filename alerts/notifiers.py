"""Who hears about an alarm outside the console, and through which channels.

A Notifier delivers one alarm event (`escalated`, or `raised` for the priorities in
settings.PERFUSE_NOTIFY_RAISE_PRIORITIES, default high) to a list of recipients, inside the
alarm's transaction. Configured in settings.PERFUSE_ALARM_NOTIFIERS (dotted class paths):

- InAppNotifier stores a Notification per recipient of an escalation (shown on the console) and
  pushes it live after commit; a raise is on the console already, so it stores nothing for one.
- LoggingNotifier writes each event to the `perfuse.alarms.notify` logger.
- OutboxNotifier writes the secondary notification outbox (alerts.models.Delivery): an email
  row per recipient with an address, a webhook row per event, each logged `queued`, and wakes
  the sender (`manage.py run_notifier`, alerts/outbox.py) with a NOTIFY that PostgreSQL delivers
  at commit. Nothing is sent here: a slow mail server never holds the alarm's transaction.

Recipients (`recipients_at`): level 1 is the ward's on-call roster now (alerts.models.OnCallShift,
both people during a handover); when nobody is rostered, the on-call staff of the ward, or every
on-call user when none covers it (an escalation must reach someone). Level 2 adds the ward's
on-call staff and the administrators.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from django.utils.module_loading import import_string

from alerts import channels
from alerts.events import notification_publish
from alerts.models import Alarm, Delivery, DeliveryAttempt, Notification
from alerts.selectors import roster_oncall
from alerts.vocabulary import Channel, DeliveryState, NotifyEvent
from audit.access.policy import ADMIN, ONCALL

notify_log = logging.getLogger("perfuse.alarms.notify")
OUTBOX_CHANNEL = "perfuse_outbox"  # the NOTIFY channel the sender listens on


class Notifier(Protocol):
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime, event: str) -> None: ...


class InAppNotifier:
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime, event: str) -> None:
        if event != NotifyEvent.ESCALATED:
            return
        for user in recipients:
            note = Notification.objects.create(recipient=user, alarm=alarm, created_at=now, text=text[:300])
            notification_publish(note=note)


class LoggingNotifier:
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime, event: str) -> None:
        notify_log.warning(
            "%s alarm=%s level=%s recipients=%s text=%s",
            event,
            alarm.pk,
            alarm.escalation_level,
            ",".join(sorted(u.username for u in recipients)),
            text,
        )


class OutboxNotifier:
    def notify(self, *, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime, event: str) -> None:
        rows: list[Delivery] = []
        usernames = [u.username for u in recipients]
        for channel in channels.channels_enabled():
            fields = channels.message_fields(
                alarm=alarm,
                event=event,
                level=alarm.escalation_level,
                at=now,
                allowed=channels.configured_fields(channel),
            )
            if channel == Channel.EMAIL:
                rows += [
                    _delivery(alarm, channel, event, now, fields, [u.username], u.email, u)
                    for u in recipients
                    if u.email
                ]
                unreachable = sorted(u.username for u in recipients if not u.email)
                if unreachable:
                    notify_log.warning("alarm %s: no email address for %s", alarm.pk, ",".join(unreachable))
            else:
                address = channels.webhook_host(settings.PERFUSE_WEBHOOK_URL)
                rows.append(_delivery(alarm, channel, event, now, fields, usernames, address, None))
        if not rows:
            return
        Delivery.objects.bulk_create(rows)
        DeliveryAttempt.objects.bulk_create(
            DeliveryAttempt(delivery=row, at=now, state=DeliveryState.QUEUED, attempt=0) for row in rows
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [OUTBOX_CHANNEL])


def _delivery(
    alarm: Alarm,
    channel: str,
    event: str,
    now: dt.datetime,
    fields: dict[str, Any],
    recipients: list[str],
    address: str,
    user: Any,
) -> Delivery:
    return Delivery(
        alarm=alarm,
        channel=channel,
        event=event,
        level=alarm.escalation_level,
        recipient=user,
        address=address,
        message={"fields": fields, "recipients": recipients},
        created_at=now,
        next_attempt_at=now,
    )


@lru_cache(maxsize=1)
def configured() -> list[Notifier]:
    return [import_string(path)() for path in settings.PERFUSE_ALARM_NOTIFIERS]


def recipients_at(alarm: Alarm, *, level: int, now: dt.datetime) -> list[User]:
    """Who is told of the alarm at escalation level `level` (the module docstring)."""
    users = get_user_model().objects.filter(is_active=True)
    ward_oncall = list(users.filter(groups__name=ONCALL, staff__wards=alarm.ward_id).distinct())
    rostered = roster_oncall(ward_id=alarm.ward_id, now=now)
    chosen = rostered or ward_oncall or list(users.filter(groups__name=ONCALL).distinct())
    if level >= 2:
        more = ward_oncall + list(users.filter(groups__name=ADMIN).distinct())
        chosen += [u for u in more if u not in chosen]
    return chosen


def escalation_recipients(alarm: Alarm, *, now: dt.datetime | None = None) -> list[User]:
    """The recipients of the alarm's current escalation level (at least level 1)."""
    return recipients_at(alarm, level=max(alarm.escalation_level, 1), now=now or timezone.now())


def _notify(*, alarm: Alarm, recipients: list[User], text: str, now: dt.datetime, event: str) -> None:
    if not recipients:
        notify_log.error("%s alarm %s reached nobody: no rostered, on-call or admin users", event, alarm.pk)
    for notifier in configured():
        notifier.notify(alarm=alarm, recipients=recipients, text=text, now=now, event=event)


def notify_escalation(*, alarm: Alarm, now: dt.datetime) -> None:
    text = (
        f"Escalated (level {alarm.escalation_level}): {alarm.priority} {alarm.get_kind_display()} "
        f"for {alarm.patient.pseudonym} on {alarm.ward.code}"
    )
    _notify(
        alarm=alarm, recipients=escalation_recipients(alarm, now=now), text=text, now=now, event=NotifyEvent.ESCALATED
    )


def notify_raise(*, alarm: Alarm, now: dt.datetime) -> None:
    """A raise of a priority that is sent at once (default: high) goes to the level-1 recipients."""
    if alarm.priority not in settings.PERFUSE_NOTIFY_RAISE_PRIORITIES:
        return
    text = f"Raised: {alarm.priority} {alarm.get_kind_display()} for {alarm.patient.pseudonym} on {alarm.ward.code}"
    _notify(
        alarm=alarm, recipients=recipients_at(alarm, level=1, now=now), text=text, now=now, event=NotifyEvent.RAISED
    )
