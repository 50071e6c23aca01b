"""Real receivers for the notification tests: an SMTP server (aiosmtpd) and an HTTP webhook
receiver (http.server in a thread) that checks the HMAC signature on its own, as a paging gateway
would. Both can be told to fail their first requests, or every one."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpSink:
    """Accepts mail, or answers `refusal` (e.g. "451 4.3.0 try later") to the first `fail_first`
    messages (every message while `fail_always`)."""

    fail_first: int = 0
    fail_always: bool = False
    refusal: str = "451 4.3.0 Try again later"
    port: int = 0
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    refused: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_always or self.refused < self.fail_first:
            self.refused += 1
            return self.refusal
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        self.arrived.set()
        return "250 Message accepted for delivery"


@contextmanager
def smtp_sink(**options: Any) -> Iterator[SmtpSink]:
    sink = SmtpSink(**options)
    sink.port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    signature_valid: bool


@dataclass
class WebhookReceiver:
    """Answers 204 to a correctly signed POST, 401 to a bad signature, and `fail_status` to the
    first `fail_first` requests (every request while `fail_always`)."""

    secret: str
    fail_first: int = 0
    fail_always: bool = False
    fail_status: int = 503
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if r.signature_valid and r.headers.get("x-perfuse-accepted") == "1"]

    def verify(self, header: str, body: bytes) -> bool:
        """The receiver's check, written from the documented scheme, not from Perfuse's code."""
        try:
            parts = dict(item.split("=", 1) for item in header.split(","))
            stamp = int(parts["t"])
        except (KeyError, ValueError):
            return False
        expected = hmac.new(self.secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts.get("v1", "")) and abs(time.time() - stamp) < 300


@contextmanager
def webhook_receiver(secret: str, **options: Any) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret=secret, **options)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            valid = receiver.verify(headers.get("x-perfuse-signature", ""), body)
            failing = receiver.fail_always or len(receiver.requests) < receiver.fail_first
            status = 401 if not valid else receiver.fail_status if failing else 204
            if status == 204:
                headers["x-perfuse-accepted"] = "1"
            receiver.requests.append(Received(body, headers, valid))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if status == 204:
                receiver.arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/perfuse"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def webhook_json(received: Received) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(received.body)
    return data
