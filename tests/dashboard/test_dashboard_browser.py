"""The dashboard in headless Debian Chromium against a real Daphne: overview and chart update live
from readings posted through the ingest API, zoom into history keeps a short desaturation,
annotations show; a screenshot of the chart is saved under test-artifacts/."""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from telemetry.models import Annotation, Device, Patient
from tests import factories, personas
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, daphne_server, sign_in, wait_until
from tests.live_support import insert_readings, persona

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def daphne() -> Iterator[str]:
    """Daphne serving the test database (this transactional test commits its data)."""
    with daphne_server("daphne.log") as url:
        yield url


def _post(url: str, dev: factories.SimDevice, readings: list[dict], firmware: str) -> dict:
    body = factories.batch_body(dev, readings, firmware=firmware)
    request = urllib.request.Request(  # noqa: S310
        url + "/api/v1/ingest/readings",
        data=body,
        headers={"Content-Type": "application/json", **dev.sign(body)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return orjson.loads(response.read())


@pytest.fixture(autouse=True)
def _artifacts() -> None:
    (ROOT / "test-artifacts").mkdir(exist_ok=True)


def test_overview_and_chart_live_history_and_annotations(daphne):
    from playwright.sync_api import sync_playwright

    ward = factories.ward("icu-web")
    dev = factories.device(ward.code, "lumee-web", patient="p-web")
    patient = Patient.objects.get(pseudonym="p-web")
    device = Device.objects.get(device_id="lumee-web")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # A day of history every 10 s at 64 % (more rows than one raw trace holds), with a 20-second
    # desaturation to 28 % ten hours ago.
    dip = now - dt.timedelta(hours=10)
    history = [(now - dt.timedelta(hours=24) + dt.timedelta(seconds=10 * i), 64.0) for i in range(24 * 360 - 60)]
    history = [(t, 28.0 if dip <= t < dip + dt.timedelta(seconds=20) else v) for t, v in history]
    # Five minutes of motion artefact (signal quality 0.2) five hours ago, instead of those readings.
    artefact = now - dt.timedelta(hours=5, seconds=5)
    insert_readings(
        patient,
        device,
        [(artefact + dt.timedelta(seconds=10 * i), 50.0) for i in range(30)],
        quality=0.2,
        first_seq=500_000,
    )
    history = [(t, v) for t, v in history if not artefact <= t < artefact + dt.timedelta(minutes=5)]
    insert_readings(patient, device, history)
    Annotation.objects.create(
        patient=patient, device=device, kind="calibration", time=now - dt.timedelta(hours=3), text="Calibration c1 → c2"
    )
    clinician = persona("clinician", ward)
    username = clinician.user.username
    code = personas.totp_code(clinician.user)  # the ORM may not run inside Playwright's event loop

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # Sign in with password and a TOTP code; the login lands on the ward overview.
        sign_in(page, daphne, username, code)

        # Ward overview: the card appears and takes a new reading without reload.
        page.wait_for_selector("#live-status[data-state=live]")
        card = page.locator(".ward-card[data-pseudonym=p-web]")
        card.wait_for()
        _post(daphne, dev, [factories.reading(100_000, value=41.2)], firmware="fw-1.0")
        wait_until(page, "document.querySelector('.ward-card[data-pseudonym=p-web] .value').textContent === '41.2'")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
        page.screenshot(path=str(ROOT / "test-artifacts" / "overview-phone.png"))

        # Patient chart: live mode, a reading posted through the ingest API appears without reload.
        page.goto(daphne + "/patients/p-web/")
        page.wait_for_selector("#live-status[data-state=live]")
        wait_until(page, "document.getElementById('chart').dataset.mode === 'live'")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # phone: no sideways scroll
        loads = page.evaluate("window.perfuseChart.state.loads")
        # Seqs 100001-100004 are stored but never sent as a frame (a lost frame, as far as the
        # browser can tell); the next frame's seq range shows the hole and the chart refetches it.
        recent = [(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=0.5 - i / 10), 50.0 + i / 10) for i in range(1, 5)]
        with ThreadPoolExecutor(1) as pool:  # the ORM may not run inside Playwright's event loop
            pool.submit(insert_readings, patient, device, recent, first_seq=100_001).result()
        _post(daphne, dev, [factories.reading(100_005, value=33.3)], firmware="fw-1.0")
        wait_until(page, "[...window.perfuseChart.state.live.values()].some(p => p.value === 33.3)")
        assert page.evaluate("window.perfuseChart.state.loads") == loads  # came over the socket, not a reload
        wait_until(page, "[...window.perfuseChart.state.live.values()].some(p => p.value === 50.2)")

        # A firmware change becomes an annotation that arrives live and is listed.
        _post(daphne, dev, [factories.reading(100_006, value=34.0)], firmware="fw-2.0")
        page.wait_for_selector("#annotation-list .mark-firmware")
        assert "fw-1.0 → fw-2.0" in page.inner_text("#annotation-list")

        # Zoom out to the last 24 h: history mode at 1-minute buckets; the dip survives in the envelope.
        page.evaluate(
            "([a, b]) => Plotly.relayout(document.getElementById('chart'), {'xaxis.range': [a, b]})",
            [(now - dt.timedelta(hours=24)).isoformat(), now.isoformat()],
        )
        wait_until(page, "document.getElementById('chart').dataset.mode === 'history'")
        wait_until(page, "document.getElementById('chart').dataset.resolution === '1m'")
        assert page.evaluate("Math.min(...window.perfuseChart.state.hist.points.map(p => p.min))") == 28.0
        assert "Calibration c1 → c2" in page.inner_text("#annotation-list")
        shaded = page.evaluate(
            "document.getElementById('chart').layout.shapes.filter(s => s.fillcolor === 'rgba(128,128,128,0.22)')"
            ".map(s => [Date.parse(s.x0), Date.parse(s.x1)])"
        )
        assert len(shaded) == 1  # the low-quality stretch, and nothing else
        assert abs(shaded[0][0] / 1000 - artefact.timestamp()) < 120
        assert page.is_visible("#go-live")
        page.set_viewport_size({"width": 1280, "height": 800})
        page.wait_for_timeout(300)
        page.screenshot(path=str(ROOT / "test-artifacts" / "chart-history.png"), full_page=True)

        # One click back to live.
        page.click("#go-live")
        wait_until(page, "document.getElementById('chart').dataset.mode === 'live'")
        page.screenshot(path=str(ROOT / "test-artifacts" / "chart-live.png"), full_page=True)
        assert errors == []
        browser.close()
