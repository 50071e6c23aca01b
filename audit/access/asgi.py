"""WebSocket side of staff sessions: OTP verification and inactivity expiry for Channels.

django-otp's middleware and audit.access.middleware.SessionIdleMiddleware run for HTTP only. This
middleware (inside AuthMiddlewareStack) gives the scope's user the same `otp_device` /
`is_verified()` that HTTP views see, and treats an idle-expired session as anonymous, so
consumers need only call audit.access.policy.patient_access / user_is_verified as views do.
"""

from __future__ import annotations

import functools
from typing import Any

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.middleware import is_verified
from django_otp.models import Device

from audit.access.middleware import session_idle_expired


def _guard_user(scope: dict[str, Any]) -> User | AnonymousUser:
    scoped = scope.get("user")
    user: User | AnonymousUser | None = getattr(scoped, "_wrapped", scoped)  # channels' lazy user, resolved by now
    if user is None or not user.is_authenticated:
        return user or AnonymousUser()
    session = scope.get("session")
    if session is None or session_idle_expired(session):
        return AnonymousUser()
    # django-otp's attributes, which its middleware gives a request's user: not in User's type.
    user.otp_device = _session_device(user, session)  # type: ignore[attr-defined]
    user.is_verified = functools.partial(is_verified, user)  # type: ignore[attr-defined]
    return user


def _session_device(user: User, session: SessionBase | dict[str, Any]) -> Device | None:
    """The confirmed OTP device of `user` the session was verified with, if any."""
    persistent_id = session.get(DEVICE_ID_SESSION_KEY)
    if not persistent_id:
        return None
    device = Device.from_persistent_id(persistent_id)
    if device is None or device.user_id != user.pk or not device.confirmed:
        return None
    return device


def current_user(scope: dict[str, Any]) -> User | None:
    """The socket's user as the database has it now, with its session's OTP verification; None
    once the session is gone (logout, expiry) or the account is disabled. Sync (queries).

    `session.revoked` frames close sockets at once, but the channel layer may drop a message, so
    every live consumer's periodic re-check calls this instead of relying on them."""
    user = scope.get("user")
    session = scope.get("session")
    if user is None or not getattr(user, "is_authenticated", False) or session is None:
        return None
    data = SessionStore(session_key=session.session_key).load()
    if data.get(SESSION_KEY) != str(user.pk) or session_idle_expired(data):
        return None
    fresh = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
    if fresh is None:
        return None
    # django-otp's attributes, which its middleware gives a request's user: not in User's type.
    fresh.otp_device = _session_device(fresh, data)  # type: ignore[attr-defined]
    fresh.is_verified = functools.partial(is_verified, fresh)  # type: ignore[attr-defined]
    return fresh


class SessionGuardMiddleware(BaseMiddleware):  # type: ignore[misc]  # channels ships no type hints: its base is Any
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        user = await database_sync_to_async(_guard_user)(scope)
        return await super().__call__({**scope, "user": user}, receive, send)
