"""Writes to the device registry and subjects. Each is one transaction with its audit event.

Patient flow (admission, transfer, discharge, device association) lives in telemetry/stays.py;
`patient_admit` and `RegistryError` are importable from here too, as they were before it."""

from __future__ import annotations

import datetime as dt
import functools
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.db import connection, transaction

from audit.trail import SYSTEM, Actor, audit_record
from telemetry.errors import RegistryError
from telemetry.ingest.ed25519 import small_order
from telemetry.models import (
    Device,
    DeviceKey,
    Gateway,
    GatewayKey,
    IssuedCertificate,
    Patient,
    Ward,
)
from telemetry.mqtt_broker import BrokerError, broker_revoked
from telemetry.pki import PkiError, authority_load, certificate_issue, certificate_revoke
from telemetry.selectors import BUCKET_SECONDS, EPOCH, bucket_floor, engine_positions, rolled_up_sql
from telemetry.stays import patient_admit
from telemetry.storage import timescale_in_use

__all__ = [
    "Provisioned",
    "RegistryError",
    "WardSaved",
    "device_key_revoke",
    "device_provision",
    "patient_admit",
    "public_key_from_pem",
    "readings_assign",
    "ward_save",
]

# Gateway ids become certificate CNs and MQTT topic levels: no '/', '+', '#' or spaces.
_GATEWAY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Ward codes and sites are slugs: they appear in URLs, channel-group names and archive paths.
_SLUG = re.compile(r"[A-Za-z0-9_-]{1,40}")
_WARD_NAME_MAX = Ward._meta.get_field("name").max_length or 120


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


@dataclass(frozen=True)
class WardSaved:
    ward: Ward
    created: bool
    changed: tuple[str, ...]


@transaction.atomic
def ward_save(*, code: str, name: str, site: str | None = None, actor: Actor = SYSTEM) -> WardSaved:
    """Create a ward, or rename it (and move it to `site` when one is given; an existing ward keeps
    its site otherwise, a new one gets `main`). Audited only when something changed, so running the
    same command twice is harmless."""
    if not _SLUG.fullmatch(code):
        raise RegistryError("a ward code is 1-40 letters, digits, '_' or '-'", code="invalid_ward")
    name = name.strip()
    if not name or len(name) > _WARD_NAME_MAX:
        raise RegistryError(f"a ward name is 1-{_WARD_NAME_MAX} characters", code="invalid_ward")
    if site is not None and not _SLUG.fullmatch(site):
        raise RegistryError("a site is 1-40 letters, digits, '_' or '-'", code="invalid_ward")
    ward = Ward.objects.select_for_update().filter(code=code).first()
    created = ward is None
    if ward is None:
        ward = Ward.objects.create(code=code, name=name, site=site or "main")
        changed: tuple[str, ...] = ("name", "site")
    else:
        wanted = {"name": name, "site": ward.site if site is None else site}
        before = {field: getattr(ward, field) for field in wanted}
        changed = tuple(field for field, value in wanted.items() if before[field] != value)
        for field in changed:
            setattr(ward, field, wanted[field])
        if changed:
            ward.save(update_fields=list(changed))
    if changed:
        audit_record(
            actor=actor,
            action="ward.created" if created else "ward.updated",
            subject=ward.code,
            detail={"name": ward.name, "site": ward.site, "changed": list(changed)},
        )
    return WardSaved(ward=ward, created=created, changed=changed)


def public_key_from_pem(pem: bytes) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise RegistryError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise RegistryError("the public key must be Ed25519")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if small_order(raw):
        # No private key belongs to it, and one fixed "signature" verifies for every message.
        raise RegistryError("the public key is a small-order point: not a key a device can hold", code="weak_key")
    return raw


def _new_key_id(prefix: str = "k_") -> str:
    return prefix + secrets.token_urlsafe(12)


def _key_pair(public_key_pem: bytes | None) -> tuple[bytes, str | None]:
    """The raw Ed25519 public key to register, and the private key's PEM when one was generated."""
    if public_key_pem is not None:
        return public_key_from_pem(public_key_pem), None
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw), private_pem


@transaction.atomic
def device_provision(
    *, device_id: str, ward_code: str, public_key_pem: bytes | None = None, actor: Actor = SYSTEM
) -> Provisioned:
    """Register a device (or add a key to an existing one). Generates a key pair when none given."""
    ward = Ward.objects.filter(code=ward_code).first()
    if ward is None:
        raise RegistryError(f"unknown ward {ward_code!r}", code="unknown_ward")
    device, _ = Device.objects.get_or_create(device_id=device_id, defaults={"ward": ward})
    if device.ward_id != ward.id:
        device.ward = ward
        device.save(update_fields=["ward"])
    raw, private_pem = _key_pair(public_key_pem)
    key = DeviceKey.objects.create(key_id=_new_key_id(), device=device, public_key=raw)
    certificate_pem, ca_pem = _certificate_for(device.device_id, raw, key=key)
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


def _certificate_for(cn: str, raw_public_key: bytes, *, key: DeviceKey | None = None) -> tuple[str | None, str | None]:
    """A client certificate for the key (CN = device or gateway id) and the CA, or (None, None)
    with no CA. `key`: the device key it certifies, revoked with it."""
    authority = authority_load()
    if authority is None:
        return None, None
    public_key = Ed25519PublicKey.from_public_bytes(raw_public_key)
    try:
        pem = certificate_issue(cn=cn, public_key=public_key, key=key)
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
        raise RegistryError(f"unknown key {key_id!r}", code="unknown_key")
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


@dataclass(frozen=True)
class GatewayProvisioned:
    gateway: Gateway
    key: GatewayKey
    private_key_pem: str | None
    certificate_pem: str | None = None  # with the deployment CA (contract section 2)
    ca_pem: str | None = None


@transaction.atomic
def gateway_provision(
    *,
    gateway_id: str,
    ward_code: str,
    scope: str = Gateway.Scope.WARD,
    public_key_pem: bytes | None = None,
    actor: Actor = SYSTEM,
) -> GatewayProvisioned:
    """Register a gateway (or add a key to an existing one, moving it to `ward_code` and `scope`)."""
    ward = Ward.objects.filter(code=ward_code).first()
    if ward is None:
        raise RegistryError(f"unknown ward {ward_code!r}")
    if scope not in Gateway.Scope.values:
        raise RegistryError(f"scope must be one of {Gateway.Scope.values}")
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise RegistryError("a gateway id is 1-64 letters, digits, '.', '_' or '-'")
    # One name space at the broker: the certificate's CN is the MQTT username of a device or gateway.
    if Device.objects.filter(device_id=gateway_id).exists():
        raise RegistryError(f"{gateway_id!r} is a device id")
    gateway, _ = Gateway.objects.update_or_create(gateway_id=gateway_id, defaults={"ward": ward, "scope": scope})
    raw, private_pem = _key_pair(public_key_pem)
    certificate_pem, ca_pem = _certificate_for(gateway_id, raw)
    serial = (
        "" if certificate_pem is None else f"{x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number:x}"
    )
    key = GatewayKey.objects.create(
        key_id=_new_key_id("g_"), gateway=gateway, public_key=raw, certificate_serial=serial
    )
    audit_record(
        actor=actor,
        action="gateway.key_added",
        subject=gateway.gateway_id,
        detail={
            "key_id": key.key_id,
            "ward": ward.code,
            "scope": scope,
            "generated": private_pem is not None,
            "certificate": certificate_pem is not None,
        },
    )
    return GatewayProvisioned(
        gateway=gateway, key=key, private_key_pem=private_pem, certificate_pem=certificate_pem, ca_pem=ca_pem
    )


@transaction.atomic
def gateway_key_revoke(*, key_id: str, actor: Actor = SYSTEM) -> GatewayKey:
    """Revoke a gateway key and its client certificate at once: its next outer request gets 401,
    and after commit the broker is told as for a device key (its other keys' certificates stay)."""
    key = GatewayKey.objects.select_for_update().select_related("gateway").filter(key_id=key_id).first()
    if key is None:
        raise RegistryError(f"unknown gateway key {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = dt.datetime.now(dt.UTC)
        key.save(update_fields=["revoked_at"])
    certificates = IssuedCertificate.objects.filter(serial=key.certificate_serial, revoked_at__isnull=True)
    revoked = certificates.update(revoked_at=key.revoked_at) if key.certificate_serial else 0
    audit_record(
        actor=actor,
        action="gateway.key_revoked",
        subject=key.gateway.gateway_id,
        detail={"key_id": key.key_id, "certificates": [key.certificate_serial] if revoked else []},
    )
    if key.certificate_serial:  # rebuilds the CRL and drops the open connection, as for a device
        transaction.on_commit(functools.partial(_broker_told, key.gateway.gateway_id))
    return key


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
        raise RegistryError(f"unknown device {device_id!r}", code="unknown_device")
    patient = Patient.objects.filter(pseudonym=pseudonym).first()
    if patient is None:
        raise RegistryError(f"unknown patient {pseudonym!r}", code="unknown_patient")
    with connection.cursor() as cursor:
        watermark = engine_watermark_lock(cursor)
        cursor.execute(
            "UPDATE telemetry_reading SET patient_id = %s::bigint WHERE device_id = %s::bigint "
            "AND patient_id IS NULL AND sample_time >= %s AND sample_time < %s RETURNING sample_time",
            [patient.id, device.id, start, end],
        )
        times = [r[0] for r in cursor.fetchall()]
        if times and not timescale_in_use():
            for resolution, seconds in BUCKET_SECONDS.items():
                buckets = sorted({bucket_floor(t, resolution) for t in times})
                rollups_rebuild(cursor, resolution, seconds, device.id, patient.id, buckets, watermark)
    audit_record(
        actor=actor,
        action="readings.assigned",
        subject=patient.pseudonym,
        detail={"device": device.device_id, "start": start.isoformat(), "end": end.isoformat(), "readings": len(times)},
    )
    return len(times)


def engine_watermark_lock(cursor: Any) -> list[int]:
    """Lock the engine's cursor rows for this transaction (no engine batch interleaves with a
    rewrite of stored readings) and return the watermark of each partition: a reading below its
    partition's watermark is already rolled up (selectors.rolled_up_sql)."""
    return engine_positions(cursor, for_update=True)


def rollups_rebuild(
    cursor: Any,
    resolution: str,
    seconds: int,
    device_pk: int,
    patient_pk: int | None,
    buckets: list[dt.datetime],
    watermark: list[int],
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
          AND {rolled_up_sql()} AND sample_time >= %s AND sample_time < %s
          AND date_bin(%s, sample_time, %s) = ANY(%s)
        GROUP BY 1, 2, 3, 4
        """,
        [width, EPOCH, device_pk, patient_pk, watermark, buckets[0], buckets[-1] + width, width, EPOCH, buckets],
    )
