"""The raw ASGI entry of ingest (telemetry/asgi.py, in front of Django in config/asgi.py) answers
exactly as the Django view does, and leaves to Django what Django's middleware would refuse."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from config.asgi import application
from tests import factories
from tests.ingest_helpers import URL, ago, post, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)


def asgi_client(host: str = "localhost", scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=f"{scheme}://{host}")


def _summary(status: int, content: bytes, headers: httpx.Headers | dict[str, str]) -> tuple[int, str | None]:
    body = httpx.Response(status, content=content).json()
    return status, (body.get("error") or {}).get("code")


async def test_fast_path_and_django_view_answer_alike():
    dev, other = await make_device(patient="p-asgi"), await make_device()
    good = factories.batch_body(dev, factories.series(1, 20, start=ago(60)))
    cases: list[tuple[str, bytes, dict[str, str], str]] = [
        ("POST", good, dev.sign(good), "application/json"),
        ("POST", good, dev.sign(good), "application/json"),  # now all duplicates
        ("POST", good, {**dev.sign(good), "X-Perfuse-Signature": "AAAA"}, "application/json"),
        ("POST", good, dev.sign(good), "text/plain"),
        ("POST", b"{oops", dev.sign(b"{oops"), "application/json"),
        ("POST", factories.batch_body(other, []), dev.sign(factories.batch_body(other, [])), "application/json"),
        ("GET", b"", {}, ""),
    ]
    django_client = AsyncClient()
    async with asgi_client() as fast:
        for method, body, headers, content_type in cases:
            if method == "GET":
                via_django = await django_client.get(URL)
                via_fast = await fast.get(URL)
            else:
                via_django = await post(django_client, dev, body, headers=headers, content_type=content_type)
                via_fast = await fast.post(URL, content=body, headers={**headers, "Content-Type": content_type})
            assert _summary(via_fast.status_code, via_fast.content, via_fast.headers) == _summary(
                via_django.status_code, via_django.content, via_django
            ), (method, content_type)
            assert via_fast.headers["content-type"] == "application/json"
            assert via_fast.headers["x-content-type-options"] == "nosniff"
            if via_fast.status_code == 200:
                assert {"accepted", "duplicates", "rejected"} <= set(via_fast.json())
                assert "x-ratelimit-remaining" in via_fast.headers
    assert len(await stored(dev.device_id)) == 20


async def test_fast_path_refuses_a_large_body_without_reading_it_all():
    dev = await make_device()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        for _ in range(40):
            yield b" " * 64 * 1024

    async with asgi_client() as fast:
        response = await fast.post(URL, content=chunks(), headers={**dev.sign(b""), "Content-Type": "application/json"})
        declared = await fast.post(
            URL, content=b"{}", headers={"Content-Type": "application/json", "Content-Length": str(2 * 1024 * 1024)}
        )
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert declared.status_code == 413


async def test_requests_the_middleware_would_refuse_still_go_to_django(settings):
    dev = await make_device()
    body = factories.batch_body(dev, factories.series(1, 2))
    async with asgi_client(host="evil.example") as fast:
        response = await fast.post(URL, content=body, headers={**dev.sign(body), "Content-Type": "application/json"})
    assert response.status_code == 400  # DisallowedHost, answered by Django

    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.PERFUSE_TRUSTED_PROXIES = ["127.0.0.1"]  # httpx's ASGI peer plays the proxy (config/net.py)
    async with asgi_client() as fast:
        plain = await fast.post(URL, content=body, headers={**dev.sign(body), "Content-Type": "application/json"})
        proxied = await fast.post(
            URL,
            content=body,
            headers={**dev.sign(body), "Content-Type": "application/json", "X-Forwarded-Proto": "https"},
        )
    # Plain HTTP went through Django's middleware (which redirects it in production; the middleware
    # read its settings before this test changed them, so here only its X-Frame-Options shows).
    assert "x-frame-options" in plain.headers
    assert proxied.status_code == 200 and proxied.json()["duplicates"] == 2  # plain one stored them
    assert "x-frame-options" not in proxied.headers  # answered by the fast path


async def test_fast_path_feeds_the_ingest_metrics():
    from config import metrics

    dev = await make_device()
    items = [*factories.series(1, 4, start=ago(30)), factories.reading(9, value=500.0)]
    body = factories.batch_body(dev, items)
    before = {
        "ok": metrics.current(metrics.INGEST_REQUESTS, status="200"),
        "unauthorized": metrics.current(metrics.INGEST_REQUESTS, status="401"),
        "accepted": metrics.current(metrics.INGEST_READINGS, outcome="accepted"),
        "duplicate": metrics.current(metrics.INGEST_READINGS, outcome="duplicate"),
    }
    async with asgi_client() as fast:
        for _ in range(2):
            await fast.post(URL, content=body, headers={**dev.sign(body), "Content-Type": "application/json"})
        await fast.post(URL, content=body, headers={"Content-Type": "application/json"})
    assert metrics.current(metrics.INGEST_REQUESTS, status="200") - before["ok"] == 2
    assert metrics.current(metrics.INGEST_REQUESTS, status="401") - before["unauthorized"] == 1
    assert metrics.current(metrics.INGEST_READINGS, outcome="accepted") - before["accepted"] == 4
    assert metrics.current(metrics.INGEST_READINGS, outcome="duplicate") - before["duplicate"] == 4
