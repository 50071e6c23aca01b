"""WebSocket handshakes: the page's Origin must be exactly one of ours (scheme, host and port).

Browsers apply no same-origin policy to WebSockets and send the site's cookies with any page's
handshake, so the server must refuse pages of other origins (cross-site WebSocket hijacking).
Channels' AllowedHostsOriginValidator compares the host only: a page on another port or scheme of
an allowed host passed (seen here, PITFALLS.md). Allowed here, compared as (scheme, host, port)
with default ports made explicit (http://a is http://a:80):
- every origin of CSRF_TRUSTED_ORIGINS (wildcard entries match nothing: sockets get exact ones);
- the socket's own origin: its Host header, which must be in ALLOWED_HOSTS, with the socket's
  scheme (ws → http, wss → https; behind a TLS proxy, SECURE_PROXY_SSL_HEADER as for HTTP).
A handshake without Origin, with `null` or with any other origin is refused before accept, which
Daphne answers with 403.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

Origin = tuple[str, str, int]
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_parse(scheme: str, netloc: str) -> Origin | None:
    """(scheme, host, port) of `scheme://netloc`, or None when it is no web origin."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.username is not None:
        return None
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _secure(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, expected = settings.SECURE_PROXY_SSL_HEADER
        header = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        return (_header(scope, header) or "").split(",", 1)[0].strip() == expected
    return False


def _own_origin(scope: dict[str, Any]) -> Origin | None:
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return origin_parse("https" if _secure(scope) else "http", host)


def origins_allowed(scope: dict[str, Any]) -> set[Origin]:
    trusted = {origin_parse(*entry.split("://", 1)) for entry in settings.CSRF_TRUSTED_ORIGINS if "://" in entry}
    own = _own_origin(scope)
    return {o for o in (*trusted, own) if o is not None and "*" not in o[1]}


def origin_allowed(scope: dict[str, Any]) -> bool:
    sent = _header(scope, b"origin")
    if not sent or "://" not in sent:
        return False
    origin = origin_parse(*sent.split("://", 1))
    return origin is not None and origin in origins_allowed(scope)


class OriginGuard:
    """ASGI middleware for the `websocket` protocol: handshakes from other origins are refused."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if not origin_allowed(scope):
            return await WebsocketDenier.as_asgi()(scope, receive, send)
        return await self.app(scope, receive, send)
