"""In Chromium: sign in with a TOTP code, see the inactivity warning count down, stay signed in;
the page fits a phone screen without horizontal scrolling."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.access.roles import COMPLIANCE
from tests import personas
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def officer_key(db):
    """Created before Playwright starts: its sync API runs an event loop, and the ORM refuses
    to run inside one."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = personas.staff("officer-b", COMPLIANCE)
    return TOTPDevice.objects.get(user=user).bin_key


def test_login_warning_and_stay_signed_in_on_a_phone(live_server, settings, officer_key, browser):
    from django_otp.oath import TOTP

    settings.PERFUSE_SESSION_IDLE_SECONDS = 6
    settings.PERFUSE_SESSION_WARNING_SECONDS = 4
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "officer-b")
    page.fill("input[name=password]", personas.PASSWORD)
    page.fill("input[name=otp_token]", f"{TOTP(officer_key).token():06d}")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/audit/")
    assert page.locator("text=verified").first.is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    warning = page.locator("#session-warning")
    assert warning.is_hidden()
    warning.wait_for(state="visible", timeout=5000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "session-warning-phone.png"))
    with page.expect_response(lambda r: r.url.endswith("/accounts/session/ping")) as ping:
        page.click("#session-stay")
    assert ping.value.status == 200
    warning.wait_for(state="hidden", timeout=3000)
    # Left alone, the page signs itself out when the idle time is over.
    page.wait_for_url(lambda url: "/accounts/login/" in url, timeout=15000)
