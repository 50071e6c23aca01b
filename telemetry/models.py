"""Device registry, subjects (pseudonymous patients) and the readings they produce.

Readings live in `telemetry_reading`, created by hand-written SQL migrations (a TimescaleDB
hypertable when the extension exists, daily range partitions otherwise); `Reading` is an
unmanaged model over it for admin-style reads. Hot paths use SQL through selectors.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

# Django registers an app's models when its `models` module is imported: the HL7 message store
# lives beside the HL7 code (telemetry/hl7/models.py) and is loaded from here.
from telemetry.hl7.models import Hl7Message  # noqa: F401
from telemetry.lifecycle.models import LegalHold, ResearchExport, ResearchFile, ResearchSubject, RetentionDay  # noqa: F401


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


class Gateway(models.Model):
    """An edge gateway (a ward hub, a patient's phone) forwarding batches its devices signed.

    It may carry only devices of its own ward, or with scope `site` of every ward on its ward's
    site (contract section 1c); it cannot forge readings, since each inner batch keeps its
    device's own signature. Its id is its certificate's CN, the broker's username."""

    class Scope(models.TextChoices):
        WARD = "ward"
        SITE = "site"

    gateway_id = models.CharField(max_length=64, unique=True)
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="gateways")
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.WARD)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.gateway_id


class GatewayKey(models.Model):
    """An Ed25519 public key signing a gateway's outer requests. Several may be active (rotation)."""

    key_id = models.CharField(max_length=64, unique=True)
    gateway = models.ForeignKey(Gateway, on_delete=models.CASCADE, related_name="keys")
    public_key = models.BinaryField(max_length=32)
    # The key's client certificate (IssuedCertificate.serial), revoked with the key; "" without a CA.
    certificate_serial = models.CharField(max_length=40, blank=True, default="")
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
    """Calibration of a device: calibrated = gain * value + offset for tissue_o2 from `effective_from`.

    `source` is "device" for a calibration id first seen in a batch (its coefficients are unknown
    until staff enter them) and "staff" for one a device administrator created. A correction keeps
    the coefficients it replaced as a CalibrationRevision (telemetry/calibrations.py)."""

    class Source(models.TextChoices):
        DEVICE = "device"
        STAFF = "staff"

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="calibrations")
    calibration_id = models.CharField(max_length=64)
    coefficients = models.JSONField(default=dict)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Database defaults too: the ingest path records first sightings with plain SQL.
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.DEVICE, db_default=Source.DEVICE)
    reason = models.CharField(max_length=300, blank=True, default="", db_default="")
    created_by = models.CharField(max_length=150, blank=True, default="", db_default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "calibration_id"], name="calibration_id_per_device")]
        ordering = ["effective_from"]


class CalibrationRevision(models.Model):
    """What a calibration said before a correction replaced it: nothing is silently overwritten."""

    calibration = models.ForeignKey(Calibration, on_delete=models.PROTECT, related_name="revisions")
    coefficients = models.JSONField()
    effective_from = models.DateTimeField()
    replaced_at = models.DateTimeField()
    replaced_by = models.CharField(max_length=150)
    reason = models.CharField(max_length=300)


class Reprocessing(models.Model):
    """One recomputation of a device's canonical values over a span, from the kept raw values."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="reprocessings")
    start = models.DateTimeField()
    end = models.DateTimeField()
    reason = models.CharField(max_length=300)
    actor_username = models.CharField(max_length=150)
    at = models.DateTimeField()
    examined = models.PositiveIntegerField(default=0)
    changed = models.PositiveIntegerField(default=0)


class ReadingRevision(models.Model):
    """A canonical value that reprocessing replaced, kept beside the reading's key for audit."""

    reprocessing = models.ForeignKey(Reprocessing, on_delete=models.PROTECT, related_name="revisions")
    device_id = models.BigIntegerField()
    metric = models.TextField()
    seq = models.BigIntegerField()
    sample_time = models.DateTimeField()
    old_value = models.FloatField()
    new_value = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["device_id", "sample_time"])]


class DeviceState(models.Model):
    """What the ingest path last saw from a device: provenance changes become annotations."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True, related_name="state")
    firmware = models.CharField(max_length=64, blank=True, default="")
    calibration_id = models.CharField(max_length=64, blank=True, default="")
    last_seen_at = models.DateTimeField(null=True)
    last_sample_time = models.DateTimeField(null=True)


class Patient(models.Model):
    """A monitored subject, known everywhere by pseudonym only (identity lives in PatientIdentity).

    `ward`, `bed`, `admitted_at` and `discharged_at` describe the current (or last) stay; the
    stays themselves, with their times, are PatientStay rows (telemetry/stays.py keeps both).
    """

    pseudonym = models.SlugField(max_length=40, unique=True)
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="patients")
    bed = models.CharField(max_length=40, blank=True, default="")
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


class PatientStay(models.Model):
    """Patient p lay on ward w (in `bed`) during [start, end): one row per admission or transfer.

    The access layer reads these so that staff of a ward a patient left still see the data of
    the time the patient was theirs (audit/access/policy.py, docs/patient-flow.md).
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="stays")
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="stays")
    bed = models.CharField(max_length=40, blank=True, default="")
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient"], condition=Q(end__isnull=True), name="one_open_stay_per_patient"
            ),
        ]
        indexes = [models.Index(fields=["patient", "start"]), models.Index(fields=["ward", "start"])]
        ordering = ["start"]


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
        REPROCESSING = "reprocessing"

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


class OruPartial(models.Model):
    """Running sums of one patient's validated readings of a metric from one device in one
    results interval (telemetry/hl7/outbox.py): the engine adds each new reading once, and the
    interval's ORU message is built from them. `sent_n` is how many readings the last message for
    the interval carried, so a reading that arrives late is sent as a correction."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="+")
    interval_start = models.DateTimeField()
    metric = models.CharField(max_length=20)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    n = models.BigIntegerField()
    value_sum = models.FloatField()
    last_sample_time = models.DateTimeField()
    sent_n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["patient", "interval_start", "metric", "device"], name="oru_partial_key")
        ]
        indexes = [models.Index(fields=["interval_start"], name="oru_partial_unsent", condition=Q(n__gt=F("sent_n")))]


class OruMessage(models.Model):
    """The ORU^R01 outbox: one HL7 message per patient and interval, in the order the engine
    wrote them (telemetry/hl7/outbox.py). The engine stores what to say (`payload`); the sender
    builds the HL7 text once, before the first attempt, and every attempt sends that same text
    under the same MSH-10 (`control_id`). The text carries the MRN (PID-3) so the EHR can file it:
    like PatientIdentity it is read by nothing but the sender (docs/hl7-results.md, "Identity")."""

    class State(models.TextChoices):
        QUEUED = "queued"
        SENDING = "sending"
        RETRY = "retry"
        DONE = "done"
        DEAD = "dead"  # refused by the EHR (AR): the dead-letter list
        REQUEUED = "requeued"  # a dead letter sent again as a new message

    control_id = models.CharField(max_length=20, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    interval_start = models.DateTimeField()
    interval_end = models.DateTimeField()
    correction = models.BooleanField(default=False)
    payload = models.JSONField()
    message = models.TextField(blank=True, default="")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    lease_until = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    ack_code = models.CharField(max_length=2, blank=True, default="")
    last_error = models.CharField(max_length=500, blank=True, default="")
    # When the alerts engine raised the technical alarm for this dead letter (alerts/integration.py).
    alarmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["patient", "id"], name="oru_patient_order"),
            models.Index(
                fields=["next_attempt_at"],
                name="oru_pending",
                condition=Q(state__in=["queued", "sending", "retry"]),
            ),
            models.Index(fields=["id"], name="oru_dead_unalarmed", condition=Q(state="dead", alarmed_at__isnull=True)),
            # The dead-letter count of /metrics (config/ops.py): the outbox keeps every message.
            models.Index(fields=["id"], name="oru_dead", condition=Q(state="dead")),
        ]
