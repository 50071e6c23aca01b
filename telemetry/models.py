"""Device registry, subjects (pseudonymous patients) and the readings they produce.

Readings live in `telemetry_reading`, created by hand-written SQL migrations (a TimescaleDB
hypertable when the extension exists, daily range partitions otherwise); `Reading` is an
unmanaged model over it for admin-style reads. Hot paths use SQL through selectors.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Ward(models.Model):
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=120)
    site = models.SlugField(max_length=40, default="main", help_text="Rate-limit and deployment site")

    def __str__(self) -> str:
        return self.code


class Device(models.Model):
    device_id = models.CharField(max_length=64, unique=True)
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="devices")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.device_id


class DeviceKey(models.Model):
    """An Ed25519 public key of a device. Several may be active at once (rotation)."""

    key_id = models.CharField(max_length=64, unique=True)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="keys")
    public_key = models.BinaryField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.key_id


class IssuedCertificate(models.Model):
    """An X.509 client certificate the deployment CA issued (telemetry/pki.py). The CRL is rebuilt
    from the revoked rows, so a revocation outlives the broker and the file it reads."""

    serial = models.CharField(max_length=40, primary_key=True, help_text="hexadecimal")
    cn = models.CharField(max_length=64, db_index=True)
    key = models.ForeignKey(DeviceKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="certificates")
    issued_at = models.DateTimeField(auto_now_add=True)
    not_after = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.cn} {self.serial}"


class FirmwareRecord(models.Model):
    """Each firmware version a device reported, with when it was first seen."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="firmware_history")
    version = models.CharField(max_length=64)
    first_seen_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "version", "first_seen_at"], name="firmware_once")]
        ordering = ["first_seen_at"]


class Calibration(models.Model):
    """Calibration of a device: calibrated = gain * value + offset for tissue_o2 from `effective_from`."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="calibrations")
    calibration_id = models.CharField(max_length=64)
    coefficients = models.JSONField(default=dict)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "calibration_id"], name="calibration_id_per_device")]
        ordering = ["effective_from"]


class DeviceState(models.Model):
    """What the ingest path last saw from a device: provenance changes become annotations."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True, related_name="state")
    firmware = models.CharField(max_length=64, blank=True, default="")
    calibration_id = models.CharField(max_length=64, blank=True, default="")
    last_seen_at = models.DateTimeField(null=True)
    last_sample_time = models.DateTimeField(null=True)


class Patient(models.Model):
    """A monitored subject, known everywhere by pseudonym only (identity lives in PatientIdentity)."""

    pseudonym = models.SlugField(max_length=40, unique=True)
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="patients")
    admitted_at = models.DateTimeField()
    discharged_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.pseudonym


class PatientIdentity(models.Model):
    """Pseudonym → identity. Read only through audit.access.identity.identity_reveal (purpose + audit)."""

    patient = models.OneToOneField(Patient, on_delete=models.CASCADE, primary_key=True, related_name="identity")
    mrn = models.CharField(max_length=40, blank=True, default="")
    name = models.CharField(max_length=200, blank=True, default="")
    date_of_birth = models.DateField(null=True, blank=True)


class Assignment(models.Model):
    """Device d measured patient p during [start, end)."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="assignments")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="assignments")
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device"], condition=Q(end__isnull=True), name="one_open_assignment_per_device"
            ),
        ]
        indexes = [models.Index(fields=["device", "start"])]


class Annotation(models.Model):
    class Kind(models.TextChoices):
        CALIBRATION = "calibration"
        FIRMWARE = "firmware"
        ALARM = "alarm"
        ACKNOWLEDGEMENT = "acknowledgement"
        NOTE = "note"

    patient = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.CASCADE, related_name="annotations")
    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.CASCADE, related_name="annotations")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    time = models.DateTimeField()
    text = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["patient", "time"])]
        ordering = ["time"]


class EngineCursor(models.Model):
    """Watermark of a stream-processing step, as a transaction-id horizon (see telemetry/engine.py)."""

    name = models.CharField(max_length=40, primary_key=True)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)


class Reading(models.Model):
    """Read-only view of telemetry_reading (created by migration 0002)."""

    pk = models.CompositePrimaryKey("device_id", "metric", "seq", "sample_time")
    device = models.ForeignKey(Device, on_delete=models.DO_NOTHING, db_constraint=False)
    patient = models.ForeignKey(Patient, null=True, on_delete=models.DO_NOTHING, db_constraint=False)
    metric = models.TextField()
    seq = models.BigIntegerField()
    sample_time = models.DateTimeField()
    value = models.FloatField()
    raw_value = models.FloatField()
    raw_unit = models.TextField()
    signal_quality = models.FloatField(null=True)
    calibration_id = models.TextField(null=True)  # noqa: DJ001 (mirrors the SQL table)
    firmware = models.TextField(null=True)  # noqa: DJ001
    ingest_time = models.DateTimeField()
    ingest_txid = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "telemetry_reading"
