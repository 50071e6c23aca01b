"""Sign-in with password + TOTP in one form, enrollment, recovery codes, logout."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.roles import CLINICIAN
from audit.models import AuditEvent, StaffSession
from tests import factories, personas

pytestmark = pytest.mark.django_db


@pytest.fixture
def clinician():
    factories.ward("icu-a")
    return personas.staff("dr-a", CLINICIAN, ["icu-a"])


def _login(client: Client, username: str, password: str, token: str, **extra):
    return client.post(
        "/accounts/login/",
        {"username": username, "password": password, "otp_token": token},
        REMOTE_ADDR="10.1.2.3",
        **extra,
    )


def _is_verified(client: Client) -> bool:
    r = client.post("/accounts/session/ping")
    return r.status_code == 200


def test_password_and_totp_in_one_form_gives_verified_session(clinician):
    client = Client()
    r = _login(client, "dr-a", personas.PASSWORD, personas.totp_code(clinician), HTTP_USER_AGENT="pytest-ua")
    assert r.status_code == 302 and r["Location"] == "/"
    assert _is_verified(client)
    event = AuditEvent.objects.filter(action="login.success").get()
    assert (event.actor_username, event.role, event.source_address, event.user_agent) == (
        "dr-a",
        CLINICIAN,
        "10.1.2.3",
        "pytest-ua",
    )
    assert event.detail == {"factor": "totp"}
    assert StaffSession.objects.filter(user=clinician).count() == 1


@pytest.mark.parametrize("password, token_ok", [("wrong-password-1", True), (personas.PASSWORD, False)])
def test_wrong_factor_is_refused_audited_and_not_disclosed(clinician, password, token_ok):
    client = Client()
    token = personas.totp_code(clinician) if token_ok else "000000"
    r = _login(client, "dr-a", password, token)
    assert r.status_code == 401
    assert b"Username, password or code is not right." in r.content
    assert not _is_verified(client)
    event = AuditEvent.objects.get(action="login.failure")
    assert event.outcome == "denied"
    assert event.detail["reason"] == ("bad_credentials" if token_ok else "bad_otp")


def test_unknown_user_is_a_failure_not_an_error():
    r = _login(Client(), "nobody", "whatever-pass", "123456")
    assert r.status_code == 401
    assert AuditEvent.objects.filter(action="login.failure", actor_username="nobody").count() == 1


def test_new_user_enrolls_with_qr_then_gets_recovery_codes_that_work_once(clinician):
    TOTPDevice.objects.filter(user=clinician).delete()
    client = Client()
    r = _login(client, "dr-a", personas.PASSWORD, "")
    assert r.status_code == 302 and r["Location"] == "/accounts/enroll/"
    assert not _is_verified(client), "a password alone must not give a session"
    page = client.get("/accounts/enroll/")
    assert page.status_code == 200
    assert b"<svg" in page.content and b"<img" not in page.content  # generated locally, inline
    device = TOTPDevice.objects.get(user=clinician, confirmed=False)
    r = client.post("/accounts/enroll/", {"otp_token": "000000"})
    assert r.status_code == 400 and not _is_verified(client)
    device.refresh_from_db()
    device.throttle_reset()  # django-otp delays the next try after a wrong code; not under test here
    code = f"{TOTP(device.bin_key).token():06d}"
    r = client.post("/accounts/enroll/", {"otp_token": code})
    assert r.status_code == 200
    codes = re.findall(r"<li>([a-z0-9]+)</li>", r.content.decode())
    assert len(codes) == 10
    assert _is_verified(client)
    assert AuditEvent.objects.filter(action="mfa.enrolled", actor_username="dr-a").count() == 1
    # A recovery code works in place of a TOTP code, once.
    other = Client()
    assert _login(other, "dr-a", personas.PASSWORD, codes[0]).status_code == 302
    assert _is_verified(other)
    assert AuditEvent.objects.filter(action="login.success").last().detail["factor"] == "recovery_code"
    assert not StaticToken.objects.filter(token=codes[0]).exists()
    assert _login(Client(), "dr-a", personas.PASSWORD, codes[0]).status_code == 401


# The administrator's home was the break-glass form (the first page of the menu they could use);
# it is the on-call roster now (issue 13.3: a sensible administrator's home, not emergency access).
ROLE_HOMES = [
    ("clinician", "/"),
    ("oncall", "/"),
    ("compliance", "/audit/"),
    ("device_admin", "/devices/"),
    ("admin", "/alarms/oncall/"),
]


@pytest.mark.parametrize("role, home", ROLE_HOMES)
def test_each_role_lands_on_its_home(role, home):
    user = personas.staff(f"u-{role}", role)
    r = _login(Client(), user.username, personas.PASSWORD, personas.totp_code(user))
    assert r.status_code == 302 and r["Location"] == home


@pytest.mark.parametrize("role, home", ROLE_HOMES)
def test_no_role_lands_on_a_refusal_from_the_site_root(role, home):
    """Sent to sign in from the bare site (next=/), every role lands on its own page, and that
    page serves it (no 403 landing); the brand link leads there too."""
    factories.ward("icu-a")
    user = personas.staff(f"r-{role}", role, ["icu-a"] if role in {"clinician", "oncall"} else [])
    client = Client()
    bounced = client.get("/")
    assert bounced.status_code == 302 and bounced["Location"].startswith("/accounts/login/")
    r = client.post(
        "/accounts/login/?next=/",
        {"username": user.username, "password": personas.PASSWORD, "otp_token": personas.totp_code(user), "next": "/"},
    )
    assert r.status_code == 302 and r["Location"] == home
    page = client.get(home)
    assert page.status_code == 200
    assert f'<a class="brand" href="{home}">'.encode() in page.content


def test_a_deeper_next_page_is_still_honoured(clinician):
    client = Client()
    r = client.post(
        "/accounts/login/",
        {
            "username": "dr-a",
            "password": personas.PASSWORD,
            "otp_token": personas.totp_code(clinician),
            "next": "/alarms/",
        },
    )
    assert r.status_code == 302 and r["Location"] == "/alarms/"


def test_account_page_lists_sessions(clinician):
    client = personas.verified_client(clinician, HTTP_USER_AGENT="Phone browser")
    page = client.get("/accounts/").content.decode()
    assert "(this one)" in page and "Log out everywhere" in page
    assert Client().get("/accounts/")["Location"].startswith("/accounts/login/")


def test_enrollment_page_needs_a_password_first():
    assert Client().get("/accounts/enroll/")["Location"] == "/accounts/login/"


def test_logout_is_post_only_and_audited(clinician):
    client = personas.verified_client(clinician)
    assert client.get("/accounts/logout/").status_code == 405
    r = client.post("/accounts/logout/")
    assert r.status_code == 302
    assert not _is_verified(client)
    assert AuditEvent.objects.filter(action="logout", actor_id=clinician.pk).count() == 1
    assert not StaffSession.objects.filter(user=clinician).exists()


def test_logout_everywhere_ends_every_session(clinician):
    laptop, phone = personas.verified_client(clinician), personas.verified_client(clinician)
    assert _is_verified(laptop) and _is_verified(phone)
    laptop.post("/accounts/logout/everywhere/")
    assert not _is_verified(laptop) and not _is_verified(phone)
    event = AuditEvent.objects.get(action="logout.everywhere")
    assert event.detail["sessions"] == 2


def test_next_parameter_only_redirects_on_site(clinician):
    r = _login(Client(), "dr-a", personas.PASSWORD, personas.totp_code(clinician), data_next="x")
    assert r["Location"] == "/"
    client = Client()
    r = client.post(
        "/accounts/login/",
        {
            "username": "dr-a",
            "password": personas.PASSWORD,
            "otp_token": personas.totp_code(clinician, offset_steps=1),
            "next": "https://evil.example/",
        },
    )
    assert r.status_code == 302 and r["Location"] == "/"
