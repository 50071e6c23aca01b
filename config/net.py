"""Who is on the other end of a connection: the client address of an HTTP request or a WebSocket
scope, by one proxy rule (PERFUSE_TRUSTED_PROXY) for the audit trail, the access layer and the
metrics allow-list alike. Plumbing: imports nothing of the apps."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def client_address(remote: str, forwarded: str) -> str:
    """The peer address, or the rightmost X-Forwarded-For hop when our own proxy sets it.

    Only the rightmost entry was written by the proxy we trust; anything left of it came from
    the client and can be forged."""
    if settings.PERFUSE_TRUSTED_PROXY and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1][:64]
    return remote[:64]


def request_address(request: HttpRequest) -> str:
    """The client address of an HTTP request."""
    return client_address(request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_X_FORWARDED_FOR", ""))


def scope_header(scope: dict[str, Any], name: bytes) -> str:
    """One header of an ASGI scope (repeated headers joined by commas, as HTTP folds them)."""
    values = [value.decode("latin-1") for key, value in scope.get("headers", []) if key.lower() == name]
    return ",".join(values)


def scope_address(scope: dict[str, Any]) -> str:
    """The client address of a WebSocket (ASGI) scope."""
    client = scope.get("client") or ("", 0)
    return client_address(str(client[0] or ""), scope_header(scope, b"x-forwarded-for"))
