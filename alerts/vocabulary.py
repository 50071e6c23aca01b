"""The words of alarms, defined once: kinds (and the metric each is decided on), priorities and
their ranks, categories, states.

Plain Python (no Django), so the pure evaluator (alerts/evaluation.py) and lifecycle
(alerts/lifecycle.py) use the same names as the models (alerts/models.py gives its fields these
choices), the API, the selectors and the ward overview. Each is a StrEnum: a member is its stored
and transmitted string, so it compares equal to the value read back from the database.
"""

from __future__ import annotations

from enum import StrEnum


class Term(StrEnum):
    """A word of the vocabulary: the value is stored and sent, the label is shown to people."""

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").title()

    @classmethod
    def values(cls) -> list[str]:
        return [member.value for member in cls]

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        return [(member.value, member.label) for member in cls]


class Priority(Term):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


# Larger is more urgent: the console sorts by it (Alarm.priority_rank), pauses compare it.
PRIORITY_RANK: dict[str, int] = {Priority.HIGH: 3, Priority.MEDIUM: 2, Priority.LOW: 1}


class Category(Term):
    PHYSIOLOGICAL = "physiological"
    TECHNICAL = "technical"


class State(Term):
    """IEC 60601-1-8 alarm states as the API names them."""

    ACTIVE_UNACKNOWLEDGED = "active_unacknowledged"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


OPEN_STATES = (State.ACTIVE_UNACKNOWLEDGED, State.ACKNOWLEDGED)


class Kind(Term):
    CRITICAL_LOW = "critical_low"
    LOW = "low"
    RAPID_FALL = "rapid_fall"
    SIGNAL_QUALITY = "signal_quality"
    NO_DATA = "no_data"
    SPO2_CRITICAL_LOW = "spo2_critical_low"
    SPO2_LOW = "spo2_low"
    BATTERY_LOW = "battery_low"
    # Secondary notification of alarms (email, webhook) keeps failing on a ward: alarms raised
    # there may not reach anyone outside the console (docs/alarms.md, "Failed channels").
    NOTIFICATION_FAILED = "notification_failed"
    # The EHR refused (ACK AR) a results message: it sits in the HL7 dead-letter list, and the
    # patient's results for that interval are not in the record (docs/hl7-results.md, "Dead letters").
    HL7_REJECTED = "hl7_rejected"

    @property
    def label(self) -> str:
        return KIND_LABELS[self]


KIND_LABELS: dict[str, str] = {
    Kind.CRITICAL_LOW: "Tissue O2 critically low",
    Kind.LOW: "Tissue O2 low",
    Kind.RAPID_FALL: "Tissue O2 falling rapidly",
    Kind.SIGNAL_QUALITY: "Signal quality low",
    Kind.NO_DATA: "No data from sensor",
    Kind.SPO2_CRITICAL_LOW: "SpO2 critically low",
    Kind.SPO2_LOW: "SpO2 low",
    Kind.BATTERY_LOW: "Sensor battery low",
    Kind.NOTIFICATION_FAILED: "Alarm notification failed",
    Kind.HL7_REJECTED: "Results rejected by the EHR",
}
# The metric (telemetry.units.METRICS key) whose samples decide each sample kind, in the order the
# evaluator checks them. No-data is decided by the clock (the engine), from any metric.
METRIC_KINDS: dict[str, tuple[Kind, ...]] = {
    "tissue_o2": (Kind.CRITICAL_LOW, Kind.LOW, Kind.RAPID_FALL, Kind.SIGNAL_QUALITY),
    "spo2": (Kind.SPO2_CRITICAL_LOW, Kind.SPO2_LOW),
    "battery": (Kind.BATTERY_LOW,),
}
KIND_METRIC: dict[str, str] = {kind: metric for metric, kinds in METRIC_KINDS.items() for kind in kinds}
SAMPLE_KINDS = tuple(KIND_METRIC)
PHYSIOLOGICAL_KINDS = (Kind.CRITICAL_LOW, Kind.LOW, Kind.RAPID_FALL, Kind.SPO2_CRITICAL_LOW, Kind.SPO2_LOW)

# Priority and category are properties of the condition, not of a ward's taste (IEC 60601-1-8:
# priority follows the urgency of the response the condition demands).
KIND_PRIORITY: dict[str, Priority] = {
    Kind.CRITICAL_LOW: Priority.HIGH,
    Kind.LOW: Priority.MEDIUM,
    Kind.RAPID_FALL: Priority.MEDIUM,
    Kind.SIGNAL_QUALITY: Priority.LOW,
    Kind.NO_DATA: Priority.MEDIUM,
    # A desaturation is the SpO2 monitor's high-priority alarm, its low limit a medium one; a low
    # battery still leaves time to change it (docs/alarms.md cites the defaults).
    Kind.SPO2_CRITICAL_LOW: Priority.HIGH,
    Kind.SPO2_LOW: Priority.MEDIUM,
    Kind.BATTERY_LOW: Priority.LOW,
    Kind.NOTIFICATION_FAILED: Priority.MEDIUM,
    # Nothing at the bedside is wrong, and nothing there can fix it: the integration team acts.
    Kind.HL7_REJECTED: Priority.LOW,
}
KIND_CATEGORY: dict[str, Category] = {
    kind: Category.PHYSIOLOGICAL if kind in PHYSIOLOGICAL_KINDS else Category.TECHNICAL for kind in Kind
}


class Channel(Term):
    """Secondary notification channels (alerts/channels.py): messages that leave the building."""

    EMAIL = "email"
    WEBHOOK = "webhook"


class DeliveryState(Term):
    """A message of the notification outbox (alerts.models.Delivery): `queued` until a sender
    claims it (`sending`), then `sent`, or `failed` (to be retried after a back-off) and in the
    end `gave_up`. A DeliveryAttempt row records each of these steps with its time and error."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    GAVE_UP = "gave_up"


# What made the message: a high-priority raise or an escalation (alerts/notifiers.py).
class NotifyEvent(Term):
    RAISED = "raised"
    ESCALATED = "escalated"
