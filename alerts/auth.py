"""Who is asking, for the alarm pages, API and console socket.

Local stand-in for audit.access.actor_from_request / actor_from_scope (access helper); replaced
by those when they reach main. django-otp's middleware does not run for WebSockets, so
`scope_user_verify` checks the session's verified device the way the middleware would.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device as OTPDevice

from audit.access import user_role
from audit.services import Actor


def _actor(user: Any, address: str, agent: str) -> Actor:
    authenticated = bool(getattr(user, "is_authenticated", False))
    return Actor(
        user_id=user.pk if authenticated else None,
        username=user.get_username() if authenticated else "",
        role=user_role(user),
        source_address=address[:64],
        user_agent=agent[:300],
    )


def actor_from_request(request: HttpRequest) -> Actor:
    return _actor(
        getattr(request, "user", None), request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_USER_AGENT", "")
    )


def actor_from_scope(scope: dict[str, Any]) -> Actor:
    agent = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"user-agent"), "")
    client = scope.get("client") or ("", 0)
    return _actor(scope.get("user"), str(client[0] or ""), agent)


def scope_user_verify(scope: dict[str, Any]) -> Any:
    """Resolve the socket's user and mark it OTP-verified or not. Sync: database access."""
    user = scope.get("user")
    if user is None:
        return None
    if hasattr(user, "_wrapped") and hasattr(user, "_setup"):
        user.is_authenticated  # noqa: B018 (forces channels' lazy user in a sync context)
        user = user._wrapped
    user.otp_device = None
    user.is_verified = lambda: user.otp_device is not None
    if user.is_authenticated:
        session = scope.get("session")
        persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
        device = OTPDevice.from_persistent_id(persistent_id) if persistent_id else None
        if device is not None and device.user_id == user.pk and getattr(device, "confirmed", False):
            user.otp_device = device
    scope["user"] = user
    return user
