"""Reads behind the ward overview, the patient chart and the live snapshot.

Callers have already decided access (audit.access.policy) and written the audit event; these functions
only read. Alarm state comes through `patient_alarm_badges` / `patient_alarm_overlay`, which ask
the alarms app (alerts.selectors).

Tissue O2 is the primary metric: the cards' value, sparkline and trend, the chart's first panel.
The chart shows the other vital signs the sensors send (CHART_METRICS) in panels of their own; a
card shows the latest value of the metrics in PERFUSE_CARD_METRICS beside it, when the patient
has one from the last half hour.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
from django.conf import settings

from alerts import selectors as alarm_selectors
from alerts.vocabulary import PRIORITY_RANK
from audit.access.policy import AccessDecision
from config.live import iso
from dashboard.schemas import AnnotationOut, PatientSnapshotFrame, WardCard, WardSnapshotFrame
from telemetry.events import PointOut, SeqRange
from telemetry.models import Patient
from telemetry.selectors import (
    BUCKET_SECONDS,
    annotations_between,
    devices_by_patient,
    patient_series,
    readings_bucket_averages,
    readings_latest,
    readings_recent,
    readings_seq_ranges,
)
from telemetry.units import METRICS

METRIC = "tissue_o2"
# The chart's panels, top to bottom (keys of telemetry.units.METRICS).
CHART_METRICS = ("tissue_o2", "spo2", "skin_temp", "battery")
SPARKLINE_WINDOW = dt.timedelta(minutes=30)
SPARKLINE_BUCKET = dt.timedelta(seconds=30)
TREND_WINDOW = dt.timedelta(minutes=5)
# Slopes smaller than this (percentage points per minute) are drawn as a flat arrow: sensor noise
# and slow drift are not a trend a clinician should act on.
TREND_FLAT_PER_MINUTE = 0.5
_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
SNAPSHOT_MAX_POINTS = 20_000
ANNOTATIONS_MAX = 2000


@dataclass(frozen=True)
class AlarmBadge:
    priority: str  # high | medium | low (IEC 60601-1-8)
    state: str  # active | acknowledged
    count: int
    label: str
    since: str  # ISO-8601


@dataclass(frozen=True)
class AlarmOverlay:
    thresholds: list[dict[str, Any]]  # {"label", "low", "high", "priority"}: value bands of the alarm rules
    bands: dict[str, list[dict[str, Any]]]  # the same, by metric (tissue O2's are `thresholds`)
    periods: list[dict[str, Any]]  # {"start", "end" | None, "priority", "label"}: when alarms were open
    current: list[dict[str, Any]]  # open alarms: {"id", "priority", "state", "label", "since"}


def chart_metrics() -> list[dict[str, str]]:
    """The chart's panels as its page configuration names them."""
    return [{"metric": m, "label": METRICS[m].label, "unit": METRICS[m].symbol} for m in CHART_METRICS]


def card_metrics() -> list[str]:
    """The metrics a ward card shows beside tissue O2 (PERFUSE_CARD_METRICS)."""
    return [m for m in settings.PERFUSE_CARD_METRICS if m != METRIC]


def card_vitals(*, patient_ids: list[int], now: dt.datetime) -> dict[int, list[dict[str, Any]]]:
    """Per patient, the latest reading of each card metric from the last SPARKLINE_WINDOW."""
    vitals: dict[int, list[dict[str, Any]]] = {pid: [] for pid in patient_ids}
    for metric in card_metrics():
        for pid, last in readings_latest(patient_ids=patient_ids, metric=metric).items():
            if now - last.sample_time <= SPARKLINE_WINDOW:
                vitals[pid].append(
                    {"metric": metric, "label": METRICS[metric].label, "unit": METRICS[metric].symbol,
                     "value": last.value, "last_seen": iso(last.sample_time)}
                )  # fmt: skip
    return vitals


def patient_alarm_badges(*, patient_ids: list[int]) -> dict[int, AlarmBadge]:
    """Most severe open alarm per patient (alerts.selectors)."""
    return {
        pid: AlarmBadge(**badge) for pid, badge in alarm_selectors.patient_alarm_badges(patient_ids=patient_ids).items()
    }


def patient_alarm_overlay(*, patient_id: int, start: dt.datetime, end: dt.datetime) -> AlarmOverlay:
    """Threshold bands, alarm periods and open alarms for the chart (alerts.selectors)."""
    return AlarmOverlay(**alarm_selectors.patient_alarm_overlay(patient_id=patient_id, start=start, end=end))


def trend_per_minute(points: list[tuple[dt.datetime, float]], *, now: dt.datetime) -> float | None:
    """Least-squares slope (units per minute) of the points within TREND_WINDOW of now."""
    recent = [(t, v) for t, v in points if t >= now - TREND_WINDOW]
    if len(recent) < 3:
        return None
    xs = [(t - now).total_seconds() / 60 for t, _ in recent]
    ys = [v for _, v in recent]
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def trend_direction(slope: float | None) -> str | None:
    if slope is None:
        return None
    if slope > TREND_FLAT_PER_MINUTE:
        return "up"
    if slope < -TREND_FLAT_PER_MINUTE:
        return "down"
    return "flat"


def ward_cards(*, patients: list[Patient], now: dt.datetime) -> list[dict[str, Any]]:
    """One card per patient, most severe alarm first, then by pseudonym."""
    ids = [p.id for p in patients]
    latest = readings_latest(patient_ids=ids, metric=METRIC)
    lines = readings_bucket_averages(
        patient_ids=ids, metric=METRIC, start=now - SPARKLINE_WINDOW, end=now, width=SPARKLINE_BUCKET
    )
    badges = patient_alarm_badges(patient_ids=ids)
    vitals = card_vitals(patient_ids=ids, now=now)
    devices = devices_by_patient(patient_ids=ids)
    stale_after = settings.PERFUSE_STALE_SECONDS
    cards: list[dict[str, Any]] = []
    for p in patients:
        last = latest.get(p.id)
        slope = trend_per_minute(lines.get(p.id, []), now=now)
        badge = badges.get(p.id)
        age = (now - last.sample_time).total_seconds() if last else None
        cards.append(
            {
                "pseudonym": p.pseudonym,
                "ward": p.ward.code,
                "bed": p.bed,
                "devices": devices[p.id],
                "metric": METRIC,
                "unit": METRICS[METRIC].canonical,
                "value": last.value if last else None,
                "quality": last.quality if last else None,
                "last_seen": iso(last.sample_time) if last else None,
                "age_seconds": round(age, 1) if age is not None else None,
                "stale": age is None or age > stale_after,
                "trend": {"direction": trend_direction(slope), "per_minute": round(slope, 2) if slope else slope},
                "sparkline": [[iso(t), round(v, 2)] for t, v in lines.get(p.id, [])],
                "alarm": asdict(badge) if badge else None,
                "vitals": vitals[p.id],
            }
        )
    # The most urgent open alarm first (rank 3 is high), patients without alarms last.
    cards.sort(key=lambda c: (-PRIORITY_RANK.get((c["alarm"] or {}).get("priority", ""), 0), c["pseudonym"]))
    return cards


def patient_annotations(
    *, patient_id: int, start: dt.datetime, end: dt.datetime, access: AccessDecision | None = None
) -> list[dict[str, Any]]:
    """The marks in [start, end); with `access`, only those of the times it covers."""
    rows = annotations_between(patient_id=patient_id, start=start, end=end, limit=ANNOTATIONS_MAX)
    return [
        {"id": a.id, "kind": a.kind, "t": iso(a.time), "text": a.text, "data": a.data}
        for a in rows
        if access is None or access.within(a.time)
    ]


def alarm_periods_within(periods: list[dict[str, Any]], access: AccessDecision) -> list[dict[str, Any]]:
    """The alarm periods (of `patient_alarm_overlay`) that began inside the access's times."""
    return [p for p in periods if access.within(dt.datetime.fromisoformat(p["start"]))]


def _device_ranges(patient_id: int, since: dt.datetime) -> list[SeqRange]:
    return [
        SeqRange(device=r.device, first=r.first, last=r.last)
        for r in readings_seq_ranges(patient_id=patient_id, since=since)
    ]


def _recent_points(patient_id: int, since: dt.datetime) -> list[PointOut]:
    """The raw points of every charted metric from `since`, in sample-time order."""
    rows = [
        r
        for metric in CHART_METRICS
        for r in readings_recent(patient_id=patient_id, metric=metric, since=since, limit=SNAPSHOT_MAX_POINTS)
    ]
    rows.sort(key=lambda r: (r.sample_time, r.seq))
    return [PointOut(t=iso(r.sample_time), metric=r.metric, value=r.value, quality=r.quality, seq=r.seq) for r in rows]


def patient_snapshot(*, patient: Patient, now: dt.datetime) -> PatientSnapshotFrame:
    """First frame of a patient socket: recent raw points, the devices' seq positions, marks and
    open alarms, so the browser can draw at once and detect gaps in the deltas that follow."""
    since = now - dt.timedelta(seconds=settings.PERFUSE_LIVE_SNAPSHOT_SECONDS)
    overlay = patient_alarm_overlay(patient_id=patient.id, start=now - dt.timedelta(days=1), end=now)
    marks = patient_annotations(
        patient_id=patient.id, start=now - dt.timedelta(days=1), end=now + dt.timedelta(minutes=5)
    )
    return PatientSnapshotFrame(
        patient=patient.pseudonym,
        server_time=iso(now),
        since=iso(since),
        points=_recent_points(patient.id, since),
        ranges=_device_ranges(patient.id, since),
        annotations=msgspec.convert(marks, list[AnnotationOut]),  # the API's rows, typed for the frame
        alarms=overlay.current,
    )


def ward_snapshot(*, patients: list[Patient], now: dt.datetime) -> WardSnapshotFrame:
    cards = ward_cards(patients=patients, now=now)  # the API's cards, typed for the frame
    return WardSnapshotFrame(server_time=iso(now), patients=msgspec.convert(cards, list[WardCard]))


def series_points(
    *,
    patient_id: int,
    metric: str,
    start: dt.datetime,
    end: dt.datetime,
    max_points: int,
    access: AccessDecision | None = None,
) -> Any:
    """The history selector, with times rendered for JSON. With `access` limited to some periods
    (staff of a ward the patient left), the span is clamped to them and only points, or whole
    buckets, inside them are returned."""
    if access is not None:
        window = access.clamp(start, end)
        if window is None:
            return "raw", []
        start, end = window
    series = patient_series(patient_id=patient_id, metric=metric, start=start, end=end, max_points=max_points)
    width = dt.timedelta(seconds=BUCKET_SECONDS.get(series.resolution, 0))
    return series.resolution, [
        {**p, "t": iso(p["t"])} for p in series.points if access is None or access.within(p["t"], width)
    ]
