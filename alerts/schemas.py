"""Typed payloads of the alarm API, which the live alarm frames (alerts/events.py) carry too."""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

from alerts.models import Alarm, AlarmTransition, Delivery
from alerts.vocabulary import Kind
from config.live import iso


class AlarmOut(TypedDict):
    id: int
    patient: str
    ward: str
    kind: str
    kind_label: str
    priority: str
    category: str
    state: str
    latched: bool
    condition_present: bool
    condition_started_at: str
    condition_cleared_at: str | None
    raised_at: str
    activated_at: str
    acknowledged_by: str | None
    acknowledged_at: str | None
    note: str
    resolved_at: str | None
    escalation_level: int
    escalated: bool
    responsible: str | None
    accepted_at: str | None
    recurrences: int
    rule_version: int
    rule_scope: str
    chart_url: str


class TransitionOut(TypedDict):
    cause: str
    from_state: str
    to_state: str
    actor: str
    at: str


def iso_or_none(value: dt.datetime | None) -> str | None:
    return None if value is None else iso(value)


def alarm_out(alarm: Alarm) -> AlarmOut:
    """Needs patient, ward, rule, acknowledged_by and responsible loaded (select_related)."""
    started = iso(alarm.condition_started_at)
    return {
        "id": alarm.pk,
        "patient": alarm.patient.pseudonym,
        "ward": alarm.ward.code,
        "kind": alarm.kind,
        "kind_label": str(Kind(alarm.kind).label),
        "priority": alarm.priority,
        "category": alarm.category,
        "state": alarm.state,
        "latched": alarm.latched,
        "condition_present": alarm.condition_present,
        "condition_started_at": started,
        "condition_cleared_at": iso_or_none(alarm.condition_cleared_at),
        "raised_at": iso(alarm.raised_at),
        "activated_at": iso(alarm.activated_at),
        "acknowledged_by": alarm.acknowledged_by.username if alarm.acknowledged_by else None,
        "acknowledged_at": iso_or_none(alarm.acknowledged_at),
        "note": alarm.ack_note,
        "resolved_at": iso_or_none(alarm.resolved_at),
        "escalation_level": alarm.escalation_level,
        "escalated": alarm.ever_escalated,
        "responsible": alarm.responsible.username if alarm.responsible else None,
        "accepted_at": iso_or_none(alarm.accepted_at),
        "recurrences": alarm.recurrences,
        "rule_version": alarm.rule.version,
        "rule_scope": "patient" if alarm.rule.patient_id else "ward",
        "chart_url": f"/patients/{alarm.patient.pseudonym}/?at={started}",
    }


def transition_out(t: AlarmTransition) -> TransitionOut:
    return {
        "cause": t.cause,
        "from_state": t.from_state,
        "to_state": t.to_state,
        "actor": t.actor_username,
        "at": iso(t.at),
    }


class DeliveryStepOut(TypedDict):
    state: str
    attempt: int
    at: str
    error: str


class DeliveryOut(TypedDict):
    """A secondary notification of the alarm (outbox row) with every step it went through."""

    id: int
    channel: str
    event: str
    level: int
    recipient: str | None
    address: str
    state: str
    attempts: int
    created_at: str
    sent_at: str | None
    last_error: str
    log: list[DeliveryStepOut]


def delivery_out(d: Delivery) -> DeliveryOut:
    """Needs recipient loaded and the log prefetched (alerts.selectors.alarm_deliveries)."""
    return {
        "id": d.pk,
        "channel": d.channel,
        "event": d.event,
        "level": d.level,
        "recipient": d.recipient.get_username() if d.recipient else None,
        "address": d.address,
        "state": d.state,
        "attempts": d.attempts,
        "created_at": iso(d.created_at),
        "sent_at": iso_or_none(d.sent_at),
        "last_error": d.last_error,
        "log": [
            {"state": step.state, "attempt": step.attempt, "at": iso(step.at), "error": step.error}
            for step in d.log.all()
        ],
    }
