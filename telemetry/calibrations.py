"""Calibrations managed by staff, and reprocessing of a span when one is corrected after the fact.

How a tissue-O2 value is calibrated (at ingest and here alike): a reading that names a
calibration id uses that calibration's coefficients; one that names none uses the device's
calibration in effect at its sample time (the latest `effective_from` not after it); calibrated =
gain * value + offset, and a calibration without coefficients leaves the value as it is.

Reprocessing recomputes canonical values from the raw value and unit every reading keeps, so it
can be repeated and never compounds. A changed value is kept as a ReadingRevision (old and new
value beside the reading's key) before the reading is updated; the 1-minute and 1-hour rollups of
the touched buckets are rebuilt the way re-assignment rebuilds them (the engine's cursor row
locked first, only what the engine already folded in; TimescaleDB's continuous aggregates pick up
the change from their invalidation log); a reprocessing annotation marks the span on the chart;
and `readings_reprocessed` lets the alarms app re-explain alarms of the span. Alarms are never
removed by reprocessing: an alarm raised on values that a correction moved stays in the record
with the correction beside it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from audit.trail import SYSTEM, Actor, audit_record
from telemetry.events import annotation_publish
from telemetry.models import (
    Annotation,
    Assignment,
    Calibration,
    CalibrationRevision,
    Device,
    Patient,
    Reprocessing,
)
from telemetry.selectors import BUCKET_SECONDS, bucket_floor
from telemetry.services import RegistryError, engine_watermark_lock, rollups_rebuild
from telemetry.signals import readings_reprocessed
from telemetry.storage import timescale_in_use
from telemetry.units import METRICS

CALIBRATED_METRIC = "tissue_o2"


def coefficients_apply(value: float, coefficients: Mapping[str, Any] | None) -> float:
    if not coefficients:
        return value
    return float(coefficients.get("gain", 1.0)) * value + float(coefficients.get("offset", 0.0))


def coefficients_for(
    calibration_id: str | None,
    sample_time: dt.datetime,
    by_id: Mapping[str, Any],
    calibrations: Sequence[tuple[Any, ...]],
) -> Mapping[str, Any] | None:
    """The coefficients that apply to one reading. `calibrations` are the device's
    (calibration_id, coefficients, effective_from) rows ordered by effective_from."""
    if calibration_id:
        coefficients: Mapping[str, Any] | None = by_id.get(calibration_id)
        return coefficients
    effective = [c for c in calibrations if c[2] <= sample_time]
    return effective[-1][1] if effective else None


def coefficients_clean(gain: float, offset: float) -> dict[str, float]:
    """Coefficients a person typed: finite, and a gain that keeps the signal's direction."""
    if not (math.isfinite(gain) and math.isfinite(offset)):
        raise RegistryError("gain and offset must be finite numbers")
    if not 0.1 <= gain <= 10.0:
        raise RegistryError("gain must be between 0.1 and 10")
    if not -100.0 <= offset <= 100.0:
        raise RegistryError("offset must be between -100 and 100")
    return {"gain": gain, "offset": offset}


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise RegistryError("a reason is required")
    return reason[:300]


@transaction.atomic
def calibration_add(
    *,
    device_id: str,
    calibration_id: str,
    gain: float,
    offset: float,
    effective_from: dt.datetime,
    reason: str,
    actor: Actor = SYSTEM,
) -> Calibration:
    """A device administrator's calibration for a device; marks the chart of the patient then wearing it.

    A calibration id the device already reported (coefficients unknown until now) gets its
    coefficients; an id that already has coefficients is refused: changing those is a correction
    (`calibration_correct`), which keeps what it replaces."""
    device = Device.objects.select_for_update().filter(device_id=device_id).first()
    if device is None:
        raise RegistryError(f"unknown device {device_id!r}")
    calibration_id = calibration_id.strip()
    if not calibration_id or len(calibration_id) > 64:
        raise RegistryError("calibration id must be 1 to 64 characters")
    coefficients = coefficients_clean(gain, offset)
    why = _reason(reason)
    calibration = Calibration.objects.filter(device=device, calibration_id=calibration_id).first()
    if calibration is not None and calibration.coefficients:
        raise RegistryError(f"calibration {calibration_id!r} already has coefficients: correct it instead")
    if calibration is None:
        calibration = Calibration(device=device, calibration_id=calibration_id)
    calibration.coefficients = coefficients
    calibration.effective_from = effective_from
    calibration.source = Calibration.Source.STAFF
    calibration.reason = why
    calibration.created_by = actor.username
    calibration.save()
    _annotate(
        device,
        effective_from,
        f"Calibration {calibration_id} (gain {gain:g}, offset {offset:+g})",
        {
            "calibration_id": calibration_id,
            "coefficients": coefficients,
            "reason": why,
        },
    )
    audit_record(
        actor=actor,
        action="calibration.added",
        subject=device.device_id,
        detail={
            "calibration_id": calibration_id,
            "coefficients": coefficients,
            "effective_from": effective_from.isoformat(),
        },
    )
    return calibration


@transaction.atomic
def calibration_correct(
    *,
    device_id: str,
    calibration_id: str,
    gain: float,
    offset: float,
    reason: str,
    actor: Actor = SYSTEM,
) -> tuple[Calibration, Reprocessing]:
    """Replace a calibration's coefficients (the old ones kept) and reprocess the span it covered."""
    calibration = (
        Calibration.objects.select_for_update()
        .select_related("device")
        .filter(device__device_id=device_id, calibration_id=calibration_id)
        .first()
    )
    if calibration is None:
        raise RegistryError(f"unknown calibration {calibration_id!r} of device {device_id!r}")
    coefficients = coefficients_clean(gain, offset)
    why = _reason(reason)
    now = dt.datetime.now(dt.UTC)
    CalibrationRevision.objects.create(
        calibration=calibration,
        coefficients=calibration.coefficients,
        effective_from=calibration.effective_from,
        replaced_at=now,
        replaced_by=actor.username,
        reason=why,
    )
    old = calibration.coefficients
    calibration.coefficients = coefficients
    calibration.save(update_fields=["coefficients"])
    start, end = _span_of(calibration)
    reprocessing = _reprocess(calibration.device, start=start, end=end, reason=why, actor=actor)
    audit_record(
        actor=actor,
        action="calibration.corrected",
        subject=device_id,
        detail={"calibration_id": calibration_id, "old": old, "new": coefficients} | _reprocessing_detail(reprocessing),
    )
    return calibration, reprocessing


def _span_of(calibration: Calibration) -> tuple[dt.datetime, dt.datetime]:
    """From the calibration's effective time to the next calibration's (or now): the readings it
    can have calibrated, whether they named it or took it as the one in effect."""
    later = (
        Calibration.objects.filter(device=calibration.device, effective_from__gt=calibration.effective_from)
        .order_by("effective_from")
        .values_list("effective_from", flat=True)
        .first()
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT max(sample_time) FROM telemetry_reading WHERE device_id = %s::bigint AND calibration_id = %s",
            [calibration.device_id, calibration.calibration_id],
        )
        row = cursor.fetchone()
    last_named = row[0] if row and row[0] else None
    end = later or dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    if last_named is not None and last_named >= end:
        end = last_named + dt.timedelta(microseconds=1)
    return calibration.effective_from, end


@dataclass(frozen=True)
class _Changed:
    patient_id: int | None
    metric: str
    seq: int
    sample_time: dt.datetime
    old: float
    new: float


@transaction.atomic
def readings_reprocess(
    *, device_id: str, start: dt.datetime, end: dt.datetime, reason: str, actor: Actor = SYSTEM
) -> Reprocessing:
    """Recompute a device's calibrated values in [start, end) from the kept raw values."""
    if start >= end:
        raise RegistryError("start must be before end")
    device = Device.objects.select_for_update().filter(device_id=device_id).first()
    if device is None:
        raise RegistryError(f"unknown device {device_id!r}")
    reprocessing = _reprocess(device, start=start, end=end, reason=_reason(reason), actor=actor)
    audit_record(
        actor=actor, action="readings.reprocessed", subject=device.device_id, detail=_reprocessing_detail(reprocessing)
    )
    return reprocessing


def _reprocessing_detail(reprocessing: Reprocessing) -> dict[str, Any]:
    return {
        "reprocessing": reprocessing.pk,
        "start": reprocessing.start.isoformat(),
        "end": reprocessing.end.isoformat(),
        "examined": reprocessing.examined,
        "changed": reprocessing.changed,
        "reason": reprocessing.reason,
    }


def _reprocess(device: Device, *, start: dt.datetime, end: dt.datetime, reason: str, actor: Actor) -> Reprocessing:
    """The recomputation itself, inside the caller's transaction (the caller writes its audit event)."""
    why = reason
    calibrations = list(
        Calibration.objects.filter(device=device)
        .order_by("effective_from")
        .values_list("calibration_id", "coefficients", "effective_from")
    )
    by_id = {c[0]: c[1] for c in calibrations}
    convert = METRICS[CALIBRATED_METRIC].converters
    with connection.cursor() as cursor:
        watermark = engine_watermark_lock(cursor)
        cursor.execute(
            "SELECT patient_id, metric, seq, sample_time, value, raw_value, raw_unit, calibration_id "
            "FROM telemetry_reading WHERE device_id = %s::bigint AND metric = %s "
            "AND sample_time >= %s AND sample_time < %s FOR UPDATE",
            [device.id, CALIBRATED_METRIC, start, end],
        )
        examined = cursor.fetchall()
        changed = []
        for patient_id, metric, seq, sample_time, value, raw_value, raw_unit, calibration_id in examined:
            base = convert[raw_unit](raw_value) if raw_unit in convert else raw_value
            new = coefficients_apply(base, coefficients_for(calibration_id, sample_time, by_id, calibrations))
            if new != value:
                changed.append(_Changed(patient_id, metric, seq, sample_time, value, new))
        reprocessing = Reprocessing.objects.create(
            device=device,
            start=start,
            end=end,
            reason=why,
            actor_username=actor.username,
            at=dt.datetime.now(dt.UTC),
            examined=len(examined),
            changed=len(changed),
        )
        if changed:
            _revise(cursor, device.id, reprocessing.id, changed)
            if not timescale_in_use():
                _rollups_for(cursor, device.id, changed, watermark)
    spans = _patient_spans(changed)
    patients = Patient.objects.in_bulk([patient_id for patient_id, _, _ in spans])
    for patient_id, lo, hi in spans:
        note = Annotation.objects.create(
            patient=patients[patient_id],
            device=device,
            kind=Annotation.Kind.REPROCESSING,
            time=lo,
            text=f"Values reprocessed ({sum(1 for c in changed if c.patient_id == patient_id)} changed): {why}"[:500],
            data={"reprocessing": reprocessing.id, "start": lo.isoformat(), "end": hi.isoformat()},
        )
        annotation_publish(pseudonym=patients[patient_id].pseudonym, note=note)
    if changed:
        readings_reprocessed.send(
            sender=Reprocessing, device_id=device.device_id, spans=spans, reprocessing=reprocessing
        )
    return reprocessing


def _revise(cursor: Any, device_pk: int, reprocessing_id: int, changed: list[_Changed]) -> None:
    """Keep every old value, then update the readings: one statement each, however many rows."""
    cursor.execute(
        "INSERT INTO telemetry_readingrevision "
        "(reprocessing_id, device_id, metric, seq, sample_time, old_value, new_value) "
        "SELECT %s, %s, m, s, t, o, n FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[], "
        "%s::float8[], %s::float8[]) AS u(m, s, t, o, n)",
        [
            reprocessing_id,
            device_pk,
            [c.metric for c in changed],
            [c.seq for c in changed],
            [c.sample_time for c in changed],
            [c.old for c in changed],
            [c.new for c in changed],
        ],
    )
    cursor.execute(
        "UPDATE telemetry_reading r SET value = u.n FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[], "
        "%s::float8[]) AS u(m, s, t, n) WHERE r.device_id = %s::bigint AND r.metric = u.m AND r.seq = u.s "
        "AND r.sample_time = u.t",
        [
            [c.metric for c in changed],
            [c.seq for c in changed],
            [c.sample_time for c in changed],
            [c.new for c in changed],
            device_pk,
        ],
    )


def _rollups_for(cursor: Any, device_pk: int, changed: list[_Changed], watermark: list[int]) -> None:
    by_patient: dict[int | None, list[dt.datetime]] = {}
    for c in changed:
        by_patient.setdefault(c.patient_id, []).append(c.sample_time)
    for patient_pk, times in by_patient.items():
        for resolution, seconds in BUCKET_SECONDS.items():
            buckets = sorted({bucket_floor(t, resolution) for t in times})
            rollups_rebuild(cursor, resolution, seconds, device_pk, patient_pk, buckets, watermark)


def _patient_spans(changed: list[_Changed]) -> list[tuple[int, dt.datetime, dt.datetime]]:
    spans: dict[int, tuple[dt.datetime, dt.datetime]] = {}
    for c in changed:
        if c.patient_id is None:
            continue
        lo, hi = spans.get(c.patient_id, (c.sample_time, c.sample_time))
        spans[c.patient_id] = (min(lo, c.sample_time), max(hi, c.sample_time))
    return [(patient, lo, hi) for patient, (lo, hi) in sorted(spans.items())]


def _annotate(device: Device, at: dt.datetime, text: str, data: dict[str, Any]) -> None:
    """A calibration mark on the chart of whoever wore the device at `at` (none when nobody did)."""
    assignment = (
        Assignment.objects.filter(device=device, start__lte=at)
        .exclude(end__lte=at)
        .select_related("patient")
        .order_by("-start")
        .first()
    )
    if assignment is None:
        return
    patient = assignment.patient
    note = Annotation.objects.create(
        patient=patient, device=device, kind=Annotation.Kind.CALIBRATION, time=at, text=text[:500], data=data
    )
    annotation_publish(pseudonym=patient.pseudonym, note=note)
