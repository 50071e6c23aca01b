"""WebSocket side of staff sessions: OTP verification and inactivity expiry for Channels.

django-otp's middleware and audit.middleware.SessionIdleMiddleware run for HTTP only. This
middleware (inside AuthMiddlewareStack) gives the scope's user the same `otp_device` /
`is_verified()` that HTTP views see, and treats an idle-expired session as anonymous, so
consumers need only call audit.access.patient_access / user_is_verified as views do.
"""

from __future__ import annotations

import functools
from typing import Any

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.middleware import is_verified
from django_otp.models import Device

from audit.middleware import session_idle_expired


def _guard_user(scope: dict[str, Any]) -> Any:
    user = scope.get("user")
    user = getattr(user, "_wrapped", user)  # channels' UserLazyObject is resolved by now
    if user is None or not getattr(user, "is_authenticated", False):
        return user or AnonymousUser()
    session = scope.get("session")
    if session is None or session_idle_expired(session):
        return AnonymousUser()
    device = None
    persistent_id = session.get(DEVICE_ID_SESSION_KEY)
    if persistent_id:
        device = Device.from_persistent_id(persistent_id)
        if device is not None and (device.user_id != user.pk or not device.confirmed):
            device = None
    user.otp_device = device
    user.is_verified = functools.partial(is_verified, user)
    return user


class SessionGuardMiddleware(BaseMiddleware):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        user = await database_sync_to_async(_guard_user)(scope)
        return await super().__call__({**scope, "user": user}, receive, send)
