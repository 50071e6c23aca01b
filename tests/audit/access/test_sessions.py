"""Inactivity expiry (HTTP and WebSocket), stay-signed-in ping, logout closing sockets."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from audit.access.middleware import LAST_ACTIVITY_KEY
from audit.access.roles import CLINICIAN
from audit.models import AuditEvent, StaffSession
from config.asgi import application
from tests import factories, personas
from tests.live_support import HANDSHAKE


@pytest.mark.django_db
def test_idle_session_expires_is_audited_and_pages_ask_to_sign_in(ward_clinician):
    clinician = ward_clinician
    client = personas.verified_client(clinician, idle_for=personas.idle_beyond_limit())
    r = client.post("/accounts/session/ping")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"
    event = AuditEvent.objects.get(action="session.expired")
    assert event.actor_id == clinician.pk
    assert not StaffSession.objects.filter(user=clinician).exists()
    # And the session stays ended: it is not revived by the next request.
    assert client.post("/accounts/session/ping").status_code == 401


@pytest.mark.django_db
def test_activity_keeps_the_session_and_background_requests_do_not(ward_clinician):
    almost = settings.PERFUSE_SESSION_IDLE_SECONDS - 30
    client = personas.verified_client(ward_clinician, idle_for=almost)
    assert client.post("/accounts/session/ping", headers={"X-Perfuse-Background": "1"}).status_code == 200
    assert client.session[LAST_ACTIVITY_KEY] < time.time() - almost + 5  # not refreshed
    assert client.post("/accounts/session/ping").status_code == 200
    assert client.session[LAST_ACTIVITY_KEY] > time.time() - 5  # refreshed by a real interaction


@pytest.mark.django_db
def test_pages_carry_the_expiry_countdown(ward_clinician):
    client = personas.verified_client(ward_clinician)
    html = client.get("/accounts/login/").content.decode()
    assert f'data-idle-seconds="{settings.PERFUSE_SESSION_IDLE_SECONDS}"' in html
    assert 'id="session-warning"' in html and "Stay signed in" in html
    assert "js/session.js" in html
    assert "data-idle-seconds" not in Client().get("/accounts/login/").content.decode()


def _cookie_headers(client: Client) -> list[tuple[bytes, bytes]]:
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [(b"cookie", cookie.encode()), *HANDSHAKE]


@pytest.mark.django_db(transaction=True)
async def test_session_socket_closes_on_logout_everywhere():
    await sync_to_async(factories.ward)("icu-s")
    user = await sync_to_async(personas.staff)("dr-ws", CLINICIAN, ["icu-s"])
    laptop = await sync_to_async(personas.verified_client)(user)
    phone = await sync_to_async(personas.verified_client)(user)
    comm = WebsocketCommunicator(application, "/ws/session", headers=_cookie_headers(phone))
    connected, _ = await comm.connect()
    assert connected
    await sync_to_async(laptop.post)("/accounts/logout/everywhere/")
    assert await comm.receive_json_from(timeout=3) == {"type": "session.revoked"}
    closed = await comm.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4401}
    # Reconnecting with the ended session is refused.
    again = WebsocketCommunicator(application, "/ws/session", headers=_cookie_headers(phone))
    await again.connect()
    assert (await again.receive_output(timeout=3))["code"] == 4401


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("otp, idle", [(False, 0.0), (True, 10_000.0)])
async def test_session_socket_refuses_password_only_and_idle_sessions(otp, idle):
    await sync_to_async(factories.ward)("icu-s")
    user = await sync_to_async(personas.staff)("dr-ws2", CLINICIAN, ["icu-s"])
    client = await sync_to_async(personas.verified_client)(user, otp=otp, idle_for=idle)
    comm = WebsocketCommunicator(application, "/ws/session", headers=_cookie_headers(client))
    await comm.connect()
    assert (await comm.receive_output(timeout=3))["code"] == 4401


async def _open_all(client: Client) -> list[WebsocketCommunicator]:
    """The session socket, the alarm console and a patient chart of one browser session."""
    comms = []
    for path in ("/ws/session", "/ws/alarms/live", "/ws/patients/pt-s/live"):
        comm = WebsocketCommunicator(application, path, headers=_cookie_headers(client))
        connected, _ = await comm.connect()
        assert connected
        if path != "/ws/session":
            assert await comm.receive_output(timeout=3)  # the snapshot
        comms.append(comm)
    return comms


async def _closed_4401(comms: list[WebsocketCommunicator]) -> None:
    for comm in comms:
        output = await comm.receive_output(timeout=3)
        if output.get("type") == "websocket.send":  # /ws/session says why first
            output = await comm.receive_output(timeout=3)
        assert output == {"type": "websocket.close", "code": 4401}


@pytest.mark.django_db(transaction=True)
async def test_logout_closes_the_sockets_of_that_session_only_and_everywhere_closes_all():
    await sync_to_async(factories.ward)("icu-s")
    await sync_to_async(factories.device)(ward_code="icu-s", patient="pt-s")
    user = await sync_to_async(personas.staff)("dr-two", CLINICIAN, ["icu-s"])
    laptop = await sync_to_async(personas.verified_client)(user)
    phone = await sync_to_async(personas.verified_client)(user)
    other = await sync_to_async(personas.verified_client)(user)
    on_laptop, on_phone = await _open_all(laptop), await _open_all(phone)

    await sync_to_async(laptop.post)("/accounts/logout/")
    await _closed_4401(on_laptop)
    for comm in on_phone:
        assert await comm.receive_nothing(timeout=0.3)

    await sync_to_async(other.post)("/accounts/logout/everywhere/")
    await _closed_4401(on_phone)


@pytest.mark.django_db(transaction=True)
async def test_idle_expiry_closes_the_sockets_of_that_session_only():
    await sync_to_async(factories.ward)("icu-s")
    await sync_to_async(factories.device)(ward_code="icu-s", patient="pt-s")
    user = await sync_to_async(personas.staff)("dr-idle", CLINICIAN, ["icu-s"])
    desk = await sync_to_async(personas.verified_client)(user)
    ward_pc = await sync_to_async(personas.verified_client)(user)
    on_desk, on_ward_pc = await _open_all(desk), await _open_all(ward_pc)

    def go_idle() -> None:
        session = desk.session
        session[LAST_ACTIVITY_KEY] = time.time() - personas.idle_beyond_limit()
        session.save()

    await sync_to_async(go_idle)()
    assert (await sync_to_async(desk.post)("/accounts/session/ping")).status_code == 401
    await _closed_4401(on_desk)
    for comm in on_ward_pc:
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_session_socket_notices_idle_expiry_by_itself(settings):
    # No request arrives to notice the expiry, so nobody sends `session.revoked`: the socket's own
    # periodic re-check must end the page, as it does for the data sockets.
    settings.PERFUSE_LIVE_REJOIN_SECONDS = 0.1
    await sync_to_async(factories.ward)("icu-s")
    user = await sync_to_async(personas.staff)("dr-dozes", CLINICIAN, ["icu-s"])
    desk = await sync_to_async(personas.verified_client)(user)
    comm = WebsocketCommunicator(application, "/ws/session", headers=_cookie_headers(desk))
    connected, _ = await comm.connect()
    assert connected

    def go_idle() -> None:
        session = desk.session
        session[LAST_ACTIVITY_KEY] = time.time() - personas.idle_beyond_limit()
        session.save()

    await sync_to_async(go_idle)()
    assert await comm.receive_json_from(timeout=3) == {"type": "session.revoked"}
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}
