"""Personas and data helpers for the dashboard's tests (pages, API, sockets, browser)."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent, StaffProfile
from telemetry.models import Device, Patient, Ward

_counter = itertools.count(1)
ORIGIN = (b"origin", b"http://localhost")


@dataclass
class Persona:
    user: User
    totp: TOTPDevice

    def session_key(self, *, verified: bool = True) -> str:
        """A saved session as the login view would leave it (password, then OTP when verified)."""
        session = SessionStore()
        session[SESSION_KEY] = str(self.user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = self.user.get_session_auth_hash()
        if verified:
            session[DEVICE_ID_SESSION_KEY] = self.totp.persistent_id
        session.save()
        assert session.session_key is not None
        return session.session_key

    def ws_headers(self, *, verified: bool = True) -> list[tuple[bytes, bytes]]:
        return [ORIGIN, (b"cookie", f"sessionid={self.session_key(verified=verified)}".encode())]


def persona(role: str, *wards: Ward, password: str = "correct horse battery staple") -> Persona:  # noqa: S107
    user = User.objects.create_user(f"{role}-{next(_counter)}", password=password)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    profile = StaffProfile.objects.create(user=user)
    profile.wards.set(wards)
    totp = TOTPDevice.objects.create(user=user, name="default", confirmed=True)
    return Persona(user, totp)


def login(client: Any, who: Persona, *, verified: bool = True) -> None:
    client.cookies["sessionid"] = who.session_key(verified=verified)


def patient(pseudonym: str, ward: Ward, device_id: str | None = None) -> tuple[Patient, Device]:
    from telemetry.services import device_provision, patient_admit

    device_id = device_id or f"dev-{pseudonym}"
    device_provision(device_id=device_id, ward_code=ward.code)
    patient_admit(
        pseudonym=pseudonym, ward_code=ward.code, device_id=device_id, at=dt.datetime.now(dt.UTC) - dt.timedelta(days=9)
    )
    return Patient.objects.get(pseudonym=pseudonym), Device.objects.get(device_id=device_id)


def insert_readings(
    patient: Patient,
    device: Device,
    points: list[tuple[dt.datetime, float]],
    *,
    quality: float = 0.95,
    first_seq: int = 1,
    metric: str = "tissue_o2",
) -> None:
    """Write readings straight into storage (the ingest path has its own tests)."""
    rows = [(device.id, patient.id, metric, first_seq + i, t, v, v, "%", quality) for i, (t, v) in enumerate(points)]
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, "
            "raw_unit, signal_quality) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def audit_events(action: str, **filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))
