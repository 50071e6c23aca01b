"""PERFUSE_TRUSTED_PROXIES: the proxy's headers are believed only from the proxy's own address."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from config.net import ProxyHeadersGate, client_address, trusted_proxy
from tests.process_support import ROOT

FORWARDED = "6.6.6.6, 192.0.2.7"  # a forged hop left of the one the proxy wrote


@pytest.mark.parametrize(
    ("proxies", "peer", "expected"),
    [
        ([], "10.0.0.2", "10.0.0.2"),  # no proxy configured: nobody's header counts
        (["10.0.0.2"], "10.0.0.2", "192.0.2.7"),  # our proxy: its (rightmost) hop
        (["10.0.0.2"], "10.0.0.3", "10.0.0.3"),  # another peer: the peer itself
        (["10.0.0.0/24"], "10.0.0.77", "192.0.2.7"),  # a network of proxies
        (["10.0.0.0/24"], "::ffff:10.0.0.9", "192.0.2.7"),  # IPv4-mapped IPv6 is the IPv4
        (["::1"], "::1", "192.0.2.7"),
        (["10.0.0.2"], "not-an-address", "not-an-address"),
    ],
)
def test_the_forwarded_hop_counts_only_from_a_trusted_proxy(proxies: list[str], peer: str, expected: str) -> None:
    with override_settings(PERFUSE_TRUSTED_PROXIES=proxies):
        assert client_address(peer, FORWARDED) == expected


def test_a_malformed_proxy_entry_stops_startup() -> None:
    with override_settings(PERFUSE_TRUSTED_PROXIES=["10.0.0.300"]), pytest.raises(ImproperlyConfigured):
        trusted_proxy("10.0.0.1")


async def _seen(peer: str) -> dict[str, str]:
    """The headers an app behind ProxyHeadersGate receives from `peer`."""
    seen: dict[str, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=ProxyHeadersGate(app), client=(peer, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.get(
            "/",
            headers={
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "Forwarded": "for=6.6.6.6",
                "X-Request-ID": "forged",
                "User-Agent": "probe",
            },
        )
    return seen


@override_settings(PERFUSE_TRUSTED_PROXIES=["10.0.0.2"])
async def test_the_gate_drops_proxy_headers_from_any_other_peer() -> None:
    stranger = await _seen("203.0.113.9")
    assert not {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-request-id"} & set(stranger)
    assert stranger["user-agent"] == "probe"  # the client's own headers stay
    proxy = await _seen("10.0.0.2")
    assert proxy["x-forwarded-proto"] == "https" and proxy["x-forwarded-for"] == "6.6.6.6"


@pytest.mark.django_db(transaction=True)
async def test_https_is_believed_only_from_the_proxy(settings: Any) -> None:
    """Through the real application: with the HTTPS redirect on, the ingest fast path answers only
    requests it takes for HTTPS (telemetry/asgi.py); any other goes to Django's middleware, whose
    answers carry X-Frame-Options. A stranger's forged X-Forwarded-Proto does not make it HTTPS."""
    from config.asgi import application

    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.PERFUSE_TRUSTED_PROXIES = ["10.0.0.2"]

    async def answered_by_django(peer: str) -> bool:
        transport = httpx.ASGITransport(app=application, client=(peer, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            response = await client.post(
                "/api/v1/ingest/readings",
                content=b"{}",
                headers={"Content-Type": "application/json", "X-Forwarded-Proto": "https"},
            )
        assert response.status_code == 401  # unsigned, either way
        return "x-frame-options" in response.headers

    assert await answered_by_django("10.0.0.2") is False
    assert await answered_by_django("203.0.113.9") is True


def _settings_in_a_fresh_process(env: dict[str, str]) -> list[str]:
    # The settings module alone (no app registry): what the environment makes of it.
    code = (
        "import config.settings.test as s; "
        "print(s.PERFUSE_TRUSTED_PROXIES); print(getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PERFUSE_TRUSTED_PROXY")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings.test", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_setting_from_the_environment() -> None:
    assert _settings_in_a_fresh_process({}) == ["[]", "None"]
    listed = _settings_in_a_fresh_process({"PERFUSE_TRUSTED_PROXIES": "10.0.0.2, 10.1.0.0/16"})
    assert listed == ["['10.0.0.2', '10.1.0.0/16']", "('HTTP_X_FORWARDED_PROTO', 'https')"]
    # The older switch: a proxy on this host.
    assert _settings_in_a_fresh_process({"PERFUSE_TRUSTED_PROXY": "1"})[0] == "['127.0.0.1', '::1']"
