"""The alarm console in headless Debian Chromium against a real Daphne: an on-call nurse sees a
new alarm appear live, acknowledges it with a note, and a colleague's open console shows the
acknowledgement within a second."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from alerts.engine import AlarmProcessor
from alerts.models import Alarm
from telemetry.models import Device, Patient
from tests import factories, personas
from tests.alarm_factories import insert
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, daphne_server, off_loop

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def daphne() -> Iterator[str]:
    """Daphne serving the test database (this transactional test commits its data)."""
    with daphne_server("daphne-alarms.log") as url:
        yield url


def _page(browser: Any, url: str, session_key: str) -> Any:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": session_key, "url": url}])
    page = context.new_page()
    page.goto(url + "/alarms/")
    page.wait_for_selector("#live-status[data-state=live]", timeout=10000)
    return page


def _desaturate(patient: Patient, device: Device) -> Alarm:
    now = dt.datetime.now(dt.UTC)
    samples = [(now - dt.timedelta(seconds=31 - i), 33.0, 0.95) for i in range(32)]
    AlarmProcessor().process(insert(patient, device, samples), now=now)
    return Alarm.objects.get(patient=patient, kind="low")


def test_oncall_sees_new_alarm_live_and_acknowledges_it(daphne: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ward = factories.ward("icu-ui")
    dev = factories.device(ward.code, "lumee-ui", patient="pt-ui")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-ui")
    device = Device.objects.get(device_id=dev.device_id)
    nurse = personas.staff("oncall-ui", "oncall", [ward.code])
    colleague = personas.staff("clin-ui", "clinician", [ward.code])
    nurse_key = personas.verified_client(nurse).cookies[settings.SESSION_COOKIE_NAME].value
    colleague_key = personas.verified_client(colleague).cookies[settings.SESSION_COOKIE_NAME].value

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = _page(browser, daphne, nurse_key)
            other = _page(browser, daphne, colleague_key)
            expect(page.locator("#alarm-empty")).to_be_visible()

            # A 31-second desaturation to 33 % arrives; the engine raises the low alarm.
            alarm = off_loop(_desaturate, patient, device)

            row = page.locator(f"tr[data-alarm='{alarm.pk}']")
            expect(row).to_be_visible(timeout=5000)
            expect(row).to_contain_text("pt-ui")
            expect(row).to_contain_text("Tissue O2 low")
            expect(row.locator(".prio")).to_have_text("medium")
            assert row.locator("a", has_text="pt-ui").get_attribute("href").startswith("/patients/pt-ui/?at=")
            expect(other.locator(f"tr[data-alarm='{alarm.pk}']")).to_be_visible(timeout=5000)

            row.locator("input[aria-label='acknowledgement note']").fill("sensor repositioned")
            row.locator("button.ack").click()
            expect(row).to_contain_text("acknowledged by oncall-ui", timeout=5000)
            # Every open console shows it within a second.
            expect(other.locator(f"tr[data-alarm='{alarm.pk}']")).to_contain_text(
                "acknowledged by oncall-ui", timeout=1000
            )
            expect(other.locator(f"tr[data-alarm='{alarm.pk}']")).to_contain_text("sensor repositioned")
            page.screenshot(path=str(ROOT / "test-artifacts" / "alarm-console.png"))
        finally:
            browser.close()

    alarm.refresh_from_db()
    assert (alarm.state, alarm.acknowledged_by.username, alarm.ack_note) == (
        "acknowledged", "oncall-ui", "sensor repositioned",
    )  # fmt: skip
