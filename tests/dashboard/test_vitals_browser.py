"""The other vital signs in headless Debian Chromium against a real Daphne: the chart draws SpO2
and battery traces in their own panels beside tissue O2, live and after a zoom into history (with
the min/max envelope), shades the SpO2 alarm bands on the SpO2 axis, and the ward card shows SpO2
beside tissue O2, live."""

from __future__ import annotations

import datetime as dt

import pytest

from telemetry.models import Device, Patient
from tests import factories, personas
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, daphne_server, sign_in, wait_until
from tests.dashboard.test_dashboard_browser import _post
from tests.live_support import insert_readings, persona

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The y values of the chart's traces for one metric (traces carry their metric as `meta`).
TRACE_VALUES = (
    "(metric) => document.getElementById('chart').data"
    ".filter(t => t.meta === metric).flatMap(t => (t.y || []).filter(v => v !== null))"
)


def test_chart_and_card_show_spo2_and_battery_beside_tissue_o2():
    from playwright.sync_api import sync_playwright

    ward = factories.ward("icu-vit")
    dev = factories.device(ward.code, "lumee-vit", patient="p-vit")
    patient = Patient.objects.get(pseudonym="p-vit")
    device = Device.objects.get(device_id="lumee-vit")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # A day of readings: tissue O2 and SpO2 every 10 s, the battery every minute; a 20-s SpO2 dip
    # to 82 % eight hours ago.
    dip = now - dt.timedelta(hours=8)
    ticks = [now - dt.timedelta(hours=24) + dt.timedelta(seconds=10 * i) for i in range(24 * 360 - 6)]
    insert_readings(patient, device, [(t, 63.0) for t in ticks])
    spo2 = [(t, 82.0 if dip <= t < dip + dt.timedelta(seconds=20) else 96.0) for t in ticks]
    insert_readings(patient, device, spo2, metric="spo2", first_seq=200_000, quality=0.9)
    battery = [(now - dt.timedelta(minutes=24 * 60 - i), 4000.0 - i / 10) for i in range(24 * 60 - 1)]
    insert_readings(patient, device, battery, metric="battery", first_seq=400_000)
    clinician = persona("clinician", ward)
    code = personas.totp_code(clinician.user)

    with daphne_server("daphne-vitals.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_in(page, url, clinician.user.username, code)

        # The ward card lists the newest SpO2 beside tissue O2, and takes a new one live.
        page.wait_for_selector("#live-status[data-state=live]")
        vital = ".ward-card[data-pseudonym=p-vit] .vital-spo2"
        wait_until(page, f"document.querySelector('{vital}')?.textContent === 'SpO₂ 96 %'")
        _post(url, dev, [factories.reading(900_001, metric="spo2", value=93.0, unit="%")], firmware="fw-1.0")
        wait_until(page, f"document.querySelector('{vital}').textContent === 'SpO₂ 93 %'")

        # The chart: a panel per metric, each with its traces, on one time axis.
        page.goto(url + "/patients/p-vit/")
        page.wait_for_selector("#live-status[data-state=live]")
        wait_until(page, "document.getElementById('chart').dataset.mode === 'live'")
        for metric in ("tissue_o2", "spo2", "battery"):
            wait_until(page, f"({TRACE_VALUES})('{metric}').length > 0")
        assert page.evaluate(f"({TRACE_VALUES})('spo2')").count(96.0) > 0
        layout = page.evaluate("document.getElementById('chart').layout")
        titles = {
            key: axis["title"]["text"] for key, axis in layout.items() if key.startswith("yaxis") and "title" in axis
        }
        assert titles == {
            "yaxis": "Tissue O₂ (%)",
            "yaxis3": "SpO₂ (%)",
            "yaxis4": "Skin temperature (°C)",
            "yaxis5": "Sensor battery (mV)",
        }
        assert layout["yaxis"]["domain"][0] > layout["yaxis3"]["domain"][1] > layout["yaxis5"]["domain"][1]
        bands = page.evaluate(
            "document.getElementById('chart').layout.shapes.filter(s => s.yref === 'y3').map(s => [s.y0, s.y1])"
        )
        assert sorted(bands) == [[0, 80], [80, 90]]  # SpO2 critically low and low, on the SpO2 axis
        # The SpO2 axis spans its readings and its low limit, not the bands down to zero.
        low, high = page.evaluate("document.getElementById('chart').layout.yaxis3.range")
        assert 85 < low < 90 and 96 < high < 100
        assert "Skin temperature: no readings in this span" in page.inner_text("#chart")

        # A live SpO2 reading arrives over the socket into its own track.
        loads = page.evaluate("window.perfuseChart.state.loads")
        _post(url, dev, [factories.reading(900_002, metric="spo2", value=91.5, unit="%")], firmware="fw-1.0")
        wait_until(page, "[...window.perfuseChart.state.tracks.get('spo2').live.values()].some(p => p.value === 91.5)")
        assert page.evaluate("window.perfuseChart.state.loads") == loads
        assert not page.evaluate("[...window.perfuseChart.state.live.values()].some(p => p.value === 91.5)")

        # Zoom out to the day: every panel follows; SpO2's dip survives in its envelope.
        page.evaluate(
            "([a, b]) => Plotly.relayout(document.getElementById('chart'), {'xaxis.range': [a, b]})",
            [(now - dt.timedelta(hours=24)).isoformat(), now.isoformat()],
        )
        wait_until(page, "document.getElementById('chart').dataset.mode === 'history'")
        wait_until(page, "window.perfuseChart.state.tracks.get('spo2').hist !== null")
        hist = page.evaluate(
            "Object.fromEntries([...window.perfuseChart.state.tracks.values()].map(t => [t.metric, t.hist.resolution]))"
        )
        assert hist == {"tissue_o2": "1m", "spo2": "1m", "skin_temp": "raw", "battery": "raw"}
        assert (
            page.evaluate("Math.min(...window.perfuseChart.state.tracks.get('spo2').hist.points.map(p => p.min))")
            == 82.0
        )
        wait_until(page, f"({TRACE_VALUES})('spo2').includes(82)")  # the envelope's lower edge
        assert len(page.evaluate(f"({TRACE_VALUES})('battery')")) > 1000  # a day of minutes, raw
        wait_until(page, "document.getElementById('chart').layout.yaxis3.range[0] < 82")  # the dip in sight
        page.screenshot(path=str(ROOT / "test-artifacts" / "chart-vitals.png"), full_page=True)
        assert errors == []
        browser.close()
