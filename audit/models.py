"""Staff scope (wards) and the append-only, hash-chained audit trail."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from audit.chain import HASH_VERSION


class StaffProfile(models.Model):
    class DisplayMode(models.TextChoices):
        """How pages are drawn for this user (static/css/app.css): "auto" follows the system's
        light or dark preference, the others fix a scheme."""

        AUTO = "auto", "Auto (system)"
        DAY = "day", "Day"
        NIGHT = "night", "Night"
        CONTRAST = "contrast", "High contrast"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff")
    wards = models.ManyToManyField("telemetry.Ward", blank=True, related_name="staff")
    display_mode = models.CharField(max_length=16, choices=DisplayMode.choices, default=DisplayMode.AUTO)

    class Meta:
        # Role capabilities, granted to the role groups by migration 0004. Checked through
        # audit.access.user_can, never as ad-hoc flags.
        permissions = [
            ("view_ward_patients", "See telemetry of the patients of one's wards"),
            ("reveal_identity", "Reveal a patient's identity on the chart (own wards)"),
            ("acknowledge_alarms", "Acknowledge and take responsibility for alarms"),
            ("manage_patient_flow", "Admit, move and discharge patients of one's wards and associate their devices"),
            ("view_audit_trail", "Search and export the audit trail"),
            ("break_glass", "Open time-limited emergency access to one patient"),
            ("manage_devices", "Manage devices and device keys"),
            ("manage_staff", "Manage staff accounts and roles"),
            ("edit_alarm_rules", "Edit alarm rules"),
            ("manage_legal_holds", "Set and release legal holds on a patient's or a ward's data"),
            ("view_retention", "See the retention settings and what each past day became"),
            ("research_export", "Export a de-identified cohort for research"),
        ]

    def __str__(self) -> str:
        return f"staff:{self.user_id}"


class AuditEvent(models.Model):
    """One audited act. Rows are never updated or deleted (database triggers refuse it).

    `prev_hash` is the previous event's `hash`; `hash` is an HMAC (keyed outside the database)
    over prev_hash and this row's canonical content, or plain SHA-256 for rows written before the
    key (`hash_version` 1; audit/chain.py). Actor and subject are copied as text, not foreign
    keys, so no cascade can ever rewrite history.
    """

    class Outcome(models.TextChoices):
        ALLOWED = "allowed"
        DENIED = "denied"

    occurred_at = models.DateTimeField(db_index=True)
    actor_id = models.BigIntegerField(null=True, db_index=True)
    actor_username = models.CharField(max_length=150, blank=True, default="")
    role = models.CharField(max_length=20, blank=True, default="")
    action = models.CharField(max_length=60, db_index=True)
    subject = models.CharField(max_length=80, blank=True, default="", db_index=True)
    purpose = models.CharField(max_length=500, blank=True, default="")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    source_address = models.CharField(max_length=64, blank=True, default="")
    user_agent = models.CharField(max_length=300, blank=True, default="")
    break_glass = models.BooleanField(default=False)
    detail = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    hash_version = models.PositiveSmallIntegerField(default=HASH_VERSION)

    class Meta:
        ordering = ["id"]


class StaffSession(models.Model):
    """A live login session of a staff user, so "log out everywhere" can find every one of them
    whatever the session backend (the session table itself cannot be searched by user)."""

    session_key = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_sessions")
    created_at = models.DateTimeField(auto_now_add=True)
    source_address = models.CharField(max_length=64, blank=True, default="")
    user_agent = models.CharField(max_length=300, blank=True, default="")


class BreakGlassGrant(models.Model):
    """Emergency, time-limited access of one user to one patient's data, with a stated purpose.

    Created only through audit.access.breakglass.break_glass_grant (which audits it); consulted by
    audit.access.patient_access. Never extended: a new need is a new grant with a new purpose.
    """

    class Reason(models.TextChoices):
        EMERGENCY_CARE = "emergency_care", "Emergency care"
        INCIDENT_REVIEW = "incident_review", "Clinical incident review"
        PRIVACY_INVESTIGATION = "privacy_investigation", "Privacy or security investigation"
        PATIENT_REQUEST = "patient_request", "Patient or legal request"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="break_glass_grants")
    patient = models.ForeignKey("telemetry.Patient", on_delete=models.PROTECT, related_name="break_glass_grants")
    reason = models.CharField(max_length=40, choices=Reason.choices)
    purpose = models.CharField(max_length=500)
    granted_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "patient", "expires_at"])]


class AuditCheckpoint(models.Model):
    """A signed statement "the chain had `events` rows ending at event `event_id` with `hash`".

    Kept outside the audit table and signed with PERFUSE_AUDIT_CHECKPOINT_KEY (not SECRET_KEY,
    not in the database): someone who can rewrite the audit table and recompute every hash
    still cannot forge these, so audit_verify detects a full rewrite. Each checkpoint also
    signs its predecessor's signature, so deleting a checkpoint in the middle is detected too,
    and each is anchored outside the database (audit/anchor.py), so deleting the newest ones is
    detected as well. Append-only like the events (triggers, migration 0005).
    """

    seq = models.PositiveIntegerField(unique=True)
    event_id = models.BigIntegerField()
    event_hash = models.CharField(max_length=64)
    events = models.BigIntegerField()
    created_at = models.DateTimeField()
    prev_signature = models.CharField(max_length=64)
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["seq"]
