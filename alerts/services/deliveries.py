"""Writes of the notification outbox's sender: claiming due messages, recording each attempt,
and the technical alarm of a channel that keeps failing.

Claiming is one UPDATE over a `FOR UPDATE SKIP LOCKED` sub-select: several senders never take
the same row, and none waits for another. A claimed row is `sending` with a lease; a sender that
dies mid-send leaves it to be claimed again when the lease ends (at-least-once: the message id
lets a receiver drop the duplicate). Recording is conditional on the claim (state `sending` and
the same attempt number), so a sender whose lease ran out cannot overwrite a newer attempt.

Retry schedule: after failed attempt n the next is due base · 2^(n-1) seconds later (capped);
after PERFUSE_NOTIFY_MAX_ATTEMPTS attempts, or at once when the receiver refused the message for
good, the row is `gave_up`.

A failing channel raises the technical alarm `notification_failed` (medium) on the ward of the
alarm whose message failed: when a row gives up, or after PERFUSE_NOTIFY_FAILURES_ALARM failed
attempts in a row on the channel. One per ward at a time (an advisory lock per ward serialises
the check): it is raised on the patient whose alarm could not be sent, and further failures on
the ward add their channel to it or make it recur. The next successful delivery on the channel
clears its condition; the engine's timers resolve it after the suppression window. Each message
sent is audited (`alarm.notification_sent`, subject the pseudonym): patient data left the
building; a message given up is audited too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from alerts.channels import Message, Outcome
from alerts.models import Alarm, Delivery, DeliveryAttempt
from alerts.services.alarms import alarm_condition_clear, alarm_raise, alarm_recur
from alerts.services.rules import rule_current_ward
from alerts.vocabulary import OPEN_STATES, DeliveryState, Kind
from audit.trail import SYSTEM, audit_record
from config.live import iso
from config.retry import backoff

FAILED_ALARM_LOCK = 0x4E46  # "NF": advisory lock class of the per-ward notification_failed check
ATTEMPT_OUTCOMES = (DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.GAVE_UP)


@dataclass(frozen=True)
class Claim:
    """A claimed outbox row: the message to send and the attempt it is."""

    message: Message
    attempt: int


def retry_delay(attempt: int) -> dt.timedelta:
    """Back-off after failed attempt `attempt` (1-based): exponential, capped (config.retry)."""
    return backoff(
        attempt, base=settings.PERFUSE_NOTIFY_RETRY_BASE_SECONDS, cap=settings.PERFUSE_NOTIFY_RETRY_MAX_SECONDS
    )


_CLAIM_SQL = """
    UPDATE alerts_delivery AS d SET state = 'sending', attempts = d.attempts + 1, lease_until = %(lease)s
    WHERE d.id IN (
        SELECT id FROM alerts_delivery
        WHERE ((state IN ('queued', 'failed') AND next_attempt_at <= %(now)s)
               OR (state = 'sending' AND lease_until < %(now)s))
          AND channel = ANY(%(channels)s)
        ORDER BY next_attempt_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING d.id, d.attempts
"""


def deliveries_claim(*, now: dt.datetime, channels: list[str], limit: int, lease: dt.timedelta) -> list[Claim]:
    """Take up to `limit` due rows of these channels for sending (its own short transaction)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"now": now, "lease": now + lease, "channels": channels, "limit": limit})
        attempts = dict(cursor.fetchall())
    rows = Delivery.objects.filter(pk__in=attempts).order_by("next_attempt_at", "id")
    return [
        Claim(
            Message(
                delivery_id=row.pk,
                channel=row.channel,
                address=row.address,
                fields=row.message.get("fields", {}),
                recipients=row.message.get("recipients", []),
            ),
            attempts[row.pk],
        )
        for row in rows
    ]


def delivery_record(*, claim: Claim, outcome: Outcome, now: dt.datetime, elapsed_ms: int | None = None) -> str | None:
    """Record one attempt's outcome; returns the row's new state (None when the claim was lost)."""
    with transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update(of=("self",))
            .select_related("alarm__patient", "alarm__ward")
            .filter(pk=claim.message.delivery_id, state=DeliveryState.SENDING, attempts=claim.attempt)
            .first()
        )
        if delivery is None:
            return None
        if outcome.ok:
            state = DeliveryState.SENT
            delivery.sent_at = now
        elif outcome.permanent or claim.attempt >= settings.PERFUSE_NOTIFY_MAX_ATTEMPTS:
            state = DeliveryState.GAVE_UP
        else:
            state = DeliveryState.FAILED
            delivery.next_attempt_at = now + retry_delay(claim.attempt)
        delivery.state = state
        delivery.lease_until = None
        delivery.last_error = outcome.error[:500]
        delivery.save(update_fields=["state", "sent_at", "next_attempt_at", "lease_until", "last_error"])
        DeliveryAttempt.objects.create(
            delivery=delivery,
            at=now,
            state=state,
            attempt=claim.attempt,
            error=outcome.error[:500],
            elapsed_ms=elapsed_ms,
        )
        if state != DeliveryState.FAILED:
            _audit(delivery, state)
        if state == DeliveryState.SENT:
            _channel_recovered(delivery.channel, now=now)
        elif (
            state == DeliveryState.GAVE_UP
            or _failures_in_a_row(delivery.channel) >= settings.PERFUSE_NOTIFY_FAILURES_ALARM
        ):
            _channel_failed(delivery, now=now, gave_up=state == DeliveryState.GAVE_UP)
        return state


def _audit(delivery: Delivery, state: str) -> None:
    alarm = delivery.alarm
    audit_record(
        actor=SYSTEM,
        action="alarm.notification_sent" if state == DeliveryState.SENT else "alarm.notification_gave_up",
        subject=alarm.patient.pseudonym,
        detail={
            "alarm": alarm.pk,
            "delivery": delivery.pk,
            "channel": delivery.channel,
            "address": delivery.address,
            "event": delivery.event,
            "fields": sorted(delivery.message.get("fields", {})),
            "attempts": delivery.attempts,
        },
    )


def _failures_in_a_row(channel: str) -> int:
    """Failed attempts on the channel since its last success (counted up to the alarm's limit)."""
    recent = (
        DeliveryAttempt.objects.filter(delivery__channel=channel, state__in=ATTEMPT_OUTCOMES)
        .order_by("-at", "-id")
        .values_list("state", flat=True)[: settings.PERFUSE_NOTIFY_FAILURES_ALARM]
    )
    count = 0
    for state in recent:
        if state == DeliveryState.SENT:
            break
        count += 1
    return count


def _open_failure_alarms() -> Any:
    return Alarm.objects.filter(kind=Kind.NOTIFICATION_FAILED, state__in=OPEN_STATES)


def _channel_failed(delivery: Delivery, *, now: dt.datetime, gave_up: bool) -> None:
    alarm = delivery.alarm
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [FAILED_ALARM_LOCK, alarm.ward_id])
    open_alarm = (
        _open_failure_alarms()
        .select_for_update()
        .filter(Q(ward_id=alarm.ward_id) | Q(patient_id=alarm.patient_id))
        .order_by("id")
        .first()
    )
    channels = sorted({delivery.channel, *((open_alarm.explain.get("channels", [])) if open_alarm else [])})
    explain = {
        "at": iso(now),
        "channels": channels,
        "reason": "gave_up" if gave_up else "failures_in_a_row",
        "failed_alarm": alarm.pk,
        "delivery": delivery.pk,
        "error": delivery.last_error,
        "attempts": delivery.attempts,
    }
    if open_alarm is None:
        alarm_raise(
            patient=alarm.patient,
            rule=rule_current_ward(alarm.ward),
            kind=Kind.NOTIFICATION_FAILED,
            onset=now,
            now=now,
            explain=explain,
        )
    elif not open_alarm.condition_present:
        alarm_recur(alarm_id=open_alarm.pk, onset=now, now=now, explain=explain)
    elif channels != open_alarm.explain.get("channels"):
        open_alarm.explain = {**open_alarm.explain, "channels": channels}
        open_alarm.save(update_fields=["explain"])


def _channel_recovered(channel: str, *, now: dt.datetime) -> None:
    """A message went out on `channel`: it is no longer a reason for a notification_failed."""
    for open_alarm in _open_failure_alarms().select_for_update().filter(condition_present=True).order_by("id"):
        failing = [c for c in open_alarm.explain.get("channels", []) if c != channel]
        if failing == open_alarm.explain.get("channels", []):
            continue
        if failing:
            open_alarm.explain = {**open_alarm.explain, "channels": failing}
            open_alarm.save(update_fields=["explain"])
        else:
            alarm_condition_clear(alarm_id=open_alarm.pk, cleared_at=now, now=now)
