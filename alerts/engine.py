"""The alarm processor run by `manage.py run_engine` (see telemetry/engine.py for the loop).

How it works. `process(rows)` receives newly committed readings inside the engine's transaction.
Readings of the evaluated metrics (tissue O2, SpO2, battery: alerts.vocabulary.METRIC_KINDS) are
grouped per patient and metric and fed, in sample-time order, to that patient's evaluator of the
metric (alerts/evaluation.py, pure); the condition changes they report are reconciled with the
alarm rows through alerts/services.py. `tick(now)` runs the timers: resolution after
the suppression window, re-alert, escalation, the no-data check, and raising conditions that a
pause held back once the pause is over. With several engines (partitions by patient) only the
engine holding the timer lock runs `tick`; the others run `tick_local`, the held raises of the
patients whose evaluators they hold, and `forget` drops the evaluators when partitions move.

Nothing lives only in memory. The durable state is PostgreSQL: the readings, the open alarms
(condition onset, whether present, when cleared, the deciding sample time), pauses and rules.
An evaluator is a cache rebuilt from them: on first sight of a patient (engine start), when a
reading arrives older than one already evaluated (late or out-of-order data), or after a rule
change, the patient's recent window is replayed (telemetry.selectors.readings_window) with each
condition seeded from its open alarm. Order is per metric: an SpO2 reading older than the last
tissue-O2 one is not late. Replays are idempotent: an episode is identified by its
onset sample time, so a replay never raises an alarm twice.

Only readings inside the evaluation horizon count: from MAX_REPLAY before now to the ingest's
clock skew after it. Ingest stores nothing later than that, and nothing older would be replayed;
a row with another time (written some other way) could otherwise raise an alarm timed years
ahead, or overflow the datetime arithmetic of the timers and fail every engine loop after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from alerts import lifecycle, selectors, services
from alerts.evaluation import ConditionEvent, Evaluator, Machine, OutOfOrder, RuleParams, Sample, patient_evaluators
from alerts.models import RULE_DEFAULTS, AlarmRule
from alerts.selectors import OpenAlarm, pause_priorities_active
from alerts.vocabulary import KIND_METRIC, KIND_PRIORITY, METRIC_KINDS, PHYSIOLOGICAL_KINDS, SAMPLE_KINDS, Kind
from telemetry.models import Device, Patient
from telemetry.selectors import ReadingRow, calibration_find, patients_last_heard, readings_window
from telemetry.units import METRICS

log = logging.getLogger(__name__)
Streams = dict[str, list[Sample]]  # a patient's new samples by metric, each in sample-time order
# Replays never reach further back than this, however late a reading is.
MAX_REPLAY = dt.timedelta(hours=6)
NO_DATA_EVERY = dt.timedelta(seconds=1)
TIMER_BUDGET_SECONDS = 0.05


@dataclass
class PatientState:
    patient: Patient
    rule: AlarmRule
    evaluators: dict[str, Evaluator]  # by metric
    # Raises a pause held back, by kind: raised when the pause ends if still present.
    held: dict[str, ConditionEvent] = field(default_factory=dict)

    def machine(self, kind: str) -> Machine:
        return self.evaluators[KIND_METRIC[kind]].machines[kind]

    def behind(self, streams: Streams) -> bool:
        """Whether a stream starts before what its evaluator already saw (late data: replay)."""
        for metric, samples in streams.items():
            seen = self.evaluators[metric].last_t
            if seen is not None and samples[0].t < seen:
                return True
        return False

    def feed(self, streams: Streams) -> list[ConditionEvent]:
        found = [event for metric, samples in streams.items() for event in self.evaluators[metric].feed(samples)]
        return sorted(found, key=lambda e: e.at)


class AlarmProcessor:
    def __init__(self) -> None:
        self._patients: dict[int, PatientState] = {}
        self._rule_mark: tuple[Any, Any] | None = None
        self._ward_rules: dict[int, AlarmRule] = {}
        self._overrides: dict[int, AlarmRule] = {}
        self._next_no_data: dt.datetime | None = None
        # Timer parameters by rule version id (versions are immutable, so this never goes stale).
        self._timers: dict[int, tuple[dt.timedelta, dt.timedelta, dt.timedelta]] = {}

    # --- engine interface --------------------------------------------------------------------

    def process(self, rows: list[Any], *, now: dt.datetime) -> None:
        # No savepoint inside the engine's batch transaction: it isolated nothing (an error here
        # propagates and rolls the whole batch back, the other processors' writes and the cursor
        # moves with it) and cost two round trips a loop; alone, this is a transaction.
        with transaction.atomic(savepoint=False):
            self._refresh_rules()
            by_patient = _streams(rows, now)
            if not by_patient:
                return
            stale = [pid for pid, streams in by_patient.items() if self._stale(pid, streams)]
            since = min((_first(by_patient[pid]) for pid in stale), default=now)
            replayed = self._load(stale, now=now, since=since)
            for pid, streams in by_patient.items():
                state = self._patients.get(pid)
                if state is None:
                    continue  # discharged or unknown patient
                try:
                    found = replayed[pid] if pid in replayed else state.feed(streams)
                except OutOfOrder:  # cannot happen after the check above; replay to be safe
                    found = self._load([pid], now=now, since=_first(streams)).get(pid, [])
                self._apply(self._patients[pid], found, now=now)

    def _stale(self, pid: int, streams: Streams) -> bool:
        state = self._patients.get(pid)
        return state is None or state.behind(streams)

    def tick(self, *, now: dt.datetime) -> None:
        with transaction.atomic(savepoint=False):  # as in process: an error fails the whole tick
            self._refresh_rules()
            open_alarms = self._open_alarms()
            # Timers run highest priority first within a time budget; the rest wait for the next
            # tick (a fraction of a second), so a burst of escalations never delays new raises.
            budget_ends = time.monotonic() + TIMER_BUDGET_SECONDS
            due = sorted((a for a in open_alarms if self._timer_due(a, now)), key=lambda a: (-a.priority_rank, a.pk))
            for alarm in due:
                if time.monotonic() > budget_ends:
                    break
                services.alarm_timers(alarm_id=alarm.pk, now=now)
            pauses = pause_priorities_active(now)
            self._raise_held(open_alarms, pauses, now=now)
            if self._next_no_data is None or now >= self._next_no_data:
                self._next_no_data = now + NO_DATA_EVERY
                self._no_data(now, [a for a in open_alarms if a.kind == Kind.NO_DATA], pauses)

    def tick_local(self, *, now: dt.datetime) -> None:
        """On an engine that does not run the timers (telemetry/engine.py): only the raises a
        pause held back, which live in this engine's memory for the patients of its partitions."""
        if not any(state.held for state in self._patients.values()):
            return
        with transaction.atomic(savepoint=False):
            self._refresh_rules()
            self._raise_held(selectors.alarms_open_timers(), pause_priorities_active(now), now=now)

    def forget(self) -> None:
        """The engine gave partitions up: their patients' evaluators are another engine's now, and
        would miss what it processes; anyone seen again is rebuilt by a replay."""
        self._patients.clear()

    def _raise_held(self, open_alarms: list[OpenAlarm], pauses: dict[int, str], *, now: dt.datetime) -> None:
        open_keys = {(a.patient_id, a.kind) for a in open_alarms}
        for pid, state in self._patients.items():
            if not state.held:
                continue
            for kind, event in list(state.held.items()):
                if not state.machine(kind).present:
                    del state.held[kind]
                elif (pid, kind) not in open_keys and not _suppressed(kind, pauses.get(pid)):
                    del state.held[kind]
                    self._raise(state, event, now=now)

    def _open_alarms(self) -> list[OpenAlarm]:
        """The open alarms' timer fields only: this runs every loop."""
        alarms = selectors.alarms_open_timers()
        missing = {a.rule_id for a in alarms} - self._timers.keys()
        # Only when some are missing: even an empty `pk__in` costs the ORM its compiling.
        for rule in selectors.rules_by_id(missing) if missing else ():
            self._timers[rule.pk] = (
                dt.timedelta(seconds=rule.suppression_window_s),
                dt.timedelta(seconds=rule.realert_interval_s),
                dt.timedelta(seconds=rule.escalation_delay_s),
            )
        return alarms

    def _timer_due(self, alarm: OpenAlarm, now: dt.datetime) -> bool:
        suppression, realert, escalation = self._timers[alarm.rule_id]  # rule versions never change
        view = alarm.view
        return (
            lifecycle.due_resolution(view, now=now, suppression_window=suppression)
            or lifecycle.due_realert(view, now=now, realert_interval=realert)
            or lifecycle.due_escalation(view, now=now, escalation_delay=escalation)
        )

    # --- evaluation state ----------------------------------------------------------------------

    def _refresh_rules(self) -> None:
        key = selectors.rules_mark()
        if key == self._rule_mark:
            return
        self._rule_mark = key
        self._ward_rules, self._overrides = {}, {}
        for rule in selectors.rules_in_version_order():
            if rule.patient_id is None:
                self._ward_rules[rule.ward_id] = rule
            elif rule.retired:
                self._overrides.pop(rule.patient_id, None)
            else:
                self._overrides[rule.patient_id] = rule
        # New thresholds: every evaluator is rebuilt (replayed) under its new rule on next data.
        self._patients.clear()

    def _rule_for(self, patient: Patient) -> AlarmRule:
        rule = self._overrides.get(patient.pk) or self._ward_rules.get(patient.ward_id)
        if rule is None:
            rule = services.rule_ensure_ward_default(ward=patient.ward)
            self._ward_rules[patient.ward_id] = rule
        return rule

    def _load(self, pids: list[int], *, now: dt.datetime, since: dt.datetime) -> dict[int, list[ConditionEvent]]:
        """Rebuild evaluators for these patients by replaying their recent readings."""
        if not pids:
            return {}
        patients = Patient.objects.select_related("ward").filter(pk__in=pids, discharged_at__isnull=True).in_bulk()
        states: dict[int, PatientState] = {}
        start = now
        since = max(since, now - MAX_REPLAY)  # so the lookback below stays far from year 1
        for pid, patient in patients.items():
            rule = self._rule_for(patient)
            params = RuleParams.from_values(rule.values())
            states[pid] = PatientState(patient, rule, patient_evaluators(params))
            start = min(start, min(since, now) - params.lookback())
        oldest, newest = _horizon(now)
        start = max(start, oldest)
        _seed(states)
        windows = {
            metric: readings_window(patient_ids=list(states), metric=metric, start=start, end=newest)
            for metric in METRIC_KINDS
        }
        found: dict[int, list[ConditionEvent]] = {}
        for pid, state in states.items():
            found[pid] = state.feed(
                {metric: [_sample(row) for row in rows.get(pid, [])] for metric, rows in windows.items()}
            )
            self._patients[pid] = state
        return found

    # --- reconciling conditions with alarm rows ------------------------------------------------

    def _apply(self, state: PatientState, found: Iterable[ConditionEvent], *, now: dt.datetime) -> None:
        for event in found:
            open_alarm = selectors.alarm_open(patient_id=state.patient.pk, kind=event.kind)
            if event.change == "raised":
                if open_alarm is None:
                    self._raise(state, event, now=now)
                elif not (open_alarm.condition_present and open_alarm.condition_started_at == event.onset):
                    services.alarm_recur(
                        alarm_id=open_alarm.pk, onset=event.onset, now=now, explain=_explain(state, event)
                    )
            else:
                state.held.pop(event.kind, None)
                if open_alarm and open_alarm.condition_present and open_alarm.condition_started_at == event.onset:
                    services.alarm_condition_clear(alarm_id=open_alarm.pk, cleared_at=event.at, now=now)
                    services.alarm_timers(alarm_id=open_alarm.pk, now=now)

    def _raise(self, state: PatientState, event: ConditionEvent, *, now: dt.datetime) -> None:
        patient = state.patient
        if selectors.alarm_episode_exists(patient_id=patient.pk, kind=event.kind, onset=event.onset):
            return  # this episode already had its alarm (replay after restart or late data)
        pause = selectors.pause_active(patient.pk, now)
        if _suppressed(event.kind, pause.priority if pause else None):
            state.held[event.kind] = event
            return
        services.alarm_raise(
            patient=patient,
            rule=state.rule,
            kind=event.kind,
            onset=event.onset,
            now=now,
            explain=_explain(state, event),
        )

    def _no_data(self, now: dt.datetime, open_no_data: list[OpenAlarm], pauses: dict[int, str]) -> None:
        """Monitored patients (open assignment, not discharged) silent for their no-data delay.
        Only candidates come back from SQL: the silent ones under the shortest delay of any rule,
        and those with an open no-data alarm (to clear it)."""
        open_by_patient = {a.patient_id: a for a in open_no_data}
        delays = [r.no_data_delay_s for r in (*self._ward_rules.values(), *self._overrides.values())]
        cutoff = now - dt.timedelta(seconds=min(delays, default=RULE_DEFAULTS["no_data_delay_s"]))
        candidates = patients_last_heard(heard_before=cutoff, patient_ids=list(open_by_patient))
        unknown = [pid for pid, _, _ in candidates if pid not in self._patients]
        loaded = Patient.objects.select_related("ward").in_bulk(unknown) if unknown else {}
        for pid, last, devices in candidates:
            state = self._patients.get(pid)
            patient = state.patient if state is not None else loaded[pid]
            rule = self._rule_for(patient)
            silent = now - last >= dt.timedelta(seconds=rule.no_data_delay_s)
            alarm = open_by_patient.get(pid)
            if alarm is not None:
                if alarm.condition_present and not silent:
                    services.alarm_condition_clear(alarm_id=alarm.pk, cleared_at=last, now=now)
                elif not alarm.condition_present and silent and alarm.condition_started_at != last:
                    services.alarm_recur(
                        alarm_id=alarm.pk, onset=last, now=now, explain=_no_data_explain(rule, last, now, devices)
                    )
                continue
            if not silent or _suppressed(Kind.NO_DATA, pauses.get(pid)):
                continue
            if selectors.alarm_episode_exists(patient_id=pid, kind=Kind.NO_DATA, onset=last):
                continue
            services.alarm_raise(
                patient=patient,
                rule=rule,
                kind=Kind.NO_DATA,
                onset=last,
                now=now,
                explain=_no_data_explain(rule, last, now, devices),
            )


# --- helpers -----------------------------------------------------------------------------------


def _streams(rows: list[Any], now: dt.datetime) -> dict[int, Streams]:
    """The rows of evaluated metrics inside the horizon, by patient and metric, each stream in
    sample-time (then seq) order."""
    oldest, newest = _horizon(now)
    by_patient: dict[int, Streams] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.patient_id is not None and row.metric in METRIC_KINDS and oldest <= row.sample_time <= newest:
            by_patient[row.patient_id][row.metric].append(_sample(row))
    for streams in by_patient.values():
        for samples in streams.values():
            samples.sort(key=lambda s: (s.t, s.seq))
    return by_patient


def _first(streams: Streams) -> dt.datetime:
    return min(samples[0].t for samples in streams.values())


def _sample(row: ReadingRow) -> Sample:
    return Sample(
        row.sample_time, float(row.value), row.signal_quality, row.seq, row.device_id, row.calibration_id, row.firmware
    )


def _horizon(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Sample times the processor evaluates (see the module docstring)."""
    return now - MAX_REPLAY, now + dt.timedelta(seconds=settings.PERFUSE_INGEST_CLOCK_SKEW_SECONDS)


def _suppressed(kind: str, paused: str | None) -> bool:
    """Whether a pause holding back `paused` (its priority; None: no pause) holds this kind back."""
    return lifecycle.suppressed_by_pause(KIND_PRIORITY[kind], paused)


def _seed(states: dict[int, PatientState]) -> None:
    """Start each condition from its open alarm so a replay continues the stored episode."""
    for alarm in selectors.alarms_open_of(patient_ids=states, kinds=SAMPLE_KINDS):
        machine = states[alarm.patient_id].machine(alarm.kind)
        if alarm.condition_present:
            decided = dt.datetime.fromisoformat(alarm.explain.get("at", alarm.condition_started_at.isoformat()))
            machine.seed_active(alarm.condition_started_at, decided)
        elif alarm.condition_cleared_at is not None:
            machine.seed_idle(alarm.condition_cleared_at)


def _rule_json(rule: AlarmRule) -> dict[str, Any]:
    return {"id": rule.pk, "version": rule.version, "scope": "patient" if rule.patient_id else "ward", **rule.values()}


def _explain(state: PatientState, event: ConditionEvent) -> dict[str, Any]:
    samples = list(event.samples)
    qualities = [s.quality for s in samples if s.quality is not None]
    last = samples[-1] if samples else None
    device_pk = last.device_id if last else None
    device = Device.objects.filter(pk=device_pk).values_list("device_id", flat=True).first() if device_pk else None
    calibration = None
    if last and device_pk and last.calibration_id:
        cal = calibration_find(device_pk=device_pk, calibration_id=last.calibration_id)
        calibration = {
            "id": last.calibration_id,
            "coefficients": cal.coefficients if cal else None,
            "effective_from": cal.effective_from.isoformat() if cal else None,
        }
    metric = KIND_METRIC[event.kind]
    return {
        "kind": event.kind,
        "metric": metric,
        "unit": METRICS[metric].canonical,
        "physiological": event.kind in PHYSIOLOGICAL_KINDS,
        "onset": event.onset.isoformat(),
        "at": event.at.isoformat(),
        **event.detail,
        "samples": [s.as_json() for s in samples],
        "signal_quality": {
            "min": min(qualities) if qualities else None,
            "mean": sum(qualities) / len(qualities) if qualities else None,
            "level": state.rule.quality_level,
        },
        "device": device,
        "firmware": last.firmware if last else None,
        "calibration": calibration,
        "rule": _rule_json(state.rule),
    }


def _no_data_explain(rule: AlarmRule, last: dt.datetime, now: dt.datetime, devices: list[str]) -> dict[str, Any]:
    return {
        "kind": Kind.NO_DATA.value,
        "physiological": False,
        "onset": last.isoformat(),
        "at": now.isoformat(),
        "last_sample_time": last.isoformat(),
        "delay_s": rule.no_data_delay_s,
        "silent_s": round((now - last).total_seconds(), 1),
        "devices": sorted(devices),
        "samples": [],
        "rule": _rule_json(rule),
    }
