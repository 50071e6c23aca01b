"""Bulk FHIR exports (dashboard/fhir/exports.py): the durable job and its NDJSON output.

The output lives in PostgreSQL, not on one server's disk: every Daphne process can serve a
download, the engine that writes it may run elsewhere, and a chunk is written in the same
transaction that moves the job's cursor, so a crash never leaves half a chunk or a chunk twice.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from telemetry.models import Ward


class FhirExport(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"  # waiting for the engine, or part-way through (see `cursor`)
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fhir_exports")
    # Who asked, as audit.trail.Actor fields: the job audits its disclosures in their name.
    actor = models.JSONField(default=dict)
    ward = models.ForeignKey(Ward, on_delete=models.CASCADE, related_name="fhir_exports")
    types = models.JSONField(default=list)  # FHIR resource types, in output order
    since = models.DateTimeField(null=True, blank=True)
    request_url = models.CharField(max_length=2000)
    # Fixed at the request (the patients whose export was authorized and audited then).
    patients = models.JSONField(default=list)  # [[patient pk, pseudonym], ...]
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    cursor = models.JSONField(default=dict)  # {"step": n, "after": [sample time, device pk, seq] | None}
    steps = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")
    transaction_time = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "transaction_time"]), models.Index(fields=["expires_at"])]


class FhirExportChunk(models.Model):
    """Up to PERFUSE_FHIR_EXPORT_CHUNK_ROWS lines of one output file; a file is its chunks in order."""

    export = models.ForeignKey(FhirExport, on_delete=models.CASCADE, related_name="chunks")
    resource_type = models.CharField(max_length=40)
    seq = models.PositiveIntegerField()
    lines = models.PositiveIntegerField()
    body = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["export", "resource_type", "seq"], name="fhir_export_chunk_once")
        ]
