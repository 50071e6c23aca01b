"""Pure rule evaluation on constructed signals (no database, no clock)."""

from __future__ import annotations

import datetime as dt

import pytest

from alerts import lifecycle
from alerts.evaluation import OutOfOrder, PatientEvaluator, RuleParams, Sample
from alerts.models import RULE_DEFAULTS
from alerts.vocabulary import Kind

CRITICAL_LOW, LOW, RAPID_FALL, SIGNAL_QUALITY = Kind.CRITICAL_LOW, Kind.LOW, Kind.RAPID_FALL, Kind.SIGNAL_QUALITY

T0 = dt.datetime(2026, 1, 18, 14, 0, tzinfo=dt.UTC)
PARAMS = RuleParams.from_values(RULE_DEFAULTS)  # low 35/30 s, critical 25/10 s, margin 3, clear 15 s


def signal(values: list[float], *, start: float = 0, quality: float | list[float] = 0.95) -> list[Sample]:
    qualities = quality if isinstance(quality, list) else [quality] * len(values)
    return [
        Sample(T0 + dt.timedelta(seconds=start + i), v, q, seq=int(start) + i)
        for i, (v, q) in enumerate(zip(values, qualities, strict=True))
    ]


def changes(events: list, kind: str) -> list[tuple[str, float, float]]:
    return [(e.change, (e.onset - T0).total_seconds(), (e.at - T0).total_seconds()) for e in events if e.kind == kind]


def test_low_raises_only_after_its_sustain_delay() -> None:
    ev = PatientEvaluator(PARAMS)
    assert changes(ev.feed(signal([60] * 10 + [33] * 30)), LOW) == []  # 29 s below: not yet
    assert changes(ev.feed(signal([33], start=40)), LOW) == [("raised", 10, 40)]


def test_a_dip_shorter_than_the_delay_raises_nothing() -> None:
    ev = PatientEvaluator(PARAMS)
    events = ev.feed(signal([60] * 5 + [33] * 20 + [60] * 5 + [33] * 20))
    assert changes(events, LOW) == []


def test_critical_has_its_own_shorter_delay_and_low_fires_too() -> None:
    ev = PatientEvaluator(PARAMS)
    events = ev.feed(signal([60] * 5 + [20] * 40))
    assert changes(events, CRITICAL_LOW) == [("raised", 5, 15)]
    assert changes(events, LOW) == [("raised", 5, 35)]


def test_clearing_needs_the_margin_for_the_clear_delay() -> None:
    ev = PatientEvaluator(PARAMS)
    ev.feed(signal([33] * 31))
    # 36 is above the threshold but inside the 3-point margin: still present.
    assert changes(ev.feed(signal([36] * 60, start=31)), LOW) == []
    # 38 = threshold + margin: clears after 15 s of it, but a relapse into the band restarts the clock.
    assert changes(ev.feed(signal([38] * 10 + [37] + [38] * 16, start=91)), LOW) == [("cleared", 0, 117)]
    assert ev.machines[LOW].phase == "idle"


def test_low_quality_samples_never_raise_a_physiological_alarm() -> None:
    ev = PatientEvaluator(PARAMS)
    events = ev.feed(signal([20] * 120, quality=0.3))
    assert changes(events, LOW) == [] and changes(events, CRITICAL_LOW) == []
    # ...but they are what the technical signal-quality alarm is about.
    assert changes(events, SIGNAL_QUALITY) == [("raised", 0, 60)]


def test_low_quality_samples_never_clear_or_break_a_condition() -> None:
    ev = PatientEvaluator(PARAMS)
    ev.feed(signal([33] * 20))
    # A noisy stretch of "recovered" values with bad quality does not break the pending run...
    ev.feed(signal([70] * 5, start=20, quality=0.2))
    assert changes(ev.feed(signal([33] * 6, start=25)), LOW) == [("raised", 0, 30)]
    # ...and does not clear the raised condition either.
    assert changes(ev.feed(signal([70] * 40, start=31, quality=0.2)), LOW) == []
    assert ev.machines[LOW].present


def test_rapid_fall_over_the_window() -> None:
    ev = PatientEvaluator(PARAMS)
    falling = [62 - i for i in range(20)]  # 19 points in 19 s
    events = ev.feed(signal([62] * 30 + falling))
    assert changes(events, RAPID_FALL) == [("raised", 45, 45)]  # 62 -> 47 is the first 15-point drop
    assert events[0].detail["window_s"] == 60
    assert events[0].samples[0].value == 62  # the top of the window is part of the explanation


def test_a_slow_drift_is_not_a_rapid_fall() -> None:
    ev = PatientEvaluator(PARAMS)
    drift = [62 - i * 0.2 for i in range(120)]  # 24 points over two minutes, 12 per minute
    assert changes(ev.feed(signal(drift)), RAPID_FALL) == []


def test_gap_in_data_resets_a_pending_condition() -> None:
    ev = PatientEvaluator(PARAMS)
    ev.feed(signal([33] * 20))
    # 200 s of silence (> no-data delay 120 s), then low again: the clock starts over.
    assert changes(ev.feed(signal([33] * 20, start=220)), LOW) == []
    assert changes(ev.feed(signal([33] * 11, start=240)), LOW) == [("raised", 220, 250)]


def test_out_of_order_samples_are_refused_for_replay() -> None:
    ev = PatientEvaluator(PARAMS)
    ev.feed(signal([60] * 10))
    with pytest.raises(OutOfOrder):
        ev.feed(signal([60], start=5))


def test_same_signal_same_answer_whatever_the_batching() -> None:
    values = [60] * 10 + [33] * 40 + [40] * 30 + [20] * 20
    whole = PatientEvaluator(PARAMS).feed(signal(values))
    pieces = PatientEvaluator(PARAMS)
    chunked = []
    for i in range(0, len(values), 7):
        chunked += pieces.feed(signal(values[i : i + 7], start=i))
    assert [(e.kind, e.change, e.onset, e.at) for e in whole] == [(e.kind, e.change, e.onset, e.at) for e in chunked]


# --- lifecycle decisions ----------------------------------------------------------------------


def view(**kw: object) -> lifecycle.AlarmView:
    base: dict[str, object] = {
        "state": lifecycle.ACTIVE,
        "priority": "medium",
        "latched": False,
        "condition_present": True,
        "condition_cleared_at": None,
        "activated_at": T0,
        "acknowledged_at": None,
        "escalation_level": 0,
        "escalated_at": None,
        "responsible_id": None,
    }
    base.update(kw)
    return lifecycle.AlarmView(**base)  # type: ignore[arg-type]


W = dt.timedelta(seconds=120)


def test_latched_alarm_is_not_resolved_until_acknowledged() -> None:
    cleared = view(priority="high", latched=True, condition_present=False, condition_cleared_at=T0)
    assert not lifecycle.due_resolution(cleared, now=T0 + dt.timedelta(hours=1), suppression_window=W)
    acked = view(
        priority="high", latched=True, condition_present=False, condition_cleared_at=T0, state=lifecycle.ACKNOWLEDGED
    )
    assert not lifecycle.due_resolution(acked, now=T0 + W - dt.timedelta(seconds=1), suppression_window=W)
    assert lifecycle.due_resolution(acked, now=T0 + W, suppression_window=W)


def test_unlatched_alarm_resolves_after_the_suppression_window() -> None:
    a = view(condition_present=False, condition_cleared_at=T0)
    assert not lifecycle.due_resolution(a, now=T0 + dt.timedelta(seconds=119), suppression_window=W)
    assert lifecycle.due_resolution(a, now=T0 + W, suppression_window=W)


def test_realert_only_while_the_condition_is_present() -> None:
    interval = dt.timedelta(seconds=300)
    acked = view(state=lifecycle.ACKNOWLEDGED, acknowledged_at=T0)
    assert not lifecycle.due_realert(acked, now=T0 + dt.timedelta(seconds=299), realert_interval=interval)
    assert lifecycle.due_realert(acked, now=T0 + interval, realert_interval=interval)
    gone = view(state=lifecycle.ACKNOWLEDGED, acknowledged_at=T0, condition_present=False, condition_cleared_at=T0)
    assert not lifecycle.due_realert(gone, now=T0 + interval, realert_interval=interval)


def test_escalation_steps_and_stops_when_accepted() -> None:
    delay = dt.timedelta(seconds=120)
    assert not lifecycle.due_escalation(view(), now=T0 + dt.timedelta(seconds=119), escalation_delay=delay)
    assert lifecycle.due_escalation(view(), now=T0 + delay, escalation_delay=delay)
    once = view(escalation_level=1, escalated_at=T0 + delay)
    assert not lifecycle.due_escalation(once, now=T0 + delay + dt.timedelta(seconds=119), escalation_delay=delay)
    assert lifecycle.due_escalation(once, now=T0 + 2 * delay, escalation_delay=delay)
    assert not lifecycle.due_escalation(view(responsible_id=7), now=T0 + 2 * delay, escalation_delay=delay)
    assert not lifecycle.due_escalation(view(escalation_level=2), now=T0 + 9 * delay, escalation_delay=delay)
    acked = view(state=lifecycle.ACKNOWLEDGED, acknowledged_at=T0)
    assert not lifecycle.due_escalation(acked, now=T0 + 2 * delay, escalation_delay=delay)


def test_pause_suppresses_equal_and_lower_priority_only() -> None:
    assert lifecycle.suppressed_by_pause("medium", "medium")
    assert lifecycle.suppressed_by_pause("low", "medium")
    assert not lifecycle.suppressed_by_pause("high", "medium")
    assert not lifecycle.suppressed_by_pause("low", None)
