"""Authorization matrix: every registered route by every identity (see tests/authz_registry.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from audit.models import AuditEvent
from tests import factories, personas
from tests.authz_registry import ALL_ROLES, Route, all_routes
from tests.fhir_support import valid as fhir_valid
from tests.live_support import HANDSHAKE

pytestmark = pytest.mark.django_db

ROLES = sorted(ALL_ROLES)
# (role, session state); "other_ward" is a verified clinician of another ward.
IDENTITIES = (
    [("anonymous", "none")]
    + [(role, "verified") for role in ROLES]
    + [(role, "password_only") for role in ROLES]
    + [(role, "expired") for role in ROLES]
    + [("clinician", "other_ward")]
)


@dataclass
class World:
    patient: str
    other_patient: str
    key: str
    caller: str = ""  # username of the identity under test ("" when anonymous)

    def placeholders(self) -> dict[str, str]:
        return {"patient": self.patient, "other_patient": self.other_patient, "key": self.key}


@pytest.fixture
def world() -> World:
    factories.ward("ward-a")
    factories.ward("ward-b")
    dev = factories.device("ward-a", patient="pt-a")
    factories.device("ward-b", patient="pt-b")
    return World(patient="pt-a", other_patient="pt-b", key=dev.key_id)


def _client(role: str, state: str) -> Client | None:
    if role == "anonymous":
        return Client()
    wards = ["ward-b"] if state == "other_ward" else (["ward-a"] if role in {"clinician", "oncall"} else [])
    user = personas.staff(f"{role}-{state}", role, wards)
    idle = personas.idle_beyond_limit() if state == "expired" else 0.0
    return personas.verified_client(user, otp=state != "password_only", idle_for=idle)


def _expected(route: Route, role: str, state: str) -> bool:
    if state not in {"verified", "other_ward"} or role not in route.allowed:
        return False
    return not (state == "other_ward" and route.ward_scoped)


def _http(route: Route, client: Client, path: str) -> bool:
    if route.method == "GET":
        response = client.get(path, headers=route.headers)
    elif route.method == "DELETE":
        response = client.delete(path, headers=route.headers)
    elif route.kind == "api":
        response = client.post(path, route.data or {}, content_type="application/json")
    else:
        response = client.post(path, route.data or {})
    status = response.status_code
    assert status < 500, f"{route.name}: {status}"
    if route.kind == "api" and status >= 400:
        assert response.json()["error"]["code"], "API refusals carry a JSON error body"
    if route.kind == "fhir" and status >= 400:
        assert response["Content-Type"] == "application/fhir+json", "FHIR refusals are FHIR JSON"
        assert response.json()["resourceType"] == "OperationOutcome", "FHIR refusals are OperationOutcome"
    if route.kind == "fhir" and response.get("Content-Type") == "application/fhir+json":
        fhir_valid(response.json())  # every FHIR answer, allowed or refused, is valid R4
    if status in (301, 302, 303):
        return not response["Location"].startswith(settings.LOGIN_URL)
    assert status in (200, 400, 401, 403, 404, 429) or 200 <= status < 300, f"{route.name}: {status}"
    return 200 <= status < 300


def _ws(client: Client, path: str) -> bool:
    cookie = client.cookies.get(settings.SESSION_COOKIE_NAME)
    headers = list(HANDSHAKE)
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie.value}".encode()))

    async def attempt() -> bool:
        from config.asgi import application

        comm = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await comm.connect(timeout=3)
        if not connected:
            return False
        if await comm.receive_nothing(timeout=0.3):  # open and quiet
            await comm.disconnect()
            return True
        first = await comm.receive_output(timeout=1)
        if first["type"] == "websocket.close":
            return False
        await comm.disconnect()
        return True

    return async_to_sync(attempt)()


@pytest.mark.parametrize("route", all_routes(), ids=lambda r: r.name)
@pytest.mark.parametrize(("role", "state"), IDENTITIES, ids=lambda v: v)
def test_route_access(world: World, route: Route, role: str, state: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Socket handlers run their queries on this thread (async_to_sync + thread-sensitive
    # database_sync_to_async), inside this test's transaction; channels would close that
    # connection around each query, so keep it open.
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)
    client = _client(role, state)
    assert client is not None
    values: dict[str, Any] = world.placeholders()
    world.caller = "" if role == "anonymous" else f"{role}-{state}"
    if route.setup is not None:
        values.update(route.setup(world))
    path = route.path.format(**values)
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    allowed = _ws(client, path) if route.kind == "ws" else _http(route, client, path)

    expected = _expected(route, role, state)
    assert allowed == expected, f"{route.name} as {role}/{state}: allowed={allowed}, expected {expected}"
    events = list(AuditEvent.objects.filter(id__gt=before).exclude(action="session.expired"))
    if route.audited:
        assert len(events) == 1, f"{route.name} as {role}/{state}: {[e.action for e in events]}"
        assert events[0].outcome == ("allowed" if expected else "denied")
    if route.patient_data:
        about = [e for e in events if e.subject == world.patient]
        assert len(about) == 1, f"{route.name} as {role}/{state}: {[(e.action, e.subject) for e in events]}"
