"""Who is asking, for the dashboard's pages, API and sockets.

django-otp's middleware only runs for HTTP. For a WebSocket the session's verified-device id is
read here and checked the way the middleware would (device exists, belongs to the user, is
confirmed), so `audit.access.user_is_verified` gives the same answer on both transports.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device as OTPDevice

from audit.access import user_role
from audit.services import Actor


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def actor_from_request(request: HttpRequest) -> Actor:
    user = request.user
    return Actor(
        user_id=user.pk if user.is_authenticated else None,
        username=user.get_username() if user.is_authenticated else "",
        role=user_role(user),
        source_address=request.META.get("REMOTE_ADDR", "") or "",
        user_agent=request.META.get("HTTP_USER_AGENT", "") or "",
    )


def actor_from_scope(scope: dict[str, Any]) -> Actor:
    user = scope.get("user")
    authenticated = bool(getattr(user, "is_authenticated", False))
    client = scope.get("client") or ("", 0)
    return Actor(
        user_id=user.pk if authenticated and user is not None else None,
        username=user.get_username() if authenticated and user is not None else "",
        role=user_role(user),
        source_address=str(client[0] or ""),
        user_agent=_header(scope, b"user-agent"),
    )


def scope_user_verify(scope: dict[str, Any]) -> Any:
    """Resolve the socket's user and mark it OTP-verified or not, as OTPMiddleware does for HTTP.

    Synchronous (database access): call from `database_sync_to_async`.
    """
    user = scope.get("user")
    if user is None:
        return None
    if hasattr(user, "_wrapped") and hasattr(user, "_setup"):
        # channels' lazy user: force evaluation here, in a sync context.
        user.is_authenticated  # noqa: B018
        user = user._wrapped
    user.otp_device = None
    user.is_verified = lambda: user.otp_device is not None
    if not user.is_authenticated:
        return user
    session = scope.get("session")
    persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
    if persistent_id:
        device = OTPDevice.from_persistent_id(persistent_id)
        if device is not None and device.user_id == user.pk and device.confirmed:
            user.otp_device = device
    scope["user"] = user
    return user
