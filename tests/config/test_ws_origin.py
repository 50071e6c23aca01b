"""WebSocket handshakes are refused (403, before accept) unless the page's origin is exactly ours:
scheme, host and port (config/origins.py). Channels' AllowedHostsOriginValidator, used before,
let a page on another port or scheme of an allowed host through."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from config.asgi import application
from config.origins import origin_allowed

pytestmark = pytest.mark.django_db(transaction=True)


async def _handshake(host: str, origin: str | None) -> bool:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    comm = WebsocketCommunicator(application, "/ws/session", headers=headers)
    connected, _ = await comm.connect(timeout=3)  # refused before accept: Daphne answers 403
    await comm.disconnect()
    return connected


@pytest.mark.parametrize(
    "host, origin, allowed",
    [
        ("localhost", "http://localhost", True),
        ("localhost:8000", "http://localhost:8000", True),
        ("localhost", "http://localhost:80", True),  # the default port written out is the same origin
        ("localhost:8000", "http://localhost:8001", False),  # another port of an allowed host
        ("localhost:8000", "http://localhost", False),
        ("localhost", "https://localhost", False),  # another scheme
        ("localhost", "http://127.0.0.1", False),  # another allowed host
        ("localhost", "http://evil.example", False),
        ("localhost", "null", False),  # sandboxed or file:// pages
        ("localhost", None, False),  # no Origin at all
        ("evil.example", "http://evil.example", False),  # a Host outside ALLOWED_HOSTS
    ],
)
async def test_only_the_exact_origin_of_the_page_may_open_a_socket(
    host: str, origin: str | None, allowed: bool
) -> None:
    assert await _handshake(host, origin) is allowed


def _scope(origin: str, *, scheme: str = "ws", host: str = "perfuse.example", **headers: str) -> dict[str, Any]:
    sent = {"host": host, "origin": origin, **headers}
    return {"type": "websocket", "scheme": scheme, "headers": [(k.encode(), v.encode()) for k, v in sent.items()]}


def test_a_secure_socket_belongs_to_the_https_page(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["perfuse.example"]
    assert origin_allowed(_scope("https://perfuse.example", scheme="wss"))
    assert not origin_allowed(_scope("http://perfuse.example", scheme="wss"))
    assert not origin_allowed(_scope("https://perfuse.example", scheme="ws"))


def test_behind_a_tls_proxy_the_forwarded_scheme_counts_as_for_http(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["perfuse.example"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(_scope("https://perfuse.example", **{"x-forwarded-proto": "https"}))
    assert not origin_allowed(_scope("http://perfuse.example", **{"x-forwarded-proto": "https"}))
    assert not origin_allowed(_scope("https://perfuse.example"))  # no header: the socket is plain


def test_csrf_trusted_origins_are_allowed_exactly(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["perfuse.example"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://console.perfuse.example:8443", "https://*.wards.example"]
    assert origin_allowed(_scope("https://console.perfuse.example:8443"))
    assert not origin_allowed(_scope("https://console.perfuse.example"))  # port 443, not 8443
    assert not origin_allowed(_scope("http://console.perfuse.example:8443"))
    assert not origin_allowed(_scope("https://icu.wards.example"))  # wildcards give sockets nothing
