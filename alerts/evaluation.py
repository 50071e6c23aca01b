"""Pure alarm-condition evaluation: samples in sample-time order in, condition changes out.

One evaluator per metric of a patient (`patient_evaluators`): tissue O2 (critically low, low,
rapid fall, signal quality: `PatientEvaluator`), and the metrics whose conditions are plain
thresholds, SpO2 (critically low, low) and the sensor's battery (low): `ThresholdEvaluator`. Each
is fed only its own metric's samples, so devices that send different metrics on their own clocks
never put one another out of order.

No database, no clock: everything is decided by sample times and the rule's parameters, so the
same signal always gives the same conditions (tests feed constructed signals; the engine replays
a window from PostgreSQL after a restart or a late reading and gets the same answer).

Each condition kind is a small state machine over per-sample verdicts:

    idle --bad--> pending --bad for `delay`--> active --good--> clearing --good for `clear_delay`--> idle
                  pending --neutral/good--> idle           clearing --bad/neutral--> active

`bad` means the condition holds at that sample, `good` that the value has recovered past the
threshold plus the hysteresis margin, `neutral` is the band in between (it neither starts a raise
nor counts towards clearing). Low-quality samples are `skip` for physiological kinds: they never
raise, sustain, clear or break a physiological condition. A gap in good samples longer than the
no-data delay resets a pending condition (the no-data alarm covers the gap).
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from alerts.vocabulary import Kind

Verdict = Literal["bad", "neutral", "good", "skip"]
Phase = Literal["idle", "pending", "active", "clearing"]

# Signal quality must recover this far above the level to count as good (hysteresis for quality).
QUALITY_MARGIN = 0.05
# A battery must read this much above its threshold to count as recovered (a cell under load
# rebounds by tens of millivolts; a changed or recharged one by hundreds).
BATTERY_MARGIN_MV = 100.0
# Battery readings come a minute or more apart: a gap between them says nothing about the battery
# (the no-data alarm covers a silent sensor), so only a silence of a day resets a pending low.
BATTERY_MAX_GAP = dt.timedelta(days=1)
# Samples kept per condition to explain a raise.
EXPLAIN_SAMPLES = 30


@dataclass(frozen=True)
class Sample:
    t: dt.datetime
    value: float
    quality: float | None
    seq: int = 0
    device_id: int | None = None
    calibration_id: str | None = None
    firmware: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "t": self.t.isoformat(),
            "value": self.value,
            "quality": self.quality,
            "seq": self.seq,
            "device_id": self.device_id,
        }


@dataclass(frozen=True)
class RuleParams:
    low_threshold: float
    low_delay: dt.timedelta
    critical_threshold: float
    critical_delay: dt.timedelta
    rapid_fall_drop: float
    rapid_fall_window: dt.timedelta
    quality_level: float
    quality_delay: dt.timedelta
    no_data_delay: dt.timedelta
    clear_margin: float
    clear_delay: dt.timedelta
    spo2_low_threshold: float
    spo2_low_delay: dt.timedelta
    spo2_critical_threshold: float
    spo2_critical_delay: dt.timedelta
    spo2_clear_margin: float
    battery_low_threshold: float
    battery_low_delay: dt.timedelta

    @classmethod
    def from_values(cls, v: dict[str, Any]) -> RuleParams:
        s = dt.timedelta
        return cls(
            low_threshold=float(v["low_threshold"]),
            low_delay=s(seconds=v["low_delay_s"]),
            critical_threshold=float(v["critical_threshold"]),
            critical_delay=s(seconds=v["critical_delay_s"]),
            rapid_fall_drop=float(v["rapid_fall_drop"]),
            rapid_fall_window=s(seconds=v["rapid_fall_window_s"]),
            quality_level=float(v["quality_level"]),
            quality_delay=s(seconds=v["quality_delay_s"]),
            no_data_delay=s(seconds=v["no_data_delay_s"]),
            clear_margin=float(v["clear_margin"]),
            clear_delay=s(seconds=v["clear_delay_s"]),
            spo2_low_threshold=float(v["spo2_low_threshold"]),
            spo2_low_delay=s(seconds=v["spo2_low_delay_s"]),
            spo2_critical_threshold=float(v["spo2_critical_threshold"]),
            spo2_critical_delay=s(seconds=v["spo2_critical_delay_s"]),
            spo2_clear_margin=float(v["spo2_clear_margin"]),
            battery_low_threshold=float(v["battery_low_threshold"]),
            battery_low_delay=s(seconds=v["battery_low_delay_s"]),
        )

    def lookback(self) -> dt.timedelta:
        """How much history reproduces every condition's current state when replayed."""
        longest = max(
            self.low_delay,
            self.critical_delay,
            self.rapid_fall_window,
            self.quality_delay,
            self.spo2_low_delay,
            self.spo2_critical_delay,
            self.battery_low_delay,
        )
        return max(longest + self.clear_delay + dt.timedelta(seconds=60), dt.timedelta(minutes=5))

    def threshold(self, kind: str) -> float:
        thresholds: dict[str, float] = {
            Kind.CRITICAL_LOW: self.critical_threshold,
            Kind.LOW: self.low_threshold,
            Kind.RAPID_FALL: self.rapid_fall_drop,
            Kind.SIGNAL_QUALITY: self.quality_level,
            Kind.SPO2_CRITICAL_LOW: self.spo2_critical_threshold,
            Kind.SPO2_LOW: self.spo2_low_threshold,
            Kind.BATTERY_LOW: self.battery_low_threshold,
        }
        return thresholds[kind]

    def delay(self, kind: str) -> dt.timedelta:
        delays: dict[str, dt.timedelta] = {
            Kind.CRITICAL_LOW: self.critical_delay,
            Kind.LOW: self.low_delay,
            Kind.RAPID_FALL: dt.timedelta(0),
            Kind.SIGNAL_QUALITY: self.quality_delay,
            Kind.SPO2_CRITICAL_LOW: self.spo2_critical_delay,
            Kind.SPO2_LOW: self.spo2_low_delay,
            Kind.BATTERY_LOW: self.battery_low_delay,
        }
        return delays[kind]

    def below(self, kind: str) -> Below:
        """A below-threshold condition of SpO2 or the battery, with its own hysteresis margin."""
        margin = BATTERY_MARGIN_MV if kind == Kind.BATTERY_LOW else self.spo2_clear_margin
        return Below(kind, self.threshold(kind), self.delay(kind), margin)


@dataclass(frozen=True)
class Below:
    """A condition present while the value stays under `threshold`; it clears at threshold + margin."""

    kind: str
    threshold: float
    delay: dt.timedelta
    margin: float


@dataclass(frozen=True)
class ConditionEvent:
    """A condition became present (`raised`, after its delay) or went away (`cleared`, after hysteresis)."""

    kind: str
    change: Literal["raised", "cleared"]
    onset: dt.datetime  # sample time the condition began: identifies the episode
    at: dt.datetime  # sample time of the deciding sample
    samples: tuple[Sample, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Machine:
    kind: str
    delay: dt.timedelta
    clear_delay: dt.timedelta
    max_gap: dt.timedelta
    phase: Phase = "idle"
    onset: dt.datetime | None = None
    recover_since: dt.datetime | None = None
    last_t: dt.datetime | None = None
    # Samples at or before this time are ignored (the machine was seeded from a stored alarm).
    start_after: dt.datetime | None = None
    run: deque[Sample] = field(default_factory=lambda: deque(maxlen=EXPLAIN_SAMPLES))

    @property
    def present(self) -> bool:
        return self.phase in ("active", "clearing")

    def seed_active(self, onset: dt.datetime, after: dt.datetime) -> None:
        self.phase, self.onset, self.start_after, self.last_t = "active", onset, after, after

    def seed_idle(self, after: dt.datetime) -> None:
        self.phase, self.onset, self.start_after, self.last_t = "idle", None, after, after

    def step(self, s: Sample, verdict: Verdict) -> ConditionEvent | None:
        if verdict == "skip" or (self.start_after is not None and s.t <= self.start_after):
            return None
        if self.phase == "pending" and self.last_t is not None and s.t - self.last_t > self.max_gap:
            self.phase, self.onset = "idle", None
        self.last_t = s.t
        if self.phase == "idle":
            if verdict == "bad":
                self.phase, self.onset = "pending", s.t
                self.run.clear()
                self.run.append(s)
                return self._raise_if_due(s)
            return None
        if self.phase == "pending":
            if verdict != "bad":
                self.phase, self.onset = "idle", None
                return None
            self.run.append(s)
            return self._raise_if_due(s)
        if self.phase == "active":
            if verdict == "good":
                self.phase, self.recover_since = "clearing", s.t
                return self._clear_if_due(s)
            return None
        # clearing
        if verdict != "good":
            self.phase, self.recover_since = "active", None
            return None
        return self._clear_if_due(s)

    def _raise_if_due(self, s: Sample) -> ConditionEvent | None:
        assert self.onset is not None
        if s.t - self.onset < self.delay:
            return None
        self.phase = "active"
        return ConditionEvent(self.kind, "raised", self.onset, s.t, tuple(self.run))

    def _clear_if_due(self, s: Sample) -> ConditionEvent | None:
        assert self.onset is not None and self.recover_since is not None
        if s.t - self.recover_since < self.clear_delay:
            return None
        onset = self.onset
        self.phase, self.onset, self.recover_since = "idle", None, None
        return ConditionEvent(self.kind, "cleared", onset, s.t, (s,))


class Evaluator(ABC):
    """Feeds one metric's samples, in sample-time order, to the state machines of its conditions;
    subclasses say what each sample means for each condition (`verdicts`) and explain a change."""

    machines: dict[str, Machine]

    def __init__(self) -> None:
        self.last_t: dt.datetime | None = None

    def feed(self, samples: list[Sample]) -> list[ConditionEvent]:
        events: list[ConditionEvent] = []
        for s in samples:
            if self.last_t is not None and s.t < self.last_t:
                raise OutOfOrder(s.t, self.last_t)
            self.last_t = s.t
            for kind, verdict in self.verdicts(s).items():
                event = self.machines[kind].step(s, verdict)
                if event is not None:
                    events.append(self._explained(event))
        return events

    @abstractmethod
    def verdicts(self, s: Sample) -> dict[str, Verdict]: ...

    @abstractmethod
    def _explained(self, event: ConditionEvent) -> ConditionEvent: ...


class PatientEvaluator(Evaluator):
    """The tissue-O2 conditions of one patient. Feed its tissue-O2 samples in sample-time order."""

    def __init__(self, params: RuleParams) -> None:
        super().__init__()
        self.params = params
        gap = params.no_data_delay
        self.machines = {
            Kind.CRITICAL_LOW: Machine(Kind.CRITICAL_LOW, params.critical_delay, params.clear_delay, gap),
            Kind.LOW: Machine(Kind.LOW, params.low_delay, params.clear_delay, gap),
            Kind.RAPID_FALL: Machine(Kind.RAPID_FALL, dt.timedelta(0), params.clear_delay, gap),
            Kind.SIGNAL_QUALITY: Machine(Kind.SIGNAL_QUALITY, params.quality_delay, params.clear_delay, gap),
        }
        self._window: deque[Sample] = deque()

    def verdicts(self, s: Sample) -> dict[str, Verdict]:
        p = self.params
        out: dict[str, Verdict] = {Kind.SIGNAL_QUALITY: _quality_verdict(s.quality, p.quality_level)}
        if s.quality is not None and s.quality < p.quality_level:
            out.update({Kind.CRITICAL_LOW: "skip", Kind.LOW: "skip", Kind.RAPID_FALL: "skip"})
            return out
        out[Kind.CRITICAL_LOW] = _below_verdict(s.value, p.critical_threshold, p.clear_margin)
        out[Kind.LOW] = _below_verdict(s.value, p.low_threshold, p.clear_margin)
        out[Kind.RAPID_FALL] = self._fall_verdict(s)
        return out

    def _fall_verdict(self, s: Sample) -> Verdict:
        p = self.params
        self._window.append(s)
        while self._window and s.t - self._window[0].t > p.rapid_fall_window:
            self._window.popleft()
        drop = max(x.value for x in self._window) - s.value
        if drop >= p.rapid_fall_drop:
            return "bad"
        return "good" if drop < p.rapid_fall_drop - p.clear_margin else "neutral"

    def _explained(self, event: ConditionEvent) -> ConditionEvent:
        p = self.params
        detail: dict[str, Any] = {"threshold": p.threshold(event.kind), "delay_s": p.delay(event.kind).total_seconds()}
        if event.kind == Kind.RAPID_FALL:
            detail["window_s"] = p.rapid_fall_window.total_seconds()
            top = max(self._window, key=lambda x: x.value)
            event = ConditionEvent(event.kind, event.change, event.onset, event.at, (top, *event.samples), detail)
            return event
        detail["clear_margin"] = p.clear_margin if event.kind != Kind.SIGNAL_QUALITY else QUALITY_MARGIN
        return ConditionEvent(event.kind, event.change, event.onset, event.at, event.samples, detail)


class ThresholdEvaluator(Evaluator):
    """Below-threshold conditions of one metric (SpO2's critically low and low, the battery's
    low), decided by the same state machines as tissue O2's. Samples whose signal quality is
    under `quality_level` are skipped, as they are for tissue O2's physiological conditions."""

    def __init__(
        self,
        conditions: tuple[Below, ...],
        *,
        quality_level: float | None,
        clear_delay: dt.timedelta,
        max_gap: dt.timedelta,
    ) -> None:
        super().__init__()
        self.conditions = conditions
        self.quality_level = quality_level
        self.machines = {c.kind: Machine(c.kind, c.delay, clear_delay, max_gap) for c in conditions}

    def verdicts(self, s: Sample) -> dict[str, Verdict]:
        if self.quality_level is not None and s.quality is not None and s.quality < self.quality_level:
            return {c.kind: "skip" for c in self.conditions}
        return {c.kind: _below_verdict(s.value, c.threshold, c.margin) for c in self.conditions}

    def _explained(self, event: ConditionEvent) -> ConditionEvent:
        c = next(c for c in self.conditions if c.kind == event.kind)
        detail = {"threshold": c.threshold, "delay_s": c.delay.total_seconds(), "clear_margin": c.margin}
        return ConditionEvent(event.kind, event.change, event.onset, event.at, event.samples, detail)


def patient_evaluators(params: RuleParams) -> dict[str, Evaluator]:
    """A patient's evaluators by metric (the keys of vocabulary.METRIC_KINDS), under one rule."""
    gap, clear = params.no_data_delay, params.clear_delay
    spo2 = (params.below(Kind.SPO2_CRITICAL_LOW), params.below(Kind.SPO2_LOW))
    return {
        "tissue_o2": PatientEvaluator(params),
        "spo2": ThresholdEvaluator(spo2, quality_level=params.quality_level, clear_delay=clear, max_gap=gap),
        "battery": ThresholdEvaluator(
            (params.below(Kind.BATTERY_LOW),), quality_level=None, clear_delay=clear, max_gap=BATTERY_MAX_GAP
        ),
    }


class OutOfOrder(Exception):
    """A sample older than one already evaluated: the caller replays the window by sample time."""


def _below_verdict(value: float, threshold: float, margin: float) -> Verdict:
    if value < threshold:
        return "bad"
    return "good" if value >= threshold + margin else "neutral"


def _quality_verdict(quality: float | None, level: float) -> Verdict:
    if quality is None:
        return "neutral"
    if quality < level:
        return "bad"
    return "good" if quality >= level + QUALITY_MARGIN else "neutral"
