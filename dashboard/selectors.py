"""Reads behind the ward overview, the patient chart and the live snapshot.

Callers have already decided access (audit.access.policy) and written the audit event; these functions
only read. Alarm state comes through `patient_alarm_badges` / `patient_alarm_overlay`, which ask
the alarms app (alerts.selectors).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
from django.conf import settings
from django.db import connection

from alerts import selectors as alarm_selectors
from alerts.vocabulary import PRIORITY_RANK
from config.live import iso
from dashboard.schemas import AnnotationOut, PatientSnapshotFrame, WardCard, WardSnapshotFrame
from telemetry.events import PointOut, SeqRange
from telemetry.models import Annotation, Patient
from telemetry.selectors import patient_series
from telemetry.units import METRICS

METRIC = "tissue_o2"
SPARKLINE_WINDOW = dt.timedelta(minutes=30)
SPARKLINE_BUCKET = dt.timedelta(seconds=30)
TREND_WINDOW = dt.timedelta(minutes=5)
# Slopes smaller than this (percentage points per minute) are drawn as a flat arrow: sensor noise
# and slow drift are not a trend a clinician should act on.
TREND_FLAT_PER_MINUTE = 0.5
_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


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
    periods: list[dict[str, Any]]  # {"start", "end" | None, "priority", "label"}: when alarms were open
    current: list[dict[str, Any]]  # open alarms: {"id", "priority", "state", "label", "since"}


def patient_alarm_badges(*, patient_ids: list[int]) -> dict[int, AlarmBadge]:
    """Most severe open alarm per patient (alerts.selectors)."""
    return {
        pid: AlarmBadge(**badge) for pid, badge in alarm_selectors.patient_alarm_badges(patient_ids=patient_ids).items()
    }


def patient_alarm_overlay(*, patient_id: int, start: dt.datetime, end: dt.datetime) -> AlarmOverlay:
    """Threshold bands, alarm periods and open alarms for the chart (alerts.selectors)."""
    return AlarmOverlay(**alarm_selectors.patient_alarm_overlay(patient_id=patient_id, start=start, end=end))


def _latest(patient_ids: list[int]) -> dict[int, tuple[dt.datetime, float, float | None]]:
    if not patient_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.id, r.sample_time, r.value, r.signal_quality FROM unnest(%s::bigint[]) AS p(id) "
            "CROSS JOIN LATERAL (SELECT sample_time, value, signal_quality FROM telemetry_reading "
            "WHERE patient_id = p.id AND metric = %s ORDER BY sample_time DESC LIMIT 1) r",
            [patient_ids, METRIC],
        )
        return {pid: (t, value, quality) for pid, t, value, quality in cursor.fetchall()}


def _sparklines(patient_ids: list[int], now: dt.datetime) -> dict[int, list[tuple[dt.datetime, float]]]:
    if not patient_ids:
        return {}
    lines: dict[int, list[tuple[dt.datetime, float]]] = {pid: [] for pid in patient_ids}
    params: list[Any] = [SPARKLINE_BUCKET, _ORIGIN, patient_ids, METRIC, now - SPARKLINE_WINDOW, now]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT patient_id, date_bin(%s, sample_time, %s) AS bucket, avg(value) FROM telemetry_reading "
            "WHERE patient_id = ANY(%s) AND metric = %s AND sample_time >= %s AND sample_time <= %s "
            "GROUP BY patient_id, bucket ORDER BY patient_id, bucket",
            params,
        )
        for pid, bucket, avg in cursor.fetchall():
            lines[pid].append((bucket, avg))
    return lines


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
    latest = _latest(ids)
    lines = _sparklines(ids, now)
    badges = patient_alarm_badges(patient_ids=ids)
    stale_after = settings.PERFUSE_STALE_SECONDS
    cards: list[dict[str, Any]] = []
    for p in patients:
        last = latest.get(p.id)
        slope = trend_per_minute(lines.get(p.id, []), now=now)
        badge = badges.get(p.id)
        age = (now - last[0]).total_seconds() if last else None
        cards.append(
            {
                "pseudonym": p.pseudonym,
                "ward": p.ward.code,
                "metric": METRIC,
                "unit": METRICS[METRIC].canonical,
                "value": last[1] if last else None,
                "quality": last[2] if last else None,
                "last_seen": iso(last[0]) if last else None,
                "age_seconds": round(age, 1) if age is not None else None,
                "stale": age is None or age > stale_after,
                "trend": {"direction": trend_direction(slope), "per_minute": round(slope, 2) if slope else slope},
                "sparkline": [[iso(t), round(v, 2)] for t, v in lines.get(p.id, [])],
                "alarm": asdict(badge) if badge else None,
            }
        )
    # The most urgent open alarm first (rank 3 is high), patients without alarms last.
    cards.sort(key=lambda c: (-PRIORITY_RANK.get((c["alarm"] or {}).get("priority", ""), 0), c["pseudonym"]))
    return cards


def patient_annotations(*, patient_id: int, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    rows = Annotation.objects.filter(patient_id=patient_id, time__gte=start, time__lt=end).order_by("time", "id")
    return [{"id": a.id, "kind": a.kind, "t": iso(a.time), "text": a.text, "data": a.data} for a in rows[:2000]]


def _device_ranges(patient_id: int, since: dt.datetime) -> list[SeqRange]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.device_id, min(r.seq), max(r.seq) FROM telemetry_reading r "
            "JOIN telemetry_device d ON d.id = r.device_id WHERE r.patient_id = %s AND r.sample_time >= %s "
            "GROUP BY d.device_id ORDER BY d.device_id",
            [patient_id, since],
        )
        return [SeqRange(device=device, first=first, last=last) for device, first, last in cursor.fetchall()]


def _recent_points(patient_id: int, since: dt.datetime) -> list[PointOut]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sample_time, metric, value, signal_quality, seq FROM telemetry_reading "
            "WHERE patient_id = %s AND metric = %s AND sample_time >= %s ORDER BY sample_time, seq LIMIT 20000",
            [patient_id, METRIC, since],
        )
        return [
            PointOut(t=iso(t), metric=metric, value=value, quality=quality, seq=seq)
            for t, metric, value, quality, seq in cursor.fetchall()
        ]


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


def series_points(*, patient_id: int, metric: str, start: dt.datetime, end: dt.datetime, max_points: int) -> Any:
    """The history selector, with times rendered for JSON."""
    series = patient_series(patient_id=patient_id, metric=metric, start=start, end=end, max_points=max_points)
    return series.resolution, [{**p, "t": iso(p["t"])} for p in series.points]
