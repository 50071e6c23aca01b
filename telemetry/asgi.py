"""Device ingest as a raw ASGI app, mounted in front of Django for its one path.

Measured on this machine (bench/ingest.py, docs/benchmarks.md), Django's ASGI handler and its
middleware stack cost about 4 ms of CPU per 500-reading request — most of it thread hops, since
Django runs each `MiddlewareMixin.process_request` through `sync_to_async` — against about 5.5 ms
for the ingest work itself. Devices are not browser sessions: they need none of that middleware.
So `IngestRouter` answers `POST /api/v1/ingest/readings` itself, with the same `pipeline.precheck`
and `pipeline.handle` as the Django view (and `POST /api/v1/ingest/gateway` with
`gateway.gateway_handle`, contract section 1c), and hands every other request to Django. Requests the
middleware would have refused or redirected (a host outside ALLOWED_HOSTS, plain HTTP when
SECURE_SSL_REDIRECT is on) also go to Django, so they are answered exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from config import metrics
from telemetry.ingest import group, pipeline
from telemetry.ingest.answers import Answer, answer_counts, too_large
from telemetry.ingest.gateway import gateway_handle
from telemetry.schemas import encoder

Scope = dict[str, Any]
ASGIApp = Any
Handler = Callable[..., Awaitable[Answer]]

PATH = "/api/v1/ingest/readings"
GATEWAY_PATH = "/api/v1/ingest/gateway"

HANDLERS: dict[str, Handler] = {PATH: pipeline.handle, GATEWAY_PATH: gateway_handle}


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _secure(scope: Scope, headers: dict[str, str]) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, value = proxy
        forwarded = headers.get(name.removeprefix("HTTP_").replace("_", "-").lower(), "")
        return forwarded.split(",", 1)[0].strip() == value
    return False


def _ours(scope: Scope, headers: dict[str, str]) -> bool:
    if scope["type"] != "http" or scope["path"] not in HANDLERS:
        return False
    domain, _ = split_domain_port(headers.get("host", ""))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    return _secure(scope, headers) or not settings.SECURE_SSL_REDIRECT


async def _respond(send: Any, answer: Answer) -> None:
    body = encoder.encode(answer.body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def ingest_app(scope: Scope, receive: Any, send: Any, headers: dict[str, str]) -> None:
    started = time.perf_counter()
    # An exception is counted as the 500 a device would see.
    status, counts = 500, (0, 0, list[str]())
    try:
        answer = await _answer(scope, receive, headers)
        if answer is None:  # the client went away before sending its body: nothing to count
            status = 0
            return
        status, counts = answer.status, answer_counts(answer)
        await _respond(send, answer)
    finally:
        if status:
            # The same /metrics counters as the Django view's `metrics.ingest_observed`.
            accepted, duplicates, codes = counts
            metrics.ingest_observe(
                status=status,
                accepted=accepted,
                duplicates=duplicates,
                rejected_codes=codes,
                seconds=time.perf_counter() - started,
            )


async def _answer(scope: Scope, receive: Any, headers: dict[str, str]) -> Answer | None:
    refused = pipeline.precheck(
        method=scope["method"],
        content_type=headers.get("content-type", ""),
        declared_length=headers.get("content-length"),
    )
    if refused is not None:
        return refused
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.PERFUSE_INGEST_MAX_BYTES:  # stop reading: the limit holds without a Content-Length too
            return too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    handle = group.device_handler() if scope["path"] == PATH else HANDLERS[scope["path"]]
    return await handle(body=b"".join(chunks), headers=headers)


class IngestRouter:
    """ASGI `http` application: the ingest paths here, everything else to Django."""

    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in HANDLERS:
            headers = _headers(scope)
            if _ours(scope, headers):
                await ingest_app(scope, receive, send, headers)
                return
        await self.django_app(scope, receive, send)
