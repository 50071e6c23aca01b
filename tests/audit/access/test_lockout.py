"""Brute-force protection: lockout per (account, address) with exponential delay, account- and
address-wide locks that only put the one-time code first (never refuse right credentials),
atomic under concurrency, audited, with a clear message."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access import lockout, views
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


def _wrong_attempts_at_once(username: str, count: int, *, subnet: str) -> list[int]:
    """`count` wrong sign-ins on one account, each from its own address, 8 at a time."""

    def attempt(i: int) -> int:
        try:
            return _post(username, f"wrong-password-{i}", address=f"{subnet}.{i}").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(attempt, range(count)))


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

    codes = _wrong_attempts_at_once("dr-c", 16, subnet="10.2.0")
    assert sorted(codes) == [401] * 3 + [429] * 13
    assert AuditEvent.objects.filter(action="login.failure").count() == 3
    assert AuditEvent.objects.filter(action="login.locked").count() == 13


# ---- lockout without denial of service (issue 9 item 6) ---------------------------------------


def _owner(username: str = "dr-o"):
    factories.ward("icu-l")
    return personas.staff(username, CLINICIAN, ["icu-l"])


@pytest.mark.django_db
def test_an_attacker_locking_the_account_from_one_address_does_not_lock_out_the_owner(tight):
    owner = _owner()
    assert [_post("dr-o", f"guess-{i}", address="203.0.113.7").status_code for i in range(4)] == [401] * 3 + [429]
    r = _post("dr-o", personas.PASSWORD, personas.totp_code(owner), address="10.20.0.5")
    assert r.status_code == 302
    assert AuditEvent.objects.filter(action="login.success", actor_username="dr-o").count() == 1
    # The attacker's own address stays locked for the account, right password or not.
    assert _post("dr-o", personas.PASSWORD, personas.totp_code(owner), address="203.0.113.7").status_code == 429


@pytest.mark.django_db
def test_under_an_account_lock_a_wrong_code_from_a_new_address_never_reaches_the_password(tight, monkeypatch):
    owner = _owner()
    for i in range(3):
        _post("dr-o", f"guess-{i}", address="203.0.113.7")
    checked: list[str] = []
    real_authenticate = views.authenticate

    def counting(request, **credentials):
        checked.append(credentials["username"])
        return real_authenticate(request, **credentials)

    monkeypatch.setattr(views, "authenticate", counting)
    # Even the right password is not checked behind a wrong code; nothing tells the attacker so.
    codes = [_post("dr-o", password, "000000", address=f"198.51.100.{i}").status_code for i, password in
             enumerate(["guess-x", personas.PASSWORD, "guess-y"])]  # fmt: skip
    assert codes == [429, 429, 429] and checked == []
    assert AuditEvent.objects.filter(action="login.locked", detail__lock="second_factor_first").count() == 3
    # Those codes did not throttle the owner's authenticator (django-otp's own delay would).
    assert TOTPDevice.objects.get(user=owner).throttling_failure_count == 0
    assert _post("dr-o", personas.PASSWORD, personas.totp_code(owner), address="198.51.100.77").status_code == 302


@pytest.mark.django_db
def test_a_recovery_code_also_opens_the_second_factor_first_path(tight):
    owner = _owner()
    device = StaticDevice.objects.create(user=owner, name="recovery codes", confirmed=True)
    device.token_set.create(token="rc4k2m9p")
    for i in range(3):
        _post("dr-o", f"guess-{i}", address="203.0.113.7")
    assert _post("dr-o", personas.PASSWORD, "rc4k2m9p", address="10.20.0.6").status_code == 302
    assert not device.token_set.exists()  # used up by the real check, not by the pre-check


@pytest.mark.django_db
def test_a_shared_ward_workstation_locked_by_others_still_lets_a_colleague_in(tight):
    colleague = _owner("nurse-c")
    for i in range(6):  # six accounts' wrong attempts from the ward PC: the address threshold
        assert _post(f"someone-{i}", "wrong-password-x", address="10.30.0.2").status_code == 401
    assert _post("someone-9", "wrong-password-x", address="10.30.0.2").status_code == 429
    r = _post("nurse-c", personas.PASSWORD, personas.totp_code(colleague), address="10.30.0.2")
    assert r.status_code == 302


def test_a_success_elsewhere_does_not_hand_the_attacker_a_fresh_budget(tight):
    for _ in range(3):
        assert lockout.login_gate(username="w", address="a").allowed
    lockout.login_succeeded(username="w", address="b")  # the owner, from another address
    gate = lockout.login_gate(username="w", address="c")
    assert (gate.allowed, gate.verdict) == (False, "second_factor_first")


@pytest.mark.django_db(transaction=True)
def test_thirty_concurrent_wrong_attempts_reach_the_password_five_times():
    factories.ward("icu-l")
    personas.staff("dr-t", CLINICIAN, ["icu-l"])  # default thresholds: 5 per account, 30 per address
    codes = _wrong_attempts_at_once("dr-t", 30, subnet="10.4.0")
    assert sorted(codes) == [401] * 5 + [429] * 25
    assert AuditEvent.objects.filter(action="login.failure").count() == 5
