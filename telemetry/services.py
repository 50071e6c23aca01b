"""Writes to the device registry and subjects. Each is one transaction with its audit event."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.db import transaction

from audit.services import SYSTEM, Actor, audit_record
from telemetry.models import Assignment, Device, DeviceKey, Patient, PatientIdentity, Ward


class RegistryError(Exception):
    """A registry operation that cannot be done as asked (unknown ward, bad key file…)."""


@dataclass(frozen=True)
class Provisioned:
    device: Device
    key: DeviceKey
    private_key_pem: str | None


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
    audit_record(
        actor=actor,
        action="device.key_added",
        subject=device.device_id,
        detail={"key_id": key.key_id, "ward": ward.code, "generated": private_pem is not None},
    )
    return Provisioned(device=device, key=key, private_key_pem=private_pem)


@transaction.atomic
def device_key_revoke(*, key_id: str, actor: Actor = SYSTEM) -> DeviceKey:
    key = DeviceKey.objects.select_for_update().select_related("device").filter(key_id=key_id).first()
    if key is None:
        raise RegistryError(f"unknown key {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = dt.datetime.now(dt.UTC)
        key.save(update_fields=["revoked_at"])
    audit_record(actor=actor, action="device.key_revoked", subject=key.device.device_id, detail={"key_id": key.key_id})
    return key


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
