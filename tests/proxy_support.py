"""Real servers for the proxy tests: Daphne processes on the test database, nginx in front of
them (deploy/nginx/, rendered by `manage.py proxy_setup`), and small clients that pick their own
loopback source address (127.0.0.0/8 is all ours on Linux), so the address the proxy sees — and
Perfuse must audit — differs from the proxy's own 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import connection

from tests.process_support import WAIT, daphne_spawn, free_port

PROXY_PEER = "127.0.0.1"  # nginx connects to the Daphnes from here: the one trusted proxy


@dataclass
class Daphne:
    port: int
    access_log: Path
    process: subprocess.Popen[bytes]

    def requests_logged(self) -> int:
        return len(self.access_log.read_text().splitlines()) if self.access_log.exists() else 0


@dataclass
class Front:
    port: int
    ca_file: Path
    access_log: Path
    daphnes: list[Daphne]

    def context(self, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if maximum is not None:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.maximum_version = maximum
        return ctx

    @property
    def origin(self) -> str:
        return f"https://localhost:{self.port}"


def _wait_for(predicate: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def daphne_env() -> dict[str, str]:
    """The environment of a Daphne serving the test database (tests must be transactional)."""
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "PERFUSE_TRUSTED_PROXIES": PROXY_PEER,
    }


def _daphne(directory: Path, index: int) -> Daphne:
    access_log = directory / f"daphne-{index}.access.log"
    log = directory / f"daphne-{index}.log"
    process, port = daphne_spawn(daphne_env(), log, extra=("--access-log", str(access_log)))
    return Daphne(port, access_log, process)


@contextmanager
def front_started(directory: Path, daphnes: int = 2) -> Iterator[Front]:
    """`daphnes` Daphne processes and nginx in front of them, all on loopback."""
    started: list[Daphne] = []
    nginx: subprocess.Popen[bytes] | None = None
    temp: Path | None = None
    try:
        started = [_daphne(directory, i) for i in range(daphnes)]
        for d in started:
            _wait_for(lambda d=d: _accepts(d.port), f"daphne on {d.port}", d.process, directory / "daphne-0.log")
        port = free_port()
        state = directory / "nginx"
        # Not under pytest's 0700 directories: nginx's workers (nobody, when the tests run as
        # root) write their temp files there (config/proxy.py).
        temp = Path(tempfile.mkdtemp(prefix="perfuse-nginx-"))
        upstreams = [arg for d in started for arg in ("--upstream", f"127.0.0.1:{d.port}")]
        call_command(
            "proxy_setup",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
            *upstreams,
            "--pki-dir",
            str(directory / "pki"),
            "--temp-dir",
            str(temp),
        )
        error_log = state / "error.log"
        nginx = subprocess.Popen(
            ["nginx", "-e", str(error_log), "-c", str(state / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        _wait_for(lambda: _accepts(port), "nginx", nginx, error_log)
        yield Front(port, directory / "pki" / "ca.pem", state / "access.log", started)
    finally:
        for process in [*(d.process for d in started), *([nginx] if nginx else [])]:
            process.terminate()
        for process in [*(d.process for d in started), *([nginx] if nginx else [])]:
            try:
                process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=WAIT)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def https(
    front: Front,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes, str]:
    """One HTTPS request through the proxy from `source`: status, headers, body, TLS version."""
    conn = http.client.HTTPSConnection(
        "localhost", front.port, context=front.context(), timeout=WAIT, source_address=(source, 0)
    )
    try:
        conn.connect()
        version = conn.sock.version() or ""  # type: ignore[attr-defined]
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data, version
    finally:
        conn.close()


def plain(
    port: int, method: str, path: str, *, headers: dict[str, str], source: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request straight to a Daphne (no proxy) from `source`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def access_line(log: Path, needle: str) -> str:
    """The last line of an access log containing `needle`, once written (nginx logs a request
    as it finishes it, a moment after the client has the answer)."""
    deadline = time.monotonic() + WAIT
    while True:
        lines = [line for line in (log.read_text() if log.exists() else "").splitlines() if needle in line]
        if lines:
            return lines[-1]
        assert time.monotonic() < deadline, f"no {needle!r} in {log}"
        time.sleep(0.05)


def wss_first_frame(front: Front, path: str, *, headers: dict[str, str], source: str) -> dict[str, Any]:
    """Open a WebSocket through the proxy (RFC 6455 handshake by hand) and read one text frame."""
    raw = socket.create_connection(("127.0.0.1", front.port), timeout=WAIT, source_address=(source, 0))
    with front.context().wrap_socket(raw, server_hostname="localhost") as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: localhost:{front.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {front.origin}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reader = sock.makefile("rb")
        status = reader.readline().decode()
        assert " 101 " in status, status
        while reader.readline() not in (b"\r\n", b""):
            pass
        first, second = reader.read(2)
        assert first & 0x0F == 1, f"not a text frame: opcode {first & 0x0F}"
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(reader.read(2), "big")
        elif length == 127:
            length = int.from_bytes(reader.read(8), "big")
        frame: dict[str, Any] = json.loads(reader.read(length))
        return frame
