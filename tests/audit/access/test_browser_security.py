"""In Debian Chromium against a real Daphne: a revealed identity never outlives the clinician who
asked for it, and every main page runs under the Content-Security-Policy without a violation
(no inline script, event handler or style; the header on every page)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from alerts.engine import AlarmProcessor
from alerts.models import Alarm
from telemetry.models import Device, Patient, PatientIdentity
from tests import factories, personas
from tests.alarm_factories import insert
from tests.browser import CHROMIUM, CHROMIUM_ARGS, daphne_server, sign_in, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NAME = "Ada Example"
# Collects what Chromium reports, before any page script runs (init scripts are not subject to the
# page's policy).
_WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(
    e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' ' + e.sourceFile + ':' + e.lineNumber));
"""
# Inline code in the page as it stands (style attributes are left to the violation reports: Plotly
# sets them from script, which the policy allows, while the server's HTML must carry none).
_INLINE_CODE = """
[...document.querySelectorAll('*')].flatMap((el) => [...el.attributes]
    .filter((a) => a.name.startsWith('on')).map((a) => el.tagName + '[' + a.name + ']'))
  .concat([...document.scripts].filter((s) => !s.src && s.type !== 'application/json').map(() => 'inline <script>'))
"""


def _directives(policy: str) -> dict[str, list[str]]:
    parts = [d.split() for d in policy.split(";") if d.strip()]
    return {p[0]: p[1:] for p in parts}


_STORED = "JSON.stringify({...sessionStorage}) + JSON.stringify({...localStorage})"


@pytest.fixture
def daphne() -> Iterator[str]:
    """Daphne serving the test database (this transactional test commits its data)."""
    with daphne_server("daphne-security.log") as url:
        yield url


@pytest.fixture
def ward_patient() -> dict[str, Any]:
    ward = factories.ward("icu-sec")
    dev = factories.device(ward.code, "lumee-sec", patient="pt-sec")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-sec")
    PatientIdentity.objects.create(patient=patient, name=NAME, mrn="MRN-SEC", date_of_birth=dt.date(1950, 1, 2))
    return {"ward": ward, "patient": patient, "device": Device.objects.get(device_id=dev.device_id)}


@pytest.fixture
def chromium() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def codes(ward_patient: dict[str, Any]) -> dict[str, str]:
    """Two clinicians of the patient's ward and a TOTP code each (made before Playwright starts:
    the ORM refuses to run inside its event loop)."""
    users = [personas.staff(name, "clinician", ["icu-sec"]) for name in ("clin-first", "clin-second")]
    return {user.username: personas.totp_code(user) for user in users}


def test_a_revealed_name_is_gone_for_the_next_clinician(daphne, codes, chromium):
    page = chromium.new_context().new_page()  # one tab, shared by both users as at a ward workstation
    sign_in(page, daphne, "clin-first", codes["clin-first"])
    page.goto(daphne + "/patients/pt-sec/")
    page.once("dialog", lambda dialog: dialog.accept("bedside identity check"))
    page.click("#reveal-name")
    wait_until(page, f"document.getElementById('patient-name').textContent.includes({NAME!r})")
    assert NAME not in page.evaluate(_STORED)

    page.click("form[action='/accounts/logout/'] button")
    page.wait_for_url(lambda url: "/accounts/login/" in url)
    assert NAME not in page.evaluate(_STORED)

    sign_in(page, daphne, "clin-second", codes["clin-second"])
    page.wait_for_selector(".ward-card[data-pseudonym=pt-sec]")
    assert NAME not in page.inner_text("#cards")
    page.goto(daphne + "/patients/pt-sec/")
    page.wait_for_selector("#live-status[data-state=live]")
    assert page.inner_text("#patient-name") == "pt-sec"
    assert NAME not in page.content() and NAME not in page.evaluate(_STORED)


def _alarm(ward_patient: dict[str, Any]) -> Alarm:
    now = dt.datetime.now(dt.UTC)
    samples = [(now - dt.timedelta(seconds=31 - i), 33.0, 0.95) for i in range(32)]
    AlarmProcessor().process(insert(ward_patient["patient"], ward_patient["device"], samples), now=now)
    return Alarm.objects.get(patient=ward_patient["patient"], kind="low")


def _session(user: Any) -> str:
    return personas.verified_client(user).cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture
def visits(ward_patient: dict[str, Any]) -> dict[str, list[str]]:
    """Session key → the pages that role opens; and a user who has not enrolled an authenticator."""
    alarm = _alarm(ward_patient)
    enrolling = personas.staff("clin-new", "clinician", ["icu-sec"])
    TOTPDevice.objects.filter(user=enrolling).delete()  # first sign-in: the enrolment page with its QR code
    return {
        _session(personas.staff("clin-csp", "clinician", ["icu-sec"])): [
            "/",
            "/patients/pt-sec/",
            "/alarms/",
            f"/alarms/{alarm.pk}/",
            "/alarms/fatigue/",
            "/accounts/",
        ],
        _session(personas.staff("admin-csp", "admin")): ["/alarms/rules/", "/devices/", "/audit/break-glass/"],
        _session(personas.staff("comp-csp", "compliance")): [
            "/audit/",
            "/audit/patients/pt-sec/",
            "/audit/patients/pt-sec/disclosures/",
        ],
    }


def test_main_pages_run_under_the_csp_without_violations(daphne, visits, chromium):
    problems: list[str] = []

    def watch(context: Any) -> Any:
        context.add_init_script(_WATCH_CSP)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        return page

    def check(page: Any, path: str) -> None:
        response = page.goto(daphne + path) if path else None
        if response is not None:
            assert response.status == 200, path
            policy = _directives(response.headers.get("content-security-policy", ""))
            assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"], path
            assert policy["style-src"] == ["'self'"], path  # <style> elements and stylesheets
        page.wait_for_load_state("networkidle")
        problems.extend(f"{path}: {v}" for v in page.evaluate("window.__csp"))
        problems.extend(f"{path}: {v}" for v in page.evaluate(_INLINE_CODE))

    for session_key, paths in visits.items():
        context = chromium.new_context(viewport={"width": 1280, "height": 800})
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session_key, "url": daphne}])
        page = watch(context)
        for path in paths:
            check(page, path)
        if "/patients/pt-sec/" in paths:  # the chart drew its plot and opened its socket under the policy
            page.goto(daphne + "/patients/pt-sec/")
            page.wait_for_selector("#live-status[data-state=live]")
            page.wait_for_selector("#chart .main-svg")
            check(page, "")
        context.close()

    page = watch(chromium.new_context())
    check(page, "/accounts/login/")
    page.fill("[name=username]", "clin-new")
    page.fill("[name=password]", personas.PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/enroll/" in url)
    check(page, "")
    assert page.locator(".qr svg").is_visible()
    assert problems == []
