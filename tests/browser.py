"""Shared pieces of the browser tests: Debian's Chromium and a Daphne serving the test database."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from tests import personas

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def daphne_server(log_name: str) -> Iterator[str]:
    """Daphne on a free loopback port, serving the test database (the calling test must be
    transactional so Daphne sees its data); yields the base URL, logs to test-artifacts/."""
    db = connection.settings_dict
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"daphne did not start; see test-artifacts/{log_name}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def off_loop(fn: Any, *args: Any) -> Any:
    """Run database work off the thread where Playwright's event loop runs (the ORM refuses to
    run inside an event loop)."""

    def call() -> Any:
        try:
            return fn(*args)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def wait_until(page: Any, expression: str, arg: Any = None, *, timeout_ms: float = 30000) -> Any:
    """`page.wait_for_function` for pages under our Content-Security-Policy: Playwright's own
    polls by eval()ing the expression inside the page, which a policy without 'unsafe-eval'
    refuses; `page.evaluate` runs through the DevTools protocol, which the policy allows."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not (value := page.evaluate(expression, arg)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout_ms} ms: {expression}")
        page.wait_for_timeout(50)
    return value


def sign_in(page: Any, base: str, username: str, code: str) -> None:
    """Password and a TOTP code in the login form; a clinician lands on the ward overview."""
    page.goto(base + "/accounts/login/")
    page.fill("[name=username]", username)
    page.fill("[name=password]", personas.PASSWORD)
    page.fill("[name=otp_token]", code)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
