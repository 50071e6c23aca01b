"""Malformed HTTP on the JSON endpoints, sent byte for byte to a real Daphne: every answer is a
4xx, and every answer with a body is the contract's JSON error. Some framing errors never reach
the application (Twisted answers a bare 400 itself: a bad Content-Length, a broken chunk, a
multipart body it cannot split); whatever the server does hand over is answered by Perfuse."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from telemetry.models import Ward
from tests import factories, personas
from tests.browser import daphne_server

pytestmark = pytest.mark.django_db(transaction=True)

CSRF = "a" * 32  # a CSRF secret as a cookie, and the same value as the header
IDENTITY = "/api/v1/patients/pt-frame/identity"
MULTIPART_OK = b'--xx\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbedside check\r\n--xx--\r\n'


@pytest.fixture
def server(ward_a: Ward, ward_clinician: User) -> Iterator[tuple[str, str]]:
    factories.device(ward_code=ward_a.code, patient="pt-frame")
    client = personas.verified_client(ward_clinician)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    with daphne_server("daphne-framing.log") as url:
        yield url, session


def _send(url: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2 :]
    return out


def _request(session: str, head: str, body: bytes = b"", *, csrf: bool = True) -> bytes:
    cookies = f"sessionid={session}" + (f"; csrftoken={CSRF}" if csrf else "")
    token = f"X-CSRFToken: {CSRF}\r\n" if csrf else ""
    lines = head.replace("\n", "\r\n")
    return f"{lines}\r\nHost: 127.0.0.1\r\nCookie: {cookies}\r\n{token}Connection: close\r\n\r\n".encode() + body


MALFORMED = {
    "content-length not a number": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/json\nContent-Length: abc",
        b"{}",
    ),
    "two content-lengths": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/json\nContent-Length: 2\nContent-Length: 3",
        b"{}",
    ),
    "content-length and chunked": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/json\nContent-Length: 2\nTransfer-Encoding: chunked",
        b"2\r\n{}\r\n0\r\n\r\n",
    ),
    "broken chunk size": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/json\nTransfer-Encoding: chunked",
        b"zz\r\n{}\r\n0\r\n\r\n",
    ),
    "multipart without boundary": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: multipart/form-data\nContent-Length: 2",
        b"{}",
    ),
    "multipart": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: multipart/form-data; boundary=xx\n"
        f"Content-Length: {len(MULTIPART_OK)}",
        MULTIPART_OK,
    ),
    "broken multipart": (
        "POST /api/v1/alarms/1/acknowledge HTTP/1.1\nContent-Type: multipart/form-data; boundary=xx\nContent-Length: 9",
        b"--xx\r\nabc",
    ),
    "form-encoded": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/x-www-form-urlencoded\nContent-Length: 15",
        b"purpose=bedside",
    ),
    "content type garbage": (f"POST {IDENTITY} HTTP/1.1\nContent-Type: ;;;==\nContent-Length: 2", b"{}"),
    "not utf-8": (
        f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/json\nContent-Length: 16",
        b'{"purpose": "\xff"}',
    ),
    "non-ascii path": ("GET /api/v1/patients/\xff/series HTTP/1.1", b""),
}


def test_malformed_requests_get_a_4xx_and_any_body_is_json(server):
    url, session = server
    answered_by_perfuse = set()
    for name, (head, body) in MALFORMED.items():
        status, headers, content = _send(url, _request(session, head, body))
        assert 400 <= status < 500, (name, status, content)
        if content or "content-type" in headers:
            assert headers.get("content-type") == "application/json", (name, headers, content)
            assert set(json.loads(content)["error"]) == {"code", "detail"}, name
            answered_by_perfuse.add(name)
    # What reaches the application is refused by it: a JSON endpoint takes JSON only.
    assert {"multipart", "broken multipart", "form-encoded", "content type garbage", "not utf-8"} <= answered_by_perfuse


def test_chunked_json_reaches_the_view(server):
    url, session = server
    body = b'{"purpose": "bedside check"}'
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, _, content = _send(
        url,
        _request(
            session, f"POST {IDENTITY} HTTP/1.1\nContent-Type: application/json\nTransfer-Encoding: chunked", chunked
        ),
    )
    assert status == 200 and json.loads(content)["pseudonym"] == "pt-frame"


def test_csrf_refusal_of_the_session_ping_is_json_for_its_fetch(server):
    url, session = server
    head = "POST /accounts/session/ping HTTP/1.1\nAccept: application/json\nContent-Length: 0"
    status, headers, content = _send(url, _request(session, head, csrf=False))
    assert (status, headers.get("content-type")) == (403, "application/json")
    assert json.loads(content)["error"]["code"] == "csrf_failed"
