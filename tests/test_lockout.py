"""Brute-force protection: per-account and per-address lockout with exponential delay, atomic
under concurrency, audited, with a clear message."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client

from audit.access import lockout
from audit.access.roles import CLINICIAN
from audit.models import AuditEvent
from tests import factories, personas


@pytest.fixture
def tight(settings):
    settings.PERFUSE_LOGIN_ACCOUNT_THRESHOLD = 3
    settings.PERFUSE_LOGIN_ADDRESS_THRESHOLD = 6
    settings.PERFUSE_LOGIN_LOCK_BASE_SECONDS = 30
    settings.PERFUSE_LOGIN_LOCK_MAX_SECONDS = 3600
    return settings


def _post(username: str, password: str, token: str = "000000", address: str = "10.0.0.9"):
    return Client().post(
        "/accounts/login/", {"username": username, "password": password, "otp_token": token}, REMOTE_ADDR=address
    )


@pytest.mark.django_db
def test_account_locks_after_threshold_even_for_the_right_password(tight):
    factories.ward("icu-l")
    user = personas.staff("dr-l", CLINICIAN, ["icu-l"])
    assert [_post("dr-l", "wrong-password-x").status_code for _ in range(3)] == [401, 401, 401]
    r = _post("dr-l", personas.PASSWORD, personas.totp_code(user))
    assert r.status_code == 429
    assert int(r["Retry-After"]) in range(25, 31)
    assert b"Too many failed sign-in attempts" in r.content and b"try again" in r.content
    assert AuditEvent.objects.filter(action="login.failure").count() == 3
    locked = AuditEvent.objects.get(action="login.locked")
    assert locked.actor_username == "dr-l" and locked.outcome == "denied"


def test_delay_doubles_with_each_attempt_after_the_lock(tight, monkeypatch):
    now = [1_000_000.0]
    monkeypatch.setattr(lockout.time, "time", lambda: now[0])
    gates = [lockout.login_gate(username="u", address="a") for _ in range(4)]
    assert [g.allowed for g in gates] == [True, True, True, False]
    assert gates[3].retry_after_seconds == 30
    for expected in (60, 120, 240):
        now[0] += 10_000  # wait out the lock
        assert lockout.login_gate(username="u", address="a").allowed
        assert lockout.login_gate(username="u", address="a").retry_after_seconds == expected


def test_success_forgets_the_account_and_refunds_the_address(tight):
    for _ in range(2):
        assert lockout.login_gate(username="u", address="a").allowed
    lockout.login_succeeded(username="u", address="a")
    assert all(lockout.login_gate(username="u", address="a").allowed for _ in range(2))


def test_address_locks_across_usernames(tight):
    results = [lockout.login_gate(username=f"user{i}", address="10.9.9.9").allowed for i in range(8)]
    assert results == [True] * 6 + [False] * 2
    assert lockout.login_gate(username="user0", address="10.9.9.8").allowed


def test_concurrent_gates_admit_exactly_the_threshold(tight):
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: lockout.login_gate(username="v", address=f"10.1.1.{_}").allowed, range(64)))
    assert results.count(True) == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_http_attempts_cannot_slip_past_the_lock(tight):
    factories.ward("icu-l")
    personas.staff("dr-c", CLINICIAN, ["icu-l"])

    def attempt(i: int) -> int:
        try:
            return _post("dr-c", f"wrong-password-{i}", address=f"10.2.0.{i}").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert sorted(codes) == [401] * 3 + [429] * 13
    assert AuditEvent.objects.filter(action="login.failure").count() == 3
    assert AuditEvent.objects.filter(action="login.locked").count() == 13
