"""JSON log lines with a correlation id: set per request/socket, echoed to the client, on every line."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import pytest
from django.test import override_settings

from config.asgi import application
from config.logs import NO_REQUEST, CorrelationMiddleware, RequestIdFilter, json_formatter, request_id

log = logging.getLogger("perfuse.test.logs")


def _capture() -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    return handler, out


async def _logging_app(scope: Any, receive: Any, send: Any) -> None:
    log.warning("inside %s", scope["path"], extra={"rows": 3})
    await send({"type": "http.response.start", "status": 204, "headers": [(b"x-request-id", b"spoofed")]})
    await send({"type": "http.response.body", "body": b""})


async def _get(headers: dict[str, str] | None = None) -> tuple[httpx.Response, list[dict[str, Any]]]:
    handler, out = _capture()
    log.addHandler(handler)
    try:
        transport = httpx.ASGITransport(app=CorrelationMiddleware(_logging_app))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/x", headers=headers or {})
    finally:
        log.removeHandler(handler)
    return response, [json.loads(line) for line in out.getvalue().splitlines()]


async def test_each_line_carries_the_id_the_client_sees() -> None:
    response, lines = await _get()
    rid = response.headers["x-request-id"]
    assert len(rid) == 32 and rid != "spoofed"
    assert lines == [
        {
            "time": lines[0]["time"],
            "level": "WARNING",
            "logger": "perfuse.test.logs",
            "message": "inside /x",
            "request_id": rid,
            "rows": 3,
        }
    ]
    assert request_id.get() == NO_REQUEST  # reset once the request is over


async def test_two_requests_get_different_ids() -> None:
    first, _ = await _get()
    second, _ = await _get()
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_proxy_id_is_kept_only_from_a_trusted_proxy(trusted: bool) -> None:
    with override_settings(PERFUSE_TRUSTED_PROXIES=["127.0.0.1"] if trusted else []):  # httpx's ASGI peer
        response, lines = await _get({"X-Request-ID": "nginx-4f2a.9"})
    rid = response.headers["x-request-id"]
    assert (rid == "nginx-4f2a.9") is trusted
    assert lines[0]["request_id"] == rid


async def test_a_proxy_id_that_is_not_a_token_is_replaced() -> None:
    with override_settings(PERFUSE_TRUSTED_PROXIES=["127.0.0.1"]):
        response, lines = await _get({"X-Request-ID": "a b<script>"})
    assert response.headers["x-request-id"] != "a b<script>"
    assert lines[0]["request_id"] == response.headers["x-request-id"]


def test_lines_outside_a_request_carry_a_dash() -> None:
    handler, out = _capture()
    log.addHandler(handler)
    try:
        log.warning("engine tick")
    finally:
        log.removeHandler(handler)
    assert json.loads(out.getvalue())["request_id"] == NO_REQUEST


@pytest.mark.django_db(transaction=True)
async def test_the_application_answers_with_an_id() -> None:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert len(response.headers["x-request-id"]) == 32
