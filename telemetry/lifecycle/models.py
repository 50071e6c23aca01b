"""Legal holds, the retention job's findings per ward-day, and research exports with their files.

Imported by telemetry/models.py, so they are telemetry's models (app label `telemetry`).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class LegalHold(models.Model):
    """While unreleased, nothing of the patient's data (or of the ward's) is deleted, hot or
    archived. Released holds are kept: the page shows who held what, why, and until when."""

    class Scope(models.TextChoices):
        PATIENT = "patient"
        WARD = "ward"

    scope = models.CharField(max_length=10, choices=Scope.choices)
    patient = models.ForeignKey("telemetry.Patient", null=True, blank=True, on_delete=models.PROTECT)
    ward = models.ForeignKey("telemetry.Ward", null=True, blank=True, on_delete=models.PROTECT)
    reason = models.CharField(max_length=300)
    set_at = models.DateTimeField()
    set_by = models.CharField(max_length=150)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.CharField(max_length=150, blank=True, default="")
    release_reason = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(scope="patient", patient__isnull=False, ward__isnull=True))
                | Q(scope="ward", ward__isnull=False, patient__isnull=True),
                name="legal_hold_one_target",
            ),
            models.UniqueConstraint(
                fields=["patient"], condition=Q(released_at__isnull=True), name="one_open_hold_per_patient"
            ),
            models.UniqueConstraint(
                fields=["ward"], condition=Q(released_at__isnull=True), name="one_open_hold_per_ward"
            ),
        ]
        ordering = ["-set_at"]


class RetentionDay(models.Model):
    """What the last retention run found for one ward-day (the retention page shows these)."""

    day = models.DateField()
    ward = models.CharField(max_length=40)
    archived = models.BooleanField(default=False)
    verified = models.BooleanField(default=False)
    held = models.BooleanField(default=False)
    hot_readings = models.BigIntegerField(default=0)
    readings_dropped = models.BigIntegerField(default=0)
    batches_dropped = models.BigIntegerField(default=0)
    dropped_at = models.DateTimeField(null=True, blank=True)
    problems = models.TextField(blank=True, default="")
    checked_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "ward"], name="retention_day_once")]
        ordering = ["-day", "ward"]


class ResearchExport(models.Model):
    """A de-identified cohort export (telemetry/lifecycle/research.py). The re-keying secret is
    never stored; the per-patient date offsets are kept encrypted in ResearchSubject."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="research_exports")
    ward = models.ForeignKey("telemetry.Ward", on_delete=models.PROTECT, related_name="research_exports")
    start = models.DateTimeField()
    end = models.DateTimeField()
    purpose = models.CharField(max_length=300)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    patients = models.PositiveIntegerField()
    rows = models.PositiveIntegerField()
    parameters = models.JSONField(default=dict)  # k, clip bounds per metric, date-shift range

    class Meta:
        indexes = [models.Index(fields=["expires_at"])]
        ordering = ["-created_at"]


class ResearchFile(models.Model):
    export = models.ForeignKey(ResearchExport, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=60)
    content_type = models.CharField(max_length=60)
    content = models.BinaryField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["export", "name"], name="research_file_once")]


class ResearchSubject(models.Model):
    """The date offset of one patient in one export, AES-GCM encrypted under a key derived from
    SECRET_KEY: kept so that compliance can answer for the export, never written to its files."""

    export = models.ForeignKey(ResearchExport, on_delete=models.CASCADE, related_name="subjects")
    patient = models.ForeignKey("telemetry.Patient", on_delete=models.PROTECT, related_name="+")
    offset_sealed = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["export", "patient"], name="research_subject_once")]
