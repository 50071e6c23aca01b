"""Writes to the device registry and subjects. Each is one transaction with its audit event."""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.db import connection, transaction

from audit.trail import SYSTEM, Actor, audit_record
from telemetry.models import Assignment, Device, DeviceKey, Patient, PatientIdentity, Ward
from telemetry.mqtt_broker import BrokerError, broker_revoked
from telemetry.pki import PkiError, authority_load, certificate_issue, certificate_revoke
from telemetry.selectors import BUCKET_SECONDS, ENGINE_CURSOR, EPOCH, bucket_floor
from telemetry.storage import timescale_in_use


class RegistryError(Exception):
    """A registry operation that cannot be done as asked (unknown ward, bad key file…)."""


class BrokerNotTold(RegistryError):
    """A revocation committed, but the MQTT broker could not be told (it still refuses the key
    over HTTP; run revoke_device_key again once the broker is reachable)."""


@dataclass(frozen=True)
class Provisioned:
    device: Device
    key: DeviceKey
    private_key_pem: str | None
    # The key's client certificate and the CA's, when the deployment CA exists (contract 1b, 2).
    certificate_pem: str | None = None
    ca_pem: str | None = None


def public_key_from_pem(pem: bytes) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise RegistryError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise RegistryError("the public key must be Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _new_key_id() -> str:
    return "k_" + secrets.token_urlsafe(12)


@transaction.atomic
def device_provision(
    *, device_id: str, ward_code: str, public_key_pem: bytes | None = None, actor: Actor = SYSTEM
) -> Provisioned:
    """Register a device (or add a key to an existing one). Generates a key pair when none given."""
    ward = Ward.objects.filter(code=ward_code).first()
    if ward is None:
        raise RegistryError(f"unknown ward {ward_code!r}")
    device, _ = Device.objects.get_or_create(device_id=device_id, defaults={"ward": ward})
    if device.ward_id != ward.id:
        device.ward = ward
        device.save(update_fields=["ward"])
    private_pem = None
    if public_key_pem is None:
        private = Ed25519PrivateKey.generate()
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public_key_from_pem(public_key_pem)
    key = DeviceKey.objects.create(key_id=_new_key_id(), device=device, public_key=raw)
    certificate_pem, ca_pem = _certificate_for(key)
    audit_record(
        actor=actor,
        action="device.key_added",
        subject=device.device_id,
        detail={
            "key_id": key.key_id,
            "ward": ward.code,
            "generated": private_pem is not None,
            "certificate": certificate_pem is not None,
        },
    )
    return Provisioned(
        device=device, key=key, private_key_pem=private_pem, certificate_pem=certificate_pem, ca_pem=ca_pem
    )


def _certificate_for(key: DeviceKey) -> tuple[str | None, str | None]:
    """The key's client certificate (CN = device id) and the CA, or (None, None) with no CA."""
    authority = authority_load()
    if authority is None:
        return None, None
    public_key = Ed25519PublicKey.from_public_bytes(bytes(key.public_key))
    try:
        pem = certificate_issue(cn=key.device.device_id, public_key=public_key, key=key)
    except PkiError as exc:
        raise RegistryError(str(exc)) from exc
    return pem, authority.ca_pem


@transaction.atomic
def device_key_revoke(*, key_id: str, actor: Actor = SYSTEM) -> DeviceKey:
    """Revoke a key and its client certificates at once. After commit the broker is told (CRL
    rebuilt and reloaded, the device's open connection dropped: telemetry.mqtt_broker); a broker
    that cannot be told fails the call loudly, the revocation itself being committed."""
    key = DeviceKey.objects.select_for_update().select_related("device").filter(key_id=key_id).first()
    if key is None:
        raise RegistryError(f"unknown key {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = dt.datetime.now(dt.UTC)
        key.save(update_fields=["revoked_at"])
    serials = certificate_revoke(key=key, at=key.revoked_at)
    audit_record(
        actor=actor,
        action="device.key_revoked",
        subject=key.device.device_id,
        detail={"key_id": key.key_id, "certificates": serials},
    )
    # Told again on a repeated revocation too: that is how an operator retries a broker that was
    # down (BrokerNotTold) — the CRL is rebuilt and the drop repeated, both idempotent.
    if serials or key.certificates.exists():
        transaction.on_commit(functools.partial(_broker_told, key.device.device_id))
    return key


def _broker_told(device_id: str) -> None:
    try:
        broker_revoked([device_id])
    except BrokerError as exc:
        raise BrokerNotTold(f"revoked, but the broker was not told: {exc}") from exc


@transaction.atomic
def patient_admit(
    *,
    pseudonym: str,
    ward_code: str,
    device_id: str,
    mrn: str | None = None,
    name: str | None = None,
    actor: Actor = SYSTEM,
    at: dt.datetime | None = None,
) -> Patient:
    """Create or update a subject and assign the device to it from `at` (default now)."""
    now = at or dt.datetime.now(dt.UTC)
    ward = Ward.objects.filter(code=ward_code).first()
    if ward is None:
        raise RegistryError(f"unknown ward {ward_code!r}")
    device = Device.objects.select_for_update().filter(device_id=device_id).first()
    if device is None:
        raise RegistryError(f"unknown device {device_id!r}")
    patient, created = Patient.objects.get_or_create(pseudonym=pseudonym, defaults={"ward": ward, "admitted_at": now})
    if not created and (patient.ward_id != ward.id or patient.discharged_at is not None):
        patient.ward = ward
        patient.discharged_at = None
        patient.save(update_fields=["ward", "discharged_at"])
    if mrn is not None or name is not None:
        identity, _ = PatientIdentity.objects.get_or_create(patient=patient)
        identity.mrn = mrn if mrn is not None else identity.mrn
        identity.name = name if name is not None else identity.name
        identity.save()
    current = Assignment.objects.filter(device=device, end__isnull=True).first()
    if current is None or current.patient_id != patient.id:
        if current is not None:
            current.end = now
            current.save(update_fields=["end"])
        Assignment.objects.filter(patient=patient, end__isnull=True).exclude(device=device).update(end=now)
        Assignment.objects.create(device=device, patient=patient, start=now)
    audit_record(
        actor=actor,
        action="patient.admitted",
        subject=patient.pseudonym,
        detail={"ward": ward.code, "device": device.device_id, "identity_set": mrn is not None or name is not None},
    )
    return patient


@transaction.atomic
def readings_assign(
    *, device_id: str, pseudonym: str, start: dt.datetime, end: dt.datetime, actor: Actor = SYSTEM
) -> int:
    """Give a device's unassigned readings in [start, end) to a patient; returns how many moved.

    Nothing a device sends is thrown away: readings that arrived before an admission are kept
    unassigned until someone says whose they are. On plain PostgreSQL the 1m/1h rollups of the
    affected buckets are rebuilt from the readings the engine has already folded in (ingest txid
    below its watermark; later ones it folds in itself, already with the new patient). The
    engine's cursor row is locked first so its batch cannot interleave. TimescaleDB's continuous
    aggregates pick the change up from their invalidation log at the next refresh.
    """
    if start >= end:
        raise RegistryError("start must be before end")
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        raise RegistryError(f"unknown device {device_id!r}")
    patient = Patient.objects.filter(pseudonym=pseudonym).first()
    if patient is None:
        raise RegistryError(f"unknown patient {pseudonym!r}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT position FROM telemetry_enginecursor WHERE name = %s FOR UPDATE", [ENGINE_CURSOR])
        row = cursor.fetchone()
        watermark = row[0] if row else 0
        cursor.execute(
            "UPDATE telemetry_reading SET patient_id = %s::bigint WHERE device_id = %s::bigint "
            "AND patient_id IS NULL AND sample_time >= %s AND sample_time < %s RETURNING sample_time",
            [patient.id, device.id, start, end],
        )
        times = [r[0] for r in cursor.fetchall()]
        if times and not timescale_in_use():
            for resolution, seconds in BUCKET_SECONDS.items():
                buckets = sorted({bucket_floor(t, resolution) for t in times})
                _rollups_rebuild(cursor, resolution, seconds, device.id, patient.id, buckets, watermark)
    audit_record(
        actor=actor,
        action="readings.assigned",
        subject=patient.pseudonym,
        detail={"device": device.device_id, "start": start.isoformat(), "end": end.isoformat(), "readings": len(times)},
    )
    return len(times)


def _rollups_rebuild(
    cursor: Any,
    resolution: str,
    seconds: int,
    device_pk: int,
    patient_pk: int,
    buckets: list[dt.datetime],
    watermark: int,
) -> None:
    table = f"telemetry_rollup_{resolution}"
    width = dt.timedelta(seconds=seconds)
    cursor.execute(
        f"DELETE FROM {table} WHERE device_id = %s::bigint AND bucket = ANY(%s) "
        "AND (patient_id IS NULL OR patient_id = %s::bigint)",
        [device_pk, buckets, patient_pk],
    )
    cursor.execute(
        f"""
        INSERT INTO {table}
            (patient_id, device_id, metric, bucket, n, value_sum, value_min, value_max, quality_sum, quality_n)
        SELECT patient_id, device_id, metric, date_bin(%s, sample_time, %s), count(*), sum(value), min(value),
               max(value), coalesce(sum(signal_quality::float8), 0), count(signal_quality)
        FROM telemetry_reading
        WHERE device_id = %s::bigint AND (patient_id IS NULL OR patient_id = %s::bigint)
          AND ingest_txid < %s::bigint AND sample_time >= %s AND sample_time < %s
          AND date_bin(%s, sample_time, %s) = ANY(%s)
        GROUP BY 1, 2, 3, 4
        """,
        [width, EPOCH, device_pk, patient_pk, watermark, buckets[0], buckets[-1] + width, width, EPOCH, buckets],
    )
