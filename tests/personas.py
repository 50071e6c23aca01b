"""Staff personas for tests: users in a role with a confirmed TOTP device, and logged-in clients.

`verified_client(user)` gives a Django test client whose session passed password + OTP exactly as
the login view leaves it (session registered, activity time set), without spending a TOTP code.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.middleware import LAST_ACTIVITY_KEY
from audit.access.sessions import staff_session_register
from audit.access.staff import staff_upsert
from audit.trail import SYSTEM

PASSWORD = "correct-horse-battery-9"


def staff(username: str, role: str, wards: list[str] | None = None) -> User:
    return staff_upsert(username=username, role=role, ward_codes=wards or [], password=PASSWORD).user


def totp_code(user: User, *, offset_steps: int = 0) -> str:
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + offset_steps * device.step
    return f"{totp.token():06d}"


def verified_client(user: User, *, otp: bool = True, idle_for: float = 0.0, **client_kwargs: Any) -> Client:
    """A client logged in as `user`; otp=False leaves it password-only; idle_for backdates the
    last activity (an expired session when above PERFUSE_SESSION_IDLE_SECONDS)."""
    client = Client(**client_kwargs)
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    session = client.session
    if otp:
        session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user, confirmed=True).persistent_id
    session[LAST_ACTIVITY_KEY] = time.time() - idle_for
    session.save()
    assert session[SESSION_KEY] == str(user.pk)
    staff_session_register(user_id=user.pk, session_key=session.session_key or "", actor=SYSTEM)
    return client


def idle_beyond_limit() -> float:
    return settings.PERFUSE_SESSION_IDLE_SECONDS + 60
