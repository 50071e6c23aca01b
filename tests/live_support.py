"""Personas and data helpers for the dashboard's tests (pages, API, sockets, browser)."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client

from audit.models import AuditEvent
from config.live import publish_flush
from telemetry.models import Device, Patient, Ward
from tests import personas, readings

_counter = itertools.count(1)
# What a browser on the app's own page sends with a WebSocket handshake (config/origins.py).
HANDSHAKE = [(b"host", b"localhost"), (b"origin", b"http://localhost")]


@dataclass
class Persona:
    """A staff user (tests/personas.py) with helpers for sessions, clients and socket headers."""

    user: User

    def client(self, *, verified: bool = True) -> Client:
        return personas.verified_client(self.user, otp=verified)

    def session_key(self, *, verified: bool = True) -> str:
        """A session as the login view leaves it (password, then OTP when verified)."""
        return self.client(verified=verified).cookies[settings.SESSION_COOKIE_NAME].value

    def ws_headers(self, *, verified: bool = True) -> list[tuple[bytes, bytes]]:
        cookie = f"{settings.SESSION_COOKIE_NAME}={self.session_key(verified=verified)}"
        return [*HANDSHAKE, (b"cookie", cookie.encode())]


def persona(role: str, *wards: Ward) -> Persona:
    return Persona(personas.staff(f"{role}-{next(_counter)}", role, [w.code for w in wards]))


def login(client: Client, who: Persona, *, verified: bool = True) -> None:
    client.cookies[settings.SESSION_COOKIE_NAME] = who.session_key(verified=verified)


def patient(pseudonym: str, ward: Ward, device_id: str | None = None) -> tuple[Patient, Device]:
    from telemetry.services import device_provision, patient_admit

    device_id = device_id or f"dev-{pseudonym}"
    device_provision(device_id=device_id, ward_code=ward.code)
    patient_admit(
        pseudonym=pseudonym, ward_code=ward.code, device_id=device_id, at=dt.datetime.now(dt.UTC) - dt.timedelta(days=9)
    )
    # The admission's patient.flow frame leaves now, not into a socket a test opens next.
    publish_flush()
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
    """Store readings the way ingest does (rows plus the ingest-log row the series selector and the
    engine find them through), in one transaction of their own."""
    rows = [
        readings.Row(device.id, patient.id, metric, first_seq + i, t, v, quality) for i, (t, v) in enumerate(points)
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        readings.insert_readings(cursor, rows)


def audit_events(action: str, **filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))
