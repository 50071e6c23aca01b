"""The ward workflow in headless Debian Chromium against a real Daphne: a charge nurse admits a
patient to a bed, scans a device id into the device field (typed keys and Enter, as a barcode
scanner sends them), confirms, sees readings arrive on an open overview, discharges; the open
overview shows each step live (card with bed and device, then the card gone) and the open chart
says the patient was discharged instead of reconnecting. Screenshots go to test-artifacts/."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from telemetry.models import Patient
from tests import factories, personas
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, daphne_server, off_loop, sign_in, wait_until
from tests.live_support import persona

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def daphne() -> Iterator[str]:
    with daphne_server("daphne-flow.log") as url:
        yield url


def _post(url: str, dev: factories.SimDevice, value: float) -> dict[str, object]:
    body = factories.batch_body(dev, [factories.reading(1, value=value)])
    request = urllib.request.Request(  # noqa: S310
        url + "/api/v1/ingest/readings",
        data=body,
        headers={"Content-Type": "application/json", **dev.sign(body)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer: dict[str, object] = orjson.loads(response.read())
        return answer


def test_admit_associate_by_scanning_then_discharge_live(daphne: str) -> None:
    from playwright.sync_api import sync_playwright

    ward = factories.ward("icu-flow")
    dev = factories.device(ward.code, device_id="lumee-scan-1")
    nurse = persona("oncall", ward)
    username, code = nurse.user.username, personas.totp_code(nurse.user)
    (ROOT / "test-artifacts").mkdir(exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        overview = context.new_page()
        errors: list[str] = []
        overview.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_in(overview, daphne, username, code)  # the nurse's home: the ward overview
        overview.wait_for_selector("#live-status[data-state=live]")
        assert overview.is_visible("#empty-ward")

        # Another tab: admit to bed 7, with a confirmation step.
        flow = context.new_page()
        flow.on("pageerror", lambda exc: errors.append(str(exc)))
        flow.goto(daphne + "/ward/flow/")
        flow.fill("#admit-form [name=bed]", "7")
        flow.click("#admit-form button[type=submit]")
        flow.wait_for_selector("#confirm-button")
        assert "Admit a new patient to icu-flow?" in flow.inner_text("h1")
        flow.click("#confirm-button")
        flow.wait_for_selector(".messages .success")
        row = flow.locator("tr[data-pseudonym]")
        pseudonym = row.get_attribute("data-pseudonym")
        assert pseudonym and "bed 7" in row.inner_text()
        card = f".ward-card[data-pseudonym={pseudonym}]"
        overview.wait_for_selector(card)  # live: the admission reached the open overview
        assert overview.inner_text(card + " .bed") == "Bed 7"

        # The scanner: the id typed key by key into the device field, then Enter.
        scan = row.locator(".flow-associate input.scan")
        scan.click()
        flow.keyboard.type("lumee-scan-1")
        flow.keyboard.press("Enter")
        flow.wait_for_selector("#confirm-button")
        assert f"Associate lumee-scan-1 with {pseudonym}?" in flow.inner_text("h1")
        flow.click("#confirm-button")
        flow.wait_for_selector(".messages .success")
        assert "lumee-scan-1" in flow.locator(f"tr[data-pseudonym={pseudonym}]").inner_text()
        wait_until(overview, f"document.querySelector('{card}').title === 'Devices: lumee-scan-1'")

        # Readings now reach the card; the chart opens live.
        assert _post(daphne, dev, 57.5)["accepted"] == 1
        wait_until(overview, f"document.querySelector('{card} .value').textContent === '57.5'")
        overview.screenshot(path=str(ROOT / "test-artifacts" / "flow-overview.png"))
        chart = context.new_page()
        chart.goto(f"{daphne}/patients/{pseudonym}/")
        chart.wait_for_selector("#live-status[data-state=live]")

        # Discharge, confirmed: the card leaves the overview, the chart says so and stays closed.
        flow.click(f"tr[data-pseudonym={pseudonym}] .flow-discharge button")
        flow.wait_for_selector("#confirm-button")
        flow.screenshot(path=str(ROOT / "test-artifacts" / "flow-confirm-discharge.png"))
        flow.click("#confirm-button")
        flow.wait_for_selector(".messages .success")
        wait_until(overview, f"document.querySelector('{card}') === null")
        assert overview.is_visible("#empty-ward")
        chart.wait_for_selector("#live-status[data-state=discharged]")
        assert chart.inner_text("#live-status") == "patient discharged"
        # Opened afterwards, the chart shows the stay's history and no live feed.
        chart.reload()
        wait_until(chart, "document.getElementById('chart').dataset.mode === 'history'")
        assert chart.inner_text("#live-status") == "patient discharged"
        wait_until(chart, "window.perfuseChart.state.hist && window.perfuseChart.state.hist.points.length === 1")
        patient = off_loop(lambda: Patient.objects.get(pseudonym=pseudonym))
        assert patient.discharged_at is not None and patient.bed == "7"
        assert errors == []
        browser.close()
