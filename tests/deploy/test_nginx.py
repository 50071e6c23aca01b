"""The TLS front of deploy/nginx/, for real: nginx on loopback with a throwaway deployment CA in
front of two Daphne processes serving the test database (started once for the module).

Clients connect from their own loopback addresses (127.0.0.2…): nginx reaches the Daphnes from
127.0.0.1, the one trusted proxy, so an audited 127.0.0.1 would mean Perfuse recorded the proxy
instead of the client, and an audited 6.6.6.6 that it believed a client's forged header."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from audit.models import AuditEvent
from config.proxy import Front as FrontConfig
from config.proxy import site_config
from telemetry.models import Reading, Ward
from tests import factories, ingest_helpers, personas
from tests.proxy_support import Front, access_line, front_started, https, plain, wss_first_frame

pytestmark = pytest.mark.django_db(transaction=True)

SPOOFED = "6.6.6.6"


@pytest.fixture(scope="module")
def front(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with django_db_blocker.unblock(), front_started(tmp_path_factory.mktemp("proxy"), daphnes=2) as started:
        yield started


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_pages_are_served_over_tls_13_with_hsts_and_the_proxys_request_id(front: Front) -> None:
    status, headers, body, version = https(front, "GET", "/accounts/login/", headers={"X-Request-ID": "mine"})
    assert status == 200 and b"<form" in body
    assert version == "TLSv1.3"
    assert headers["strict-transport-security"].startswith("max-age=63072000")
    # nginx's own id replaced the client's, reached Perfuse (which echoes it) and is in nginx's log.
    rid = headers["x-request-id"]
    assert rid != "mine" and len(rid) == 32
    access_line(front.access_log, f"rid={rid}")  # fails unless nginx logs it (a moment after the answer)


def test_tls_12_is_refused(front: Front) -> None:
    with (
        socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        front.context(maximum=ssl.TLSVersion.TLSv1_2).wrap_socket(raw, server_hostname="localhost")


def test_a_live_socket_over_wss_gets_its_snapshot_and_audits_the_real_client(
    front: Front, ward_a: Ward, ward_clinician: User
) -> None:
    factories.device(ward_code=ward_a.code, patient="pt-wss")
    session = personas.verified_client(ward_clinician).cookies[settings.SESSION_COOKIE_NAME].value
    frame = wss_first_frame(
        front,
        "/ws/ward/live",
        headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}", "X-Forwarded-For": SPOOFED},
        source="127.0.0.2",
    )
    assert frame["type"] == "ward.snapshot"
    assert [p["pseudonym"] for p in frame["patients"]] == ["pt-wss"]
    (event,) = _events("ward.live.subscribe")
    assert event.source_address == "127.0.0.2"


def test_signed_device_ingest_goes_through_the_proxy(front: Front, ward_a: Ward) -> None:
    dev = factories.device(ward_code=ward_a.code, patient="pt-ingest")
    body = factories.batch_body(dev, factories.series(1, 20, start=ingest_helpers.ago(60)))
    status, _, answer, _ = https(
        front, "POST", ingest_helpers.URL, body=body, headers={**dev.sign(body), "Content-Type": "application/json"}
    )
    assert status == 200, answer
    assert json.loads(answer)["accepted"] == 20
    assert Reading.objects.filter(device__device_id=dev.device_id).count() == 20


def test_a_body_above_perfuses_cap_is_refused_by_the_proxy(front: Front, ward_a: Ward) -> None:
    dev = factories.device(ward_code=ward_a.code)
    body = b"x" * (settings.PERFUSE_INGEST_MAX_BYTES + 1)
    logged = [d.requests_logged() for d in front.daphnes]
    status, headers, answer, _ = https(
        front, "POST", ingest_helpers.URL, body=body, headers={**dev.sign(body), "Content-Type": "application/json"}
    )
    assert status == 413
    assert json.loads(answer)["error"]["code"] == "body_too_large"
    # nginx answered: its marker, no upstream in its log line, and no Daphne saw the request.
    assert headers["x-perfuse-refused-by"] == "proxy"
    assert "upstream=-" in access_line(front.access_log, f'"POST {ingest_helpers.URL} HTTP/1.1" 413')
    assert [d.requests_logged() for d in front.daphnes] == logged
    # Exactly at the cap, the body passes the proxy and Perfuse itself judges it.
    at_cap = b"x" * settings.PERFUSE_INGEST_MAX_BYTES
    status, headers, answer, _ = https(
        front, "POST", ingest_helpers.URL, body=at_cap, headers={**dev.sign(at_cap), "Content-Type": "application/json"}
    )
    assert status == 400 and "x-perfuse-refused-by" not in headers


def test_requests_are_spread_over_both_daphnes(front: Front) -> None:
    before = [d.requests_logged() for d in front.daphnes]
    for _ in range(8):
        assert https(front, "GET", "/healthz")[0] == 200
    after = [d.requests_logged() for d in front.daphnes]
    assert sum(after) - sum(before) == 8
    assert all(a - b >= 2 for a, b in zip(after, before, strict=True)), (before, after)


def _failed_login(send: Any, *, forged: dict[str, str]) -> int:
    """A sign-in with a wrong password (CSRF cookie and token from the form first); its status."""
    _, headers, page = send("GET", "/accounts/login/", {})
    cookie = headers["set-cookie"].split(";", 1)[0]
    token = page.decode().split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    form = f"csrfmiddlewaretoken={token}&username=proxied-user&password=wrong&otp_token=000000".encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie, **forged}
    status, _, _ = send("POST", "/accounts/login/", headers, form)
    return int(status)


def test_the_audited_address_is_the_client_not_the_proxy_nor_a_forged_header(front: Front, ward_a: Ward) -> None:
    personas.staff("proxied-user", "clinician", [ward_a.code])

    def through_proxy(method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Any:
        return https(front, method, path, headers=headers, body=body, source="127.0.0.3")[:3]

    def direct(method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Any:
        headers = {"Host": "localhost", **headers}
        return plain(front.daphnes[0].port, method, path, headers=headers, body=body, source="127.0.0.4")

    assert _failed_login(through_proxy, forged={"Origin": front.origin, "X-Forwarded-For": SPOOFED}) == 401
    # Straight to a Daphne, from a peer that is no proxy: a forged hop or scheme is not believed.
    assert _failed_login(direct, forged={"X-Forwarded-For": SPOOFED, "X-Forwarded-Proto": "https"}) == 401
    assert [e.source_address for e in _events("login.failure")] == ["127.0.0.3", "127.0.0.4"]


def test_the_rendered_cap_is_perfuses_own(tmp_path: Path) -> None:
    config = site_config(
        FrontConfig(
            listen="127.0.0.1:1",
            upstreams=("127.0.0.1:2",),
            certificate=tmp_path / "c",
            certificate_key=tmp_path / "k",
            state_dir=tmp_path,
        )
    )
    assert f"client_max_body_size {settings.PERFUSE_INGEST_MAX_BYTES};" in config
    assert "ssl_protocols TLSv1.3;" in config
    # Least connections over the Daphnes: the upstream block holds servers, the balancing method
    # and keep-alive, no affinity (no hash, ip_hash or sticky).
    upstream = config.split("upstream perfuse_daphne {", 1)[1].split("}", 1)[0]
    directives = {
        line.split()[0] for line in upstream.splitlines() if line.strip() and not line.strip().startswith("#")
    }
    assert directives == {"server", "least_conn;", "keepalive"}
