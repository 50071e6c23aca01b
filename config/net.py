"""Who is on the other end of a connection: the client address of an HTTP request or a WebSocket
scope, by one proxy rule for the audit trail, the access layer and the metrics allow-list alike.
Plumbing: imports nothing of the apps.

The proxy rule: headers a proxy writes (X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host,
Forwarded, X-Request-ID) are believed only when the TCP peer itself is one of
PERFUSE_TRUSTED_PROXIES (addresses or networks). A client that reaches a Daphne directly, or
any peer when no proxy is configured, cannot make itself look like another address, like HTTPS
(SECURE_PROXY_SSL_HEADER) or like another request id: `ProxyHeadersGate`, in front of both
protocols in config/asgi.py, drops those headers from its scope before anything reads them (the
correlation id, read before it, checks the peer itself)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Headers only a proxy of ours may set (lower case, as in an ASGI scope).
PROXY_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-request-id"}
)


@lru_cache(maxsize=8)
def networks(entries: tuple[str, ...], setting: str) -> tuple[Network, ...]:
    """CIDR entries (a bare address is its own /32 or /128) as networks; a bad one stops startup."""
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{setting}: {exc}") from exc


def address_in(address: str, nets: tuple[Network, ...]) -> bool:
    """Whether `address` (IPv4-mapped IPv6 taken as the IPv4 it maps) is in one of `nets`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)


def trusted_proxy(peer: str) -> bool:
    """Whether the TCP peer is a proxy of ours (PERFUSE_TRUSTED_PROXIES)."""
    entries = tuple(settings.PERFUSE_TRUSTED_PROXIES)
    return bool(entries) and address_in(peer, networks(entries, "PERFUSE_TRUSTED_PROXIES"))


def client_address(remote: str, forwarded: str) -> str:
    """The peer address, or the rightmost X-Forwarded-For hop when the peer is our own proxy.

    Only the rightmost entry was written by the proxy we trust; anything left of it came from
    the client and can be forged."""
    if forwarded and trusted_proxy(remote):
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


def scope_peer(scope: MutableMapping[str, Any]) -> str:
    """The TCP peer of an ASGI scope ("" when the server does not say)."""
    client = scope.get("client") or ("", 0)
    return str(client[0] or "")


def scope_address(scope: dict[str, Any]) -> str:
    """The client address of a WebSocket (ASGI) scope."""
    return client_address(scope_peer(scope), scope_header(scope, b"x-forwarded-for"))


ASGIApp = Callable[..., Awaitable[Any]]


class ProxyHeadersGate:
    """ASGI: a connection whose peer is not a trusted proxy loses the proxy's headers.

    Why here and not in each reader: Django's SECURE_PROXY_SSL_HEADER (is_secure, CSRF, the HTTPS
    redirect), the ingest router's own HTTPS check, the socket origin check and the correlation
    id all read these headers; stripping them once at the door keeps every reader honest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not trusted_proxy(scope_peer(scope)):
            headers = scope.get("headers", [])
            if any(name.lower() in PROXY_HEADERS for name, _ in headers):
                scope = {**scope, "headers": [(n, v) for n, v in headers if n.lower() not in PROXY_HEADERS]}
        await self.app(scope, receive, send)
