"""Log lines a log pipeline can use: JSON (python-json-logger) with a correlation id on every line.

Every HTTP request and WebSocket gets a request id when it enters the ASGI application
(`CorrelationMiddleware`, in config/asgi.py): the proxy's `X-Request-ID` when the peer is a trusted
proxy (PERFUSE_TRUSTED_PROXIES, config/net.py) and the value is a plain token, otherwise a fresh
one. It is kept in a context variable, so every line logged while the request runs — in the event loop or
in a `sync_to_async` thread, which copies the context — carries it, and the HTTP answer echoes
it as `X-Request-ID` so a user's report ("request id …") finds its lines. Lines logged outside
any request (the engine, the notifier) carry "-".

PERFUSE_LOG_FORMAT picks `json` (production's default) or `plain` (the console of `make run`);
both carry the id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from config.net import scope_header, scope_peer, trusted_proxy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NO_REQUEST = "-"
request_id: ContextVar[str] = ContextVar("perfuse_request_id", default=NO_REQUEST)
# What a proxy may hand us: a token, never a place to smuggle newlines or markup into logs.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_for(scope: Scope) -> str:
    """The proxy's id when we trust the proxy and it is a plain token, else a new one."""
    if trusted_proxy(scope_peer(scope)):
        offered = scope_header(dict(scope), b"x-request-id")
        if _TOKEN.fullmatch(offered):
            return offered
    return uuid.uuid4().hex


class CorrelationMiddleware:
    """ASGI: sets the request id for the connection and echoes it on HTTP answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id_for(scope)
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (handlers' filter, so third-party loggers too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def json_formatter() -> JsonFormatter:
    """One JSON object per line: time, level, logger, message, request id, and any `extra=`."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )
