"""The alarm processor on the other vital signs, against PostgreSQL with time frozen: SpO2 low and
critically low (physiological), the sensor's low battery (technical), their ward rule fields, and
metrics that arrive on clocks of their own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine

from alerts.evaluation import PatientEvaluator, RuleParams, ThresholdEvaluator, patient_evaluators
from alerts.models import RULE_DEFAULTS, Alarm
from alerts.services import rule_current_ward, rule_update
from alerts.vocabulary import KIND_CATEGORY, KIND_LABELS, KIND_METRIC, KIND_PRIORITY, METRIC_KINDS, Kind
from audit.models import AuditEvent
from audit.trail import Actor
from telemetry.units import METRICS
from tests.alarm_factories import insert, staff, verified
from tests.alerts.test_alarm_engine import T0
from tests.alerts.test_alarm_engine import Bed as TissueBed

pytestmark = pytest.mark.django_db
A = Alarm.State


class Bed(TissueBed):
    """The engine tests' bed (one patient, a processor, a frozen clock), whose sensor sends
    other metrics too."""

    def send(
        self,
        metric: str,
        values: list[float],
        *,
        start: float,
        every: float = 1,
        quality: float | None = None,
        now: float | None = None,
    ) -> None:
        """Readings of `metric` from `start` s, `every` s apart, handed to the engine at `now`
        (default: the last sample's time)."""
        samples = [(T0 + dt.timedelta(seconds=start + i * every), v, quality) for i, v in enumerate(values)]
        rows = insert(self.patient, self.device, samples, metric=metric)
        last = start + (len(values) - 1) * every
        self.engine.process(rows, now=self.at(now if now is not None else last))


@pytest.fixture
def bed() -> Iterator[Bed]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield Bed(traveller)


def test_every_kind_is_named_once_with_its_metric_priority_and_category() -> None:
    assert set(KIND_LABELS) == set(Kind) == set(KIND_PRIORITY)
    # Decided by time (no data) or by the notification outbox (a failing channel), not by samples:
    assert set(KIND_METRIC) == set(Kind) - {Kind.NO_DATA, Kind.NOTIFICATION_FAILED, Kind.HL7_REJECTED}
    assert set(METRIC_KINDS) <= set(METRICS)
    assert (KIND_PRIORITY[Kind.SPO2_CRITICAL_LOW], KIND_PRIORITY[Kind.SPO2_LOW], KIND_PRIORITY[Kind.BATTERY_LOW]) == (
        "high",
        "medium",
        "low",
    )
    assert KIND_CATEGORY[Kind.SPO2_LOW] == KIND_CATEGORY[Kind.SPO2_CRITICAL_LOW] == "physiological"
    assert KIND_CATEGORY[Kind.BATTERY_LOW] == "technical"


def test_one_evaluator_per_metric_each_with_its_own_kinds() -> None:
    evaluators = patient_evaluators(RuleParams.from_values(RULE_DEFAULTS))
    assert set(evaluators) == set(METRIC_KINDS)
    assert isinstance(evaluators["tissue_o2"], PatientEvaluator)
    assert isinstance(evaluators["spo2"], ThresholdEvaluator)
    for metric, evaluator in evaluators.items():
        assert tuple(evaluator.machines) == METRIC_KINDS[metric]


def test_spo2_low_raises_after_its_delay_and_is_explained_with_its_metric(bed: Bed) -> None:
    bed.send("spo2", [97] * 5 + [88] * 15, start=0)  # below 90 % from 5 to 19: 14 s
    assert bed.alarms() == []
    bed.send("spo2", [88], start=20)
    [alarm] = bed.alarms()
    assert (alarm.kind, alarm.priority, alarm.category, alarm.latched) == ("spo2_low", "medium", "physiological", False)
    assert alarm.condition_started_at == T0 + dt.timedelta(seconds=5)
    ex = alarm.explain
    assert (ex["metric"], ex["unit"], ex["threshold"], ex["delay_s"], ex["clear_margin"]) == (
        "spo2",
        "%",
        90.0,
        15,
        2.0,
    )
    assert ex["samples"][-1]["value"] == 88 and ex["physiological"] is True
    assert AuditEvent.objects.filter(action="alarm.raised", subject="pt-alarm").count() == 1


def test_spo2_desaturation_is_high_priority_latched_and_raises_the_low_alarm_too(bed: Bed) -> None:
    bed.send("spo2", [97] * 5 + [78] * 16, start=0)  # below 80 % from 5 s
    critical = bed.alarms("spo2_critical_low")
    assert [(a.priority, a.latched, a.condition_started_at) for a in critical] == [
        ("high", True, T0 + dt.timedelta(seconds=5))
    ]
    assert critical[0].explain["threshold"] == 80.0 and critical[0].explain["delay_s"] == 10
    assert len(bed.alarms("spo2_low")) == 1  # 15 s below 90 % as well
    assert bed.alarms("critical_low") == bed.alarms("low") == []  # tissue O2 is another metric


def test_spo2_recovers_past_its_margin_and_resolves_after_the_suppression_window(bed: Bed) -> None:
    bed.send("spo2", [88] * 16, start=0)
    [alarm] = bed.alarms("spo2_low")
    bed.send("spo2", [91] * 30, start=16)  # above 90 but inside the 2-point margin: still present
    alarm.refresh_from_db()
    assert alarm.condition_present
    bed.send("spo2", [92] * 16, start=46)  # 90 + 2: clears after the 15 s clear delay
    alarm.refresh_from_db()
    assert not alarm.condition_present and alarm.condition_cleared_at == T0 + dt.timedelta(seconds=61)
    bed.tick(61 + 120)
    alarm.refresh_from_db()
    assert alarm.state == A.RESOLVED


def test_low_quality_spo2_never_raises(bed: Bed) -> None:
    bed.send("spo2", [70] * 60, start=0, quality=0.2)  # motion artefact: values not believed
    assert bed.alarms() == []


def test_low_battery_is_a_technical_alarm_from_readings_a_minute_apart(bed: Bed) -> None:
    bed.send("battery", [3900, 3600, 3450], start=0, every=60)  # below 3500 mV from 120 s
    assert bed.alarms() == []  # one low reading is not yet 60 s of low battery
    bed.send("battery", [3440], start=180)
    [alarm] = bed.alarms()
    assert (alarm.kind, alarm.priority, alarm.category, alarm.latched) == ("battery_low", "low", "technical", False)
    ex = alarm.explain
    assert (ex["metric"], ex["unit"], ex["threshold"], ex["delay_s"]) == ("battery", "mV", 3500.0, 60)
    assert ex["physiological"] is False and ex["device"] == bed.device.device_id
    # A new battery: the condition clears (two readings past the margin, the clear delay apart).
    bed.send("battery", [4100, 4100], start=240, every=60)
    alarm.refresh_from_db()
    assert not alarm.condition_present


def test_a_ward_rule_moves_the_spo2_and_battery_thresholds(bed: Bed) -> None:
    admin = verified(staff("admin", "admin"))
    values = rule_current_ward(bed.patient.ward).values() | {"spo2_low_threshold": 85, "battery_low_threshold": 3300}
    rule_update(ward=bed.patient.ward, actor=Actor(admin.pk, "admin", "admin"), user=admin, values=values)
    bed.send("spo2", [88] * 40, start=0)
    bed.send("battery", [3400, 3400, 3400], start=0, every=60, now=120)
    assert bed.alarms() == []
    bed.send("spo2", [84] * 16, start=40)
    [alarm] = bed.alarms()
    assert alarm.kind == "spo2_low" and alarm.explain["threshold"] == 85.0 and alarm.rule.version == 2


def test_metrics_on_their_own_clocks_are_not_late_data(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two batches: the first writes the ward's default rule, which the second reloads (a replay).
    bed.send("tissue_o2", [60] * 30, start=0, quality=0.95)
    bed.send("tissue_o2", [60] * 30, start=30, quality=0.95)
    replays: list[Any] = []
    load = bed.engine._load

    def counted(pids: list[int], **kw: Any) -> Any:
        if pids:
            replays.append(pids)
        return load(pids, **kw)

    monkeypatch.setattr(bed.engine, "_load", counted)
    # An SpO2 probe whose readings reach the engine after tissue O2 readings of later times.
    bed.send("spo2", [88] * 16, start=30, now=59)
    assert replays == []  # SpO2 from 30 s is not older than anything SpO2 has seen
    [alarm] = bed.alarms()
    assert alarm.kind == "spo2_low" and alarm.condition_started_at == T0 + dt.timedelta(seconds=30)
    bed.send("spo2", [88] * 5, start=10, now=60)  # older than SpO2's own last reading: replayed
    assert replays == [[bed.patient.pk]]
    assert len(bed.alarms("spo2_low")) == 1  # the replay finds the same episode
