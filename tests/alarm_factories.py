"""Helpers for alarm tests: staff personas with a confirmed TOTP device, verified sessions, and
readings written straight into telemetry_reading (what the engine would have been handed)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from telemetry.engine import ReadingRow
from telemetry.models import Device, DeviceState, Patient, Ward
from tests import personas
from tests.live_support import HANDSHAKE

_seq = itertools.count(1)


Row = ReadingRow  # the engine's own row type, so tests feed the processor exactly what it gets


def staff(username: str, role: str, wards: list[Ward] | None = None) -> User:
    """A persona of the access app (role group with its permissions, confirmed TOTP device)."""
    return personas.staff(username, role, [w.code for w in wards or []])


def verified(user: User) -> User:
    """What django-otp's middleware does for a session that passed TOTP."""
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    user.otp_device = device  # type: ignore[attr-defined]
    user.is_verified = lambda: True  # type: ignore[attr-defined]
    return user


def verified_client(user: User) -> Client:
    return personas.verified_client(user)


def insert(
    patient: Patient,
    device: Device,
    samples: list[tuple[dt.datetime, float, float | None]],
    *,
    metric: str = "tissue_o2",
) -> list[Row]:
    """Store readings as ingest would (and advance DeviceState); return the engine's rows."""
    rows = [Row(device.pk, patient.pk, metric, next(_seq), t, v, q, "cal-1", "fw-2.4.1") for t, v, q in samples]
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, "
            "raw_unit, signal_quality, calibration_id, firmware, ingest_time, ingest_txid) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, '%%', %s, %s, %s, now(), 1)",
            [
                (
                    r.device_id,
                    r.patient_id,
                    r.metric,
                    r.seq,
                    r.sample_time,
                    r.value,
                    r.value,
                    r.signal_quality,
                    r.calibration_id,
                    r.firmware,
                )
                for r in rows
            ],
        )
    if rows:
        last = max(r.sample_time for r in rows)
        state, _ = DeviceState.objects.get_or_create(device=device)
        if state.last_sample_time is None or last > state.last_sample_time:
            state.last_sample_time = last
            state.save(update_fields=["last_sample_time"])
    return rows


def seconds(t0: dt.datetime, values: list[float], *, start: float = 0, quality: float = 0.95) -> list[Any]:
    return [(t0 + dt.timedelta(seconds=start + i), v, quality) for i, v in enumerate(values)]


def ws_headers(user: User | None, *, otp: bool = True) -> list[tuple[bytes, bytes]]:
    """Handshake headers of a browser whose session is logged in (and OTP-verified when otp)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    headers = list(HANDSHAKE)
    if user is None:
        return headers
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    if otp:
        session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user, confirmed=True).persistent_id
    session.save()
    return [*headers, (b"cookie", f"sessionid={session.session_key}".encode())]
