"""Alarm rules (immutable versions), alarms with their lifecycle, transitions, pauses, notifications,
the on-call roster and the notification outbox.

A rule version is never edited: `rule_update` writes a new row with the next version number and a
database trigger refuses UPDATE, so the version an alarm points at is exactly the rule that
raised it. A ward has a rule; a patient may have an override (a complete rule of its own).
Kinds, priorities, categories and states are alerts/vocabulary.py's.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from alerts.vocabulary import Category, Channel, DeliveryState, Kind, NotifyEvent, Priority, State
from telemetry.models import Patient, Ward

# Shipped clinical defaults (docs/alarms.md explains each). Keys are AlarmRule field names.
RULE_DEFAULTS: dict[str, float | int] = {
    "low_threshold": 35.0,
    "low_delay_s": 30,
    "critical_threshold": 25.0,
    "critical_delay_s": 10,
    "rapid_fall_drop": 15.0,
    "rapid_fall_window_s": 60,
    "quality_level": 0.5,
    "quality_delay_s": 60,
    "no_data_delay_s": 120,
    "clear_margin": 3.0,
    "clear_delay_s": 15,
    "realert_interval_s": 300,
    "suppression_window_s": 120,
    "escalation_delay_s": 120,
    "max_pause_s": 600,
    # SpO2 (pulse oximetry) and the sensor's battery: docs/alarms.md gives the sources.
    "spo2_low_threshold": 90.0,
    "spo2_low_delay_s": 15,
    "spo2_critical_threshold": 80.0,
    "spo2_critical_delay_s": 10,
    "spo2_clear_margin": 2.0,
    "battery_low_threshold": 3500.0,
    "battery_low_delay_s": 60,
}
RULE_FIELDS = tuple(RULE_DEFAULTS)


class AlarmRule(models.Model):
    """One immutable version of a ward's rule (patient is null) or of a patient's override."""

    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="alarm_rules")
    patient = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="alarm_rules")
    version = models.PositiveIntegerField()
    # A patient override version with retired=True returns the patient to the ward's rule.
    retired = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    created_by = models.CharField(max_length=150)
    reason = models.CharField(max_length=500, blank=True, default="")

    low_threshold = models.FloatField(help_text="% tissue O2")
    low_delay_s = models.PositiveIntegerField()
    critical_threshold = models.FloatField(help_text="% tissue O2")
    critical_delay_s = models.PositiveIntegerField()
    rapid_fall_drop = models.FloatField(help_text="%-points")
    rapid_fall_window_s = models.PositiveIntegerField()
    quality_level = models.FloatField(help_text="signal quality 0..1")
    quality_delay_s = models.PositiveIntegerField()
    no_data_delay_s = models.PositiveIntegerField()
    clear_margin = models.FloatField(help_text="%-points above the threshold to clear")
    clear_delay_s = models.PositiveIntegerField()
    realert_interval_s = models.PositiveIntegerField()
    suppression_window_s = models.PositiveIntegerField()
    escalation_delay_s = models.PositiveIntegerField()
    max_pause_s = models.PositiveIntegerField()
    spo2_low_threshold = models.FloatField(help_text="% SpO2")
    spo2_low_delay_s = models.PositiveIntegerField()
    spo2_critical_threshold = models.FloatField(help_text="% SpO2")
    spo2_critical_delay_s = models.PositiveIntegerField()
    spo2_clear_margin = models.FloatField(help_text="%-points above an SpO2 threshold to clear")
    battery_low_threshold = models.FloatField(help_text="mV")
    battery_low_delay_s = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["ward", "version"], condition=Q(patient__isnull=True), name="ward_rule_version_once"
            ),
            models.UniqueConstraint(
                fields=["patient", "version"], condition=Q(patient__isnull=False), name="patient_rule_version_once"
            ),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        scope = self.patient.pseudonym if self.patient_id else self.ward.code  # type: ignore[union-attr]
        return f"rule {scope} v{self.version}"

    def values(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in RULE_FIELDS}


class Alarm(models.Model):
    State = State

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="alarms")
    # The ward at raise time: scoping and fatigue figures must not move when a patient transfers.
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="alarms")
    kind = models.CharField(max_length=20, choices=Kind.choices())
    priority = models.CharField(max_length=10, choices=Priority.choices())
    priority_rank = models.PositiveSmallIntegerField()  # vocabulary.PRIORITY_RANK: the console's order
    category = models.CharField(max_length=15, choices=Category.choices())
    state = models.CharField(max_length=25, choices=State.choices(), default=State.ACTIVE_UNACKNOWLEDGED.value)
    latched = models.BooleanField(default=False)
    rule = models.ForeignKey(AlarmRule, on_delete=models.PROTECT, related_name="alarms")

    # The alarm condition, in sample time: when it began, whether it is present, when it cleared.
    condition_started_at = models.DateTimeField()
    condition_present = models.BooleanField(default=True)
    condition_cleared_at = models.DateTimeField(null=True, blank=True)
    recurrences = models.PositiveIntegerField(default=0)

    raised_at = models.DateTimeField()
    # Last entry into active_unacknowledged (raise or re-alert): escalation counts from here.
    activated_at = models.DateTimeField()
    last_triggered_at = models.DateTimeField()
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    ack_note = models.CharField(max_length=500, blank=True, default="")
    first_acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    escalation_level = models.PositiveSmallIntegerField(default=0)
    escalated_at = models.DateTimeField(null=True, blank=True)
    ever_escalated = models.BooleanField(default=False)
    responsible = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    accepted_at = models.DateTimeField(null=True, blank=True)

    explain = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "kind"], condition=~Q(state="resolved"), name="one_open_alarm_per_patient_kind"
            ),
        ]
        indexes = [
            models.Index(fields=["state", "-priority_rank", "raised_at"]),
            models.Index(fields=["patient", "kind", "condition_started_at"]),
            models.Index(fields=["ward", "raised_at"]),
        ]

    def __str__(self) -> str:
        return f"alarm {self.pk} {self.kind} {self.state}"

    @property
    def is_open(self) -> bool:
        return self.state != State.RESOLVED


class AlarmTransition(models.Model):
    """Every change of an alarm, with its cause and who (or what) caused it."""

    alarm = models.ForeignKey(Alarm, on_delete=models.PROTECT, related_name="transitions")
    at = models.DateTimeField()
    from_state = models.CharField(max_length=25, blank=True, default="")
    to_state = models.CharField(max_length=25)
    cause = models.CharField(max_length=30)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_username = models.CharField(max_length=150)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]


class AlarmPause(models.Model):
    """Audio-paused style: alarms of `priority` or lower are not raised for the patient until `until`."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="alarm_pauses")
    started_at = models.DateTimeField()
    until = models.DateTimeField()
    priority = models.CharField(max_length=10, choices=Priority.choices())
    paused_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=300, blank=True, default="")
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["patient", "until"])]


class Notification(models.Model):
    """An in-app notification (escalations); other channels are Notifier classes in settings."""

    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alarm_notifications"
    )
    alarm = models.ForeignKey(Alarm, on_delete=models.PROTECT, related_name="notifications")
    created_at = models.DateTimeField()
    text = models.CharField(max_length=300)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["recipient", "created_at"])]
        ordering = ["-created_at"]


class OnCallShift(models.Model):
    """Who is on call for a ward from `starts_at` until `ends_at` (the on-call roster).

    Shifts of one ward may overlap: that is the handover, when both people are on call and both
    are notified. Edited by administrators (alerts/services/roster.py), every edit audited."""

    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="oncall_shifts")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="oncall_shifts")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    note = models.CharField(max_length=120, blank=True, default="", help_text="role on the shift, e.g. charge nurse")
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="shift_ends_after_start"),
        ]
        indexes = [models.Index(fields=["ward", "ends_at", "starts_at"])]
        ordering = ["starts_at", "id"]

    def __str__(self) -> str:
        return f"shift {self.ward_id} {self.user_id} {self.starts_at:%Y-%m-%d %H:%M}"


class Delivery(models.Model):
    """One message of the notification outbox: an alarm event to send on one channel.

    Written in the alarm's transaction (alerts/notifiers.py OutboxNotifier), sent afterwards by
    `manage.py run_notifier` (alerts/outbox.py), which claims due rows with SKIP LOCKED. The
    message fields are fixed at enqueue time and hold only what the channel may carry
    (alerts/channels.py `message_fields`): no row here holds more than leaves the building."""

    alarm = models.ForeignKey(Alarm, on_delete=models.PROTECT, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices())
    event = models.CharField(max_length=10, choices=NotifyEvent.choices())
    level = models.PositiveSmallIntegerField()  # the alarm's escalation level at the event
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    address = models.CharField(max_length=254, help_text="email address, or the webhook's host")
    message = models.JSONField(default=dict)
    state = models.CharField(max_length=10, choices=DeliveryState.choices(), default=DeliveryState.QUEUED.value)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    # While `sending`: a sender that crashed releases its claim when this passes.
    lease_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(state__in=["queued", "failed", "sending"]),
                name="delivery_due",
            ),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"delivery {self.pk} {self.channel} {self.state}"


class DeliveryAttempt(models.Model):
    """Each step of a delivery, kept: queued, then per attempt sent, failed or gave_up."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="log")
    at = models.DateTimeField()
    state = models.CharField(max_length=10, choices=DeliveryState.choices())
    attempt = models.PositiveSmallIntegerField()
    error = models.CharField(max_length=500, blank=True, default="")
    # How long the attempt took (connect to accepted or refused), for operations and the bench.
    elapsed_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["at"])]
