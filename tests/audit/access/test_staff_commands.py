"""add_staff and seed_demo: output format per the contract, idempotence."""

from __future__ import annotations

import base64
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.policy import user_role
from telemetry.models import Ward
from tests import factories

pytestmark = pytest.mark.django_db


def _add_staff(monkeypatch, *args: str, password: str = "a-long-enough-pass-42") -> str:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    out = io.StringIO()
    call_command("add_staff", *args, stdout=out)
    return out.getvalue()


def test_add_staff_json_is_exactly_the_contract(monkeypatch):
    factories.ward("icu-x")
    out = _add_staff(monkeypatch, "nurse1", "--role", "oncall", "--ward", "icu-x", "--password-stdin", "--json")
    data = json.loads(out)
    assert set(data) == {"username", "role", "totp_secret"}
    assert data["username"] == "nurse1" and data["role"] == "oncall"
    key = base64.b32decode(data["totp_secret"])
    device = TOTPDevice.objects.get(user__username="nurse1")
    assert device.confirmed and device.bin_key == key
    # The printed secret really signs in.
    r = Client().post(
        "/accounts/login/",
        {"username": "nurse1", "password": "a-long-enough-pass-42", "otp_token": f"{TOTP(key).token():06d}"},
    )
    assert r.status_code == 302
    assert user_role(device.user) == "oncall"
    assert list(device.user.staff.wards.values_list("code", flat=True)) == ["icu-x"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["u1", "--role", "wizard", "--password-stdin"], "invalid choice"),
        (["u1", "--role", "clinician", "--ward", "nowhere", "--password-stdin"], "unknown ward"),
        (["u1", "--role", "clinician"], "--password-stdin is required"),
    ],
)
def test_add_staff_refuses_bad_input(monkeypatch, args, message):
    with pytest.raises((CommandError, SystemExit)) as exc:
        _add_staff(monkeypatch, *args)
    assert message in str(exc.value) or isinstance(exc.value, SystemExit)


def test_add_staff_enforces_password_policy(monkeypatch):
    with pytest.raises(CommandError, match="too short"):
        _add_staff(monkeypatch, "u2", "--role", "admin", "--password-stdin", password="short")


def test_seed_demo_is_idempotent_and_prints_the_same_secrets():
    first, second = io.StringIO(), io.StringIO()
    call_command("seed_demo", stdout=first)
    call_command("seed_demo", stdout=second)
    assert first.getvalue() == second.getvalue()
    for role in ("clinician", "oncall", "compliance", "device_admin", "admin"):
        assert role in first.getvalue()
    assert "otpauth://totp/" in first.getvalue()
    assert TOTPDevice.objects.count() == 6
    clinician = TOTPDevice.objects.get(user__username="clinician").user
    assert list(clinician.staff.wards.values_list("code", flat=True)) == ["icu-demo"]
    assert set(Ward.objects.values_list("code", flat=True)) >= {"icu-demo", "ward-b"}


def test_deactivate_staff_ends_sessions_and_refuses_sign_in():
    from audit.models import AuditEvent
    from tests import personas

    factories.ward("icu-d")
    user = personas.staff("leaver", "clinician", ["icu-d"])
    client = personas.verified_client(user)
    assert client.post("/accounts/session/ping").status_code == 200
    out = io.StringIO()
    call_command("deactivate_staff", "leaver", stdout=out)
    assert "1 session(s) ended" in out.getvalue()
    assert client.post("/accounts/session/ping").status_code == 401
    r = Client().post(
        "/accounts/login/",
        {"username": "leaver", "password": personas.PASSWORD, "otp_token": personas.totp_code(user)},
    )
    assert r.status_code == 401
    assert AuditEvent.objects.filter(action="staff.deactivated").count() == 1
    with pytest.raises(CommandError, match="unknown user"):
        call_command("deactivate_staff", "nobody")
