"""Staff scope (wards) and the append-only, hash-chained audit trail."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class StaffProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff")
    wards = models.ManyToManyField("telemetry.Ward", blank=True, related_name="staff")

    def __str__(self) -> str:
        return f"staff:{self.user_id}"


class AuditEvent(models.Model):
    """One audited act. Rows are never updated or deleted (database triggers refuse it).

    `prev_hash` is the previous event's `hash`; `hash` is SHA-256 over prev_hash and this row's
    canonical content (audit/chain.py). Actor and subject are copied as text, not foreign keys,
    so no cascade can ever rewrite history.
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

    class Meta:
        ordering = ["id"]
