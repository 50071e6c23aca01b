"""Alarm signals in headless Debian Chromium (docs/alarms.md, "Alarm signals").

The pattern builder (alerts/static/alerts/alarm-audio.js) against IEC 60601-1-8 Tables 3 and 4;
the console against a real Daphne with `AudioContext` instrumented by an init script that records
every oscillator's fundamental, harmonics, start and (last) stop time: not armed until a gesture,
the priority-encoded bursts, only the most urgent alarm sounding, the audio pause with its
countdown and a higher priority breaking through, silence after acknowledgement, a system
notification from a background tab, title and favicon; the flashing rates of the visual signals
on the console, the ward cards and the chart, their reduced-motion equivalents; and the display
modes (prefers-color-scheme, and a choice the server keeps per user)."""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from alerts.engine import AlarmProcessor
from alerts.models import Alarm
from audit.models import AuditEvent, StaffProfile
from telemetry.models import Device, Patient
from tests import factories, personas
from tests.alarm_factories import insert
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, daphne_server, off_loop, wait_until

pytestmark = [pytest.mark.browser]

AUDIO_JS = ROOT / "alerts" / "static" / "alerts" / "alarm-audio.js"
NOTE = {"C4": 261.63, "F4": 349.23, "G4": 392.0, "A4": 440.0, "B4": 493.88, "C5": 523.25}
OXYGEN = [NOTE[n] for n in ("C5", "B4", "A4", "G4", "F4")]
EQUIPMENT = [NOTE[n] for n in ("C5", "C4", "C4", "C5", "C4")]

# Records what the page asks Web Audio to play (the real nodes still play it), and the system
# notifications it raises; `window.__hidden = true` makes the tab look like a background tab.
INSTRUMENT = """
(() => {
  const audio = (window.__audio = { pulses: [] });
  const waves = new WeakMap();
  const P = BaseAudioContext.prototype;
  const createWave = P.createPeriodicWave;
  P.createPeriodicWave = function (real, imag, options) {
    const wave = createWave.call(this, real, imag, options);
    waves.set(wave, Array.from(imag));
    return wave;
  };
  const createOscillator = P.createOscillator;
  P.createOscillator = function () {
    const ctx = this;
    const osc = createOscillator.call(this);
    const rec = { frequency: null, harmonics: null, start: null, stop: null, cancelled: null };
    rec.created = ctx.currentTime;
    audio.pulses.push(rec);
    const setWave = osc.setPeriodicWave;
    osc.setPeriodicWave = function (wave) {
      rec.harmonics = waves.get(wave) || null;
      return setWave.call(this, wave);
    };
    const start = osc.start;
    osc.start = function (when) {
      rec.start = when || ctx.currentTime;
      rec.frequency = osc.frequency.value;
      return start.apply(this, arguments);
    };
    const stop = osc.stop;
    osc.stop = function (when) {
      if (rec.stop !== null) rec.cancelled = ctx.currentTime; // a second stop: the page cancels it
      rec.stop = Math.max(when || 0, ctx.currentTime);
      return stop.apply(this, arguments);
    };
    return osc;
  };
  window.__notifications = [];
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) { super(title, options); window.__notifications.push({ title, ...options }); }
  };
  Object.defineProperty(Document.prototype, "visibilityState", {
    configurable: true,
    get() { return window.__hidden ? "hidden" : "visible"; },
  });
})();
"""
# choose(): which alarm sounds, with patient pauses and the console's audio pause.
CHOOSE = """(() => {
  const A = PerfuseAlarmAudio, now = Date.parse('2026-01-01T00:00:00Z');
  const at = (s) => new Date(now + s * 1000).toISOString();
  const alarm = (id, patient, priority, category, state, since) => ({
    id, patient, priority, category, state: state || 'active_unacknowledged', activated_at: at(since || 0),
  });
  const list = [
    alarm(1, 'a', 'medium', 'physiological', null, -60),
    alarm(2, 'b', 'high', 'technical', 'acknowledged'),
    alarm(3, 'c', 'medium', 'technical', null, -90),
    alarm(4, 'd', 'low', 'physiological'),
  ];
  const patient = (until) => ({ patients: new Map([['a', { until: at(until), priority: 'medium' }]]), audio: null });
  const audio = (priority) => ({ patients: new Map(), audio: { until: now + 60000, priority } });
  const id = (a) => (a ? a.id : null);
  return {
    plain: id(A.choose(list, { patients: new Map(), audio: null }, now)),
    patientPaused: id(A.choose(list, patient(60), now)),
    pauseOver: id(A.choose(list, patient(-1), now)),
    audioPaused: id(A.choose(list, audio('medium'), now)),
    highBreaksThrough: id(A.choose([...list, alarm(5, 'e', 'high', 'physiological')], audio('medium'), now)),
    allPaused: id(A.choose(list, audio('high'), now)),
  };
})()"""
AUDIBLE = "window.__audio.pulses.filter(p => p.start !== null && p.stop > p.start).map(p => ({...p}))"


def _launch(pw: Any) -> Any:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


# ---- the pattern builder, against the standard's tables -------------------------------------------


def _components(frequency: float, harmonics: list[float]) -> list[float]:
    """Frequencies of the components (harmonics[0] the fundamental's amplitude, harmonics[1] the
    second harmonic's...) within 15 dB of the fundamental (Table 4)."""
    return [(k + 1) * frequency for k, a in enumerate(harmonics) if a > 0 and 20 * math.log10(a / harmonics[0]) >= -15]


def _check_pulse(pulse: dict[str, Any], harmonics: list[float], duration: tuple[float, float]) -> None:
    td = pulse["rise"] + pulse["hold"] + pulse["fall"]
    assert duration[0] <= td <= duration[1]
    assert 0.10 * td <= pulse["rise"] <= 0.20 * td  # rise time 10-20 % of the pulse duration
    assert 150 <= pulse["frequency"] <= 1000
    assert len([f for f in _components(pulse["frequency"], harmonics) if 300 <= f <= 4000]) >= 4


def _gaps(pulses: list[dict[str, Any]]) -> list[float]:
    """From the end of one pulse's envelope to the start of the next."""
    ends = [p["at"] + p["rise"] + p["hold"] + p["fall"] for p in pulses]
    return [round(b["at"] - e, 6) for e, b in zip(ends, pulses[1:], strict=False)]


def test_pattern_builder_follows_iec_60601_1_8_tables() -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page()
            page.set_content("<!doctype html><title>t</title>")
            page.add_script_tag(path=str(AUDIO_JS))
            built = page.evaluate(
                "Object.fromEntries(['high', 'medium', 'low'].flatMap(p => ['physiological', 'technical']"
                ".map(c => [p + ':' + c, PerfuseAlarmAudio.pattern(p, c)])))"
            )
            chosen = page.evaluate(CHOOSE)
        finally:
            browser.close()

    for key, burst in built.items():
        priority, category = key.split(":")
        pulses, harmonics = burst["pulses"], burst["harmonics"]
        melody = OXYGEN if category == "physiological" else EQUIPMENT
        assert [p["frequency"] for p in pulses] == (melody * 2)[: len(pulses)]
        gaps = _gaps(pulses)
        if priority == "high":
            # Table 3: 10 pulses, 3 + 2, 3 + 2; x between 50 and 125 ms, the same x throughout
            # (within 5 %); 2x + td after pulses 3 and 8; 0.35-1.30 s after pulse 5; td 75-200 ms.
            assert len(pulses) == 10
            for p in pulses:
                _check_pulse(p, harmonics, (0.075, 0.200))
            x = gaps[0]
            assert 0.050 <= x <= 0.125
            td = pulses[0]["rise"] + pulses[0]["hold"] + pulses[0]["fall"]
            assert all(abs(gaps[i] - x) <= 0.05 * x for i in (1, 3, 5, 6, 8))
            assert all(abs(gaps[i] - (2 * x + td)) < 1e-6 for i in (2, 7))
            assert 0.35 <= gaps[4] <= 1.30
            assert 2.5 <= burst["interval"] <= 15
        else:
            # Medium: 3 pulses, low: 1 or 2; y between 125 and 250 ms; td 125-250 ms.
            assert len(pulses) == 3 if priority == "medium" else 1 <= len(pulses) <= 2
            for p in pulses:
                _check_pulse(p, harmonics, (0.125, 0.250))
            assert all(0.125 <= g <= 0.250 for g in gaps)
            assert (2.5 <= burst["interval"] <= 30) if priority == "medium" else burst["interval"] > 15

    assert chosen == {
        "plain": 1,  # medium and unacknowledged beats the acknowledged high; physiological before technical
        "patientPaused": 3,  # a's pause silences its medium alarm: the technical medium sounds
        "pauseOver": 1,
        "audioPaused": None,  # the console's audio pause covers medium and low
        "highBreaksThrough": 5,
        "allPaused": None,
    }


# ---- the console, against Daphne ------------------------------------------------------------------


@pytest.fixture
def daphne() -> Iterator[str]:
    with daphne_server("daphne-signals.log") as url:
        yield url


def _readings(patient: Patient, device: Device, value: float, seconds: int, quality: float = 0.95) -> None:
    """`seconds` of samples at `value` ending now, through the engine's alarm processor."""
    now = dt.datetime.now(dt.UTC)
    samples = [(now - dt.timedelta(seconds=seconds - i), value, quality) for i in range(seconds + 1)]
    AlarmProcessor().process(insert(patient, device, samples), now=now)


def _monitored(ward: str, pseudonym: str) -> tuple[Patient, Device]:
    dev = factories.device(ward, f"lumee-{pseudonym}", patient=pseudonym)
    return Patient.objects.select_related("ward").get(pseudonym=pseudonym), Device.objects.get(device_id=dev.device_id)


def _bursts(pulses: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Audible pulses grouped into bursts: a silence over 1.5 s starts the next one."""
    bursts: list[list[dict[str, Any]]] = []
    for p in sorted(pulses, key=lambda p: p["start"]):
        if bursts and p["start"] - bursts[-1][-1]["stop"] < 1.5:
            bursts[-1].append(p)
        else:
            bursts.append([p])
    return bursts


def _assert_bursts(
    bursts: list[list[dict[str, Any]]], melody: list[float], count: int, interval: tuple[float, float]
) -> None:
    assert bursts, "nothing was scheduled"
    for burst in bursts:
        assert len(burst) == count
        assert [round(p["frequency"], 2) for p in burst] == (melody * 2)[:count]
        for p in burst:
            # The periodic wave's sine terms: [0] is the constant, [k] the k-th harmonic.
            assert len([f for f in _components(p["frequency"], p["harmonics"][1:]) if 300 <= f <= 4000]) >= 4
    for prev, nxt in itertools.pairwise(bursts):
        assert interval[0] <= nxt[0]["start"] - prev[-1]["stop"] <= interval[1]


def _high_spacing(burst: list[dict[str, Any]]) -> None:
    """Table 3 spacing of one high-priority burst, measured on the scheduled envelopes."""
    gaps = [b["start"] - a["stop"] for a, b in itertools.pairwise(burst)]
    x = gaps[0]
    td = burst[0]["stop"] - burst[0]["start"]
    assert 0.075 <= td <= 0.200
    assert 0.050 <= x <= 0.125
    assert all(abs(gaps[i] - x) <= 0.05 * x for i in (1, 3, 5, 6, 8))
    assert all(abs(gaps[i] - (2 * x + td)) < 0.002 for i in (2, 7))
    assert 0.35 <= gaps[4] <= 1.30


def _console(browser: Any, url: str, session_key: str, **context: Any) -> Any:
    ctx = browser.new_context(viewport={"width": 1200, "height": 800}, **context)
    ctx.add_init_script(INSTRUMENT)
    ctx.grant_permissions(["notifications"], origin=url)
    ctx.add_cookies([{"name": "sessionid", "value": session_key, "url": url}])
    page = ctx.new_page()
    page.goto(url + "/alarms/")
    page.wait_for_selector("#live-status[data-state=live]", timeout=10000)
    return page


def _sounding(page: Any, value: str) -> None:
    wait_until(
        page, "([v]) => document.getElementById('alarm-console').dataset.sounding === v", [value], timeout_ms=10000
    )


def _audible(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate(AUDIBLE))


@pytest.mark.django_db(transaction=True)
def test_console_sounds_the_most_urgent_alarm_until_acknowledged(daphne: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ward = factories.ward("icu-sig")
    a, dev_a = _monitored(ward.code, "pt-sig-a")
    b, dev_b = _monitored(ward.code, "pt-sig-b")
    c, dev_c = _monitored(ward.code, "pt-sig-c")
    d, dev_d = _monitored(ward.code, "pt-sig-d")
    nurse = personas.staff("oncall-sig", "oncall", [ward.code])
    key = personas.verified_client(nurse).cookies[settings.SESSION_COOKIE_NAME].value

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = _console(browser, daphne, key)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            console = page.locator("#alarm-console")

            # Not armed: the banner says so and nothing is played, even with an alarm open.
            expect(page.locator("#audio-banner")).to_be_visible()
            assert page.evaluate("window.perfuseConsole.sounder.ctx.state") == "suspended"
            off_loop(_readings, a, dev_a, 33.0, 31)  # tissue O2 low: medium
            medium = page.locator("tr.unacked", has_text="pt-sig-a")
            expect(medium).to_be_visible(timeout=5000)
            _sounding(page, "medium:physiological")
            assert _audible(page) == []
            assert page.title() == "MEDIUM alarm · Alarm console · Perfuse"
            assert page.evaluate("document.getElementById('favicon').dataset.priority") == "medium"
            assert page.evaluate("document.getElementById('favicon').href").startswith("data:image/png")

            # A gesture arms it: the medium burst (3 pulses of the oxygen melody) repeats.
            page.click("#audio-arm")
            expect(page.locator("#audio-banner")).to_be_hidden()
            expect(console).to_have_attribute("data-audio", "armed")
            _assert_bursts(_bursts(_audible(page)), OXYGEN, 3, (2.5, 30))

            # A context the browser suspends shows the banner again, until the next gesture.
            page.evaluate("window.perfuseConsole.sounder.ctx.suspend()")
            expect(page.locator("#audio-banner")).to_be_visible()
            page.click("#audio-arm")
            expect(page.locator("#audio-banner")).to_be_hidden()

            # A high-priority alarm in a background tab: a system notification, and only the
            # high burst sounds from then on (10 pulses, 3 + 2, 3 + 2).
            page.evaluate("window.__hidden = true")
            off_loop(_readings, b, dev_b, 20.0, 14)  # critically low: high
            _sounding(page, "high:physiological")
            page.evaluate("window.__hidden = false")
            assert [n["title"] for n in page.evaluate("window.__notifications")] == ["HIGH alarm · pt-sig-b"]
            assert page.title() == "HIGH alarm · Alarm console · Perfuse"
            # The switch cancelled every medium pulse not yet played (one playing fades in 20 ms);
            # everything scheduled since is the high signal.
            audible = _audible(page)
            switched = min(p["cancelled"] for p in audible + page.evaluate("window.__audio.pulses") if p["cancelled"])
            assert all(p["stop"] <= switched + 0.021 for p in audible if p["created"] < switched)
            high = _bursts([p for p in audible if p["created"] >= switched])
            _assert_bursts(high, OXYGEN, 10, (2.5, 15))
            for burst in high:
                _high_spacing(burst)

            page.screenshot(path=str(ROOT / "test-artifacts" / "alarm-signals-console.png"))

            # Keyboard: next alarm, acknowledge with a note. The medium one sounds again.
            page.keyboard.press("j")
            page.keyboard.press("a")
            page.keyboard.type("sensor moved")
            page.keyboard.press("Enter")
            high_row = page.locator("tr", has_text="pt-sig-b")
            expect(high_row).to_contain_text("acknowledged by oncall-sig", timeout=5000)
            expect(high_row).to_contain_text("sensor moved")
            _sounding(page, "medium:physiological")

            # Audio pause (p): silence for medium and lower, with a countdown that runs down.
            page.locator("body").press("p")
            expect(page.locator("#audio-paused")).to_be_visible()
            expect(page.locator("#audio-paused-priority")).to_have_text("medium")
            _sounding(page, "")
            left = page.locator("#audio-paused-left").inner_text()
            assert left in {"2:00", "1:59"}
            wait_until(page, "([t]) => document.getElementById('audio-paused-left').textContent !== t", [left])
            paused_at = page.evaluate("window.perfuseConsole.sounder.ctx.currentTime")
            assert not [p for p in _audible(page) if p["start"] >= paused_at]

            # A higher priority breaks through the pause (and ends it).
            off_loop(_readings, c, dev_c, 20.0, 14)
            _sounding(page, "high:physiological")
            expect(page.locator("#audio-paused")).to_be_hidden()

            # Acknowledge everything: silence, and nothing more is scheduled.
            for name in ("pt-sig-c", "pt-sig-a"):
                row = page.locator("tr.unacked", has_text=name)
                row.locator("button.ack").click()
                expect(page.locator("tr.unacked", has_text=name)).to_have_count(0, timeout=5000)
            _sounding(page, "")
            silent_at = page.evaluate("window.perfuseConsole.sounder.ctx.currentTime")
            scheduled = page.evaluate("window.__audio.pulses.length")
            assert not [p for p in _audible(page) if p["start"] >= silent_at]
            page.wait_for_timeout(1500)  # the refill timer runs every second
            assert page.evaluate("window.__audio.pulses.length") == scheduled
            assert page.title() == "Alarm console · Perfuse"
            assert page.evaluate("document.getElementById('favicon').getAttribute('href')").endswith("img/favicon.svg")

            # A technical low-priority alarm: at most two pulses of the equipment melody, > 15 s apart.
            before = len(_audible(page))
            off_loop(_readings, d, dev_d, 50.0, 62, 0.2)  # signal quality low: low, technical
            expect(page.locator("tr.unacked", has_text="pt-sig-d")).to_be_visible(timeout=5000)
            _sounding(page, "low:technical")
            _assert_bursts(_bursts(_audible(page)[before:]), EQUIPMENT, 2, (15.01, 60))
            assert errors == []
        finally:
            browser.close()

    events = AuditEvent.objects.filter(action="alarm.audio_paused", actor_username="oncall-sig")
    assert [e.detail["priority"] for e in events] == ["medium"]
    assert Alarm.objects.get(patient=b, kind="critical_low").ack_note == "sensor moved"


@pytest.mark.django_db(transaction=True)
def test_visual_signals_flash_at_iec_rates_and_respect_reduced_motion(daphne: str) -> None:
    from playwright.sync_api import sync_playwright

    ward = factories.ward("icu-vis")
    x, dev_x = _monitored(ward.code, "pt-vis-x")
    y, dev_y = _monitored(ward.code, "pt-vis-y")
    z, dev_z = _monitored(ward.code, "pt-vis-z")
    _readings(x, dev_x, 20.0, 14)  # high
    _readings(y, dev_y, 33.0, 31)  # medium
    _readings(z, dev_z, 50.0, 62, 0.2)  # low
    clinician = personas.staff("clin-vis", "clinician", [ward.code])
    key = personas.verified_client(clinician).cookies[settings.SESSION_COOKIE_NAME].value
    style = (
        "([sel]) => { const s = getComputedStyle(document.querySelector(sel));"
        " return {name: s.animationName, duration: parseFloat(s.animationDuration), outline: s.outlineStyle}; }"
    )

    def flashing_hz(page: Any, selector: str) -> float | None:
        s = page.evaluate(style, [selector])
        return None if s["name"] == "none" else 1 / s["duration"]

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            for reduced in (False, True):
                # The reduced-motion pass also draws the night scheme (see the screenshot).
                ctx = browser.new_context(
                    reduced_motion="reduce" if reduced else "no-preference", color_scheme="dark" if reduced else "light"
                )
                ctx.add_cookies([{"name": "sessionid", "value": key, "url": daphne}])
                page = ctx.new_page()
                badge = ".ward-card[data-pseudonym={}] .alarm-badge"
                row = "tr.unacked:has(a[href^='/patients/{}/']) td.signal"
                page.goto(daphne + "/")
                page.wait_for_selector(".ward-card[data-pseudonym=pt-vis-z] .alarm-badge.sig")
                assert page.title() == "HIGH alarm · Ward overview · Perfuse"
                cards = {p: flashing_hz(page, badge.format(f"pt-vis-{p}")) for p in "xyz"}
                outlines = {p: page.evaluate(style, [badge.format(f"pt-vis-{p}")])["outline"] for p in "xyz"}
                page.goto(daphne + "/alarms/")
                page.wait_for_selector("#live-status[data-state=live]")
                rows = {p: flashing_hz(page, row.format(f"pt-vis-{p}")) for p in "xyz"}
                page.goto(daphne + "/patients/pt-vis-x/")
                page.wait_for_selector("#chart-alarm.sig[data-priority=high]")
                if reduced:
                    page.screenshot(path=str(ROOT / "test-artifacts" / "chart-alarm-reduced-motion-night.png"))
                chart = flashing_hz(page, "#chart-alarm")
                assert page.title() == "HIGH alarm · pt-vis-x · Perfuse"
                assert page.evaluate("document.getElementById('favicon').dataset.priority") == "high"
                if reduced:
                    # Nothing flashes; high and medium keep a distinct, non-moving mark.
                    assert set(cards.values()) == set(rows.values()) == {None} and chart is None
                    assert (outlines["x"], outlines["y"], outlines["z"]) == ("double", "dashed", "none")
                else:
                    for hz in (cards["x"], rows["x"], chart):
                        assert hz is not None and 1.4 <= hz <= 2.8
                    for hz in (cards["y"], rows["y"]):
                        assert hz is not None and 0.4 <= hz <= 0.8
                    assert cards["z"] is None and rows["z"] is None  # low: steady
                ctx.close()
        finally:
            browser.close()


@pytest.mark.django_db(transaction=True)
def test_display_mode_follows_the_system_and_is_kept_per_user(daphne: str) -> None:
    from playwright.sync_api import sync_playwright

    ward = factories.ward("icu-night")
    nurse = personas.staff("oncall-night", "oncall", [ward.code])
    key = personas.verified_client(nurse).cookies[settings.SESSION_COOKIE_NAME].value
    background = "getComputedStyle(document.body).backgroundColor"

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            for scheme, expected in (("light", "rgb(243, 245, 247)"), ("dark", "rgb(11, 17, 23)")):
                ctx = browser.new_context(color_scheme=scheme)
                ctx.add_cookies([{"name": "sessionid", "value": key, "url": daphne}])
                page = ctx.new_page()
                page.goto(daphne + "/alarms/")
                assert page.evaluate("document.documentElement.dataset.mode") == "auto"
                assert page.evaluate(background) == expected
                ctx.close()

            ctx = browser.new_context(color_scheme="light")
            ctx.add_cookies([{"name": "sessionid", "value": key, "url": daphne}])
            page = ctx.new_page()
            page.goto(daphne + "/alarms/")
            with page.expect_navigation():
                page.select_option("#display-mode", "contrast")
            assert page.url == daphne + "/alarms/"
            assert page.evaluate("document.documentElement.dataset.mode") == "contrast"
            assert page.evaluate(background) == "rgb(0, 0, 0)"
            page.screenshot(path=str(ROOT / "test-artifacts" / "display-contrast.png"))
            with page.expect_navigation():
                page.select_option("#display-mode", "night")
            assert page.evaluate(background) == "rgb(11, 17, 23)"  # night on a light system
            page.keyboard.press("?")
            page.screenshot(path=str(ROOT / "test-artifacts" / "display-night-shortcuts.png"))
            ctx.close()

            # Kept for the user, not the browser: another browser context shows night at once.
            ctx = browser.new_context(color_scheme="light")
            ctx.add_cookies([{"name": "sessionid", "value": key, "url": daphne}])
            page = ctx.new_page()
            page.goto(daphne + "/")
            assert page.evaluate("document.documentElement.dataset.mode") == "night"
            assert page.locator("#display-mode").input_value() == "night"
        finally:
            browser.close()

    assert StaffProfile.objects.get(user=nurse).display_mode == "night"
    changes = AuditEvent.objects.filter(action="staff.display_mode_changed", actor_username="oncall-night")
    assert [(e.detail["from"], e.detail["to"]) for e in changes.order_by("id")] == [
        ("auto", "contrast"),
        ("contrast", "night"),
    ]
