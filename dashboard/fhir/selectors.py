"""Reads behind the FHIR API. Callers have decided access (audit.access.policy) and written the
audit event; these functions read and build resources.

Observation search pages through one patient's series, metric by metric (in telemetry.units
order), each metric at the resolution the history API picks for the span (raw readings when
there are at most `max_points`, else 1-minute, else 1-hour buckets). A search's `next` link pins
the span and the resolutions chosen for its first page (the cursor), so the pages of one search
stay one consistent series even while new readings arrive.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from dashboard.fhir import resources
from dashboard.fhir.ids import BucketId, RawId, bucket_id, raw_id
from telemetry.models import Calibration, Device, DeviceKey, DeviceState, Patient
from telemetry.selectors import (
    ReadingSource,
    Resolution,
    StoredReading,
    reading_get,
    readings_count,
    readings_page,
    readings_sources,
    series_buckets,
    series_resolution,
)

MAX_POINTS = 5000  # the history API's default trace size (dashboard.api.parse_max_points)
CALIBRATED_METRICS = ("tissue_o2",)  # what a calibration's gain and offset apply to (telemetry.ingest.store)


@dataclass(frozen=True)
class SearchPage:
    total: int
    resources: list[dict[str, Any]]
    resolutions: dict[str, Resolution]


def search_resolutions(
    *, patient: Patient, metrics: list[str], start: dt.datetime, end: dt.datetime
) -> dict[str, Resolution]:
    return {
        m: series_resolution(patient_id=patient.id, metric=m, start=start, end=end, max_points=MAX_POINTS)
        for m in metrics
    }


def _bucket_resources(
    patient: Patient, metric: str, resolution: Resolution, buckets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [
        resources.observation_bucket(
            b, key=BucketId(resolution, patient.id, metric, b["t"]), pseudonym=patient.pseudonym
        )
        for b in buckets
    ]


def observation_search(
    *,
    patient: Patient,
    resolutions: dict[str, Resolution],
    start: dt.datetime,
    end: dt.datetime,
    offset: int,
    count: int,
) -> SearchPage:
    """Entries [offset, offset + count) of the patient's Observations in [start, end)."""
    total = 0
    found: list[dict[str, Any]] = []
    for metric, resolution in resolutions.items():
        skip = max(0, offset - total)
        want = count - len(found)
        if resolution == "raw":
            size = readings_count(patient_id=patient.id, metric=metric, start=start, end=end)
            if want > 0 and skip < size:
                rows = readings_page(
                    patient_id=patient.id, metric=metric, start=start, end=end, offset=skip, limit=want
                )
                found.extend(resources.observation_raw(r, pseudonym=patient.pseudonym) for r in rows)
        else:
            buckets = series_buckets(patient_id=patient.id, metric=metric, start=start, end=end, resolution=resolution)
            size = len(buckets)
            if want > 0 and skip < size:
                found.extend(_bucket_resources(patient, metric, resolution, buckets[skip : skip + want]))
        total += size
    return SearchPage(total=total, resources=found, resolutions=resolutions)


@dataclass(frozen=True)
class FoundObservation:
    """What an Observation id names, once looked up: its patient (None for an id that names no
    patient's reading) and, when it exists, the reading or bucket."""

    patient: Patient | None
    reading: StoredReading | None = None
    bucket: dict[str, Any] | None = None


def observation_lookup(key: RawId | BucketId | None) -> FoundObservation:
    if isinstance(key, RawId):
        reading = reading_get(device_pk=key.device_pk, metric=key.metric, seq=key.seq, sample_time=key.sample_time)
        if reading is None or reading.patient_id is None:
            return FoundObservation(None)
        return FoundObservation(Patient.objects.filter(pk=reading.patient_id).first(), reading=reading)
    if isinstance(key, BucketId):
        patient = Patient.objects.filter(pk=key.patient_pk).first()
        if patient is None:
            return FoundObservation(None)
        buckets = series_buckets(
            patient_id=patient.id, metric=key.metric, start=key.start, end=key.end, resolution=key.resolution
        )
        bucket = next((b for b in buckets if b["t"] == key.start), None)
        return FoundObservation(patient, bucket=bucket)
    return FoundObservation(None)


def observation_resource(found: FoundObservation, key: RawId | BucketId) -> dict[str, Any] | None:
    assert found.patient is not None
    if found.reading is not None:
        return resources.observation_raw(found.reading, pseudonym=found.patient.pseudonym)
    if found.bucket is not None and isinstance(key, BucketId):
        return resources.observation_bucket(found.bucket, key=key, pseudonym=found.patient.pseudonym)
    return None


def _coefficients(device_id: str, calibration_id: str) -> dict[str, Any]:
    cal = Calibration.objects.filter(device__device_id=device_id, calibration_id=calibration_id).first()
    return dict(cal.coefficients) if cal is not None and isinstance(cal.coefficients, dict) else {}


def provenance_of(found: FoundObservation, key: RawId | BucketId) -> dict[str, Any] | None:
    """The Provenance of an existing Observation: its device(s), firmware, calibration, pipeline."""
    assert found.patient is not None
    if found.reading is not None:
        r = found.reading
        sources = [ReadingSource(r.device_id, r.firmware, r.calibration_id, 1)]
        observation_id = raw_id(device_pk=r.device_pk, metric=r.metric, seq=r.seq, sample_time=r.sample_time)
        recorded = r.ingest_time
    elif found.bucket is not None and isinstance(key, BucketId):
        sources = readings_sources(patient_id=found.patient.id, metric=key.metric, start=key.start, end=key.end)
        observation_id = bucket_id(
            resolution=key.resolution, patient_pk=key.patient_pk, metric=key.metric, start=key.start
        )
        recorded = min(key.end, dt.datetime.now(dt.UTC))
    else:
        return None
    calibrations = {
        (s.device_id, s.calibration_id): _coefficients(s.device_id, s.calibration_id)
        for s in sources
        if s.calibration_id
    }
    return resources.provenance_resource(
        observation_id=observation_id, recorded=recorded, sources=sources, calibrations=calibrations
    )


def device_view(device: Device) -> resources.DeviceView:
    state = DeviceState.objects.filter(device=device).first()
    active = DeviceKey.objects.filter(device=device, revoked_at__isnull=True).exists()
    return resources.DeviceView(
        device_id=device.device_id,
        ward=device.ward.code,
        active=active,
        firmware=state.firmware if state else "",
        last_seen=state.last_seen_at if state else None,
    )


def device_metrics(device: Device) -> list[dict[str, Any]]:
    """The device's calibrated measurement with every calibration it reported, oldest first."""
    calibrations = [
        resources.CalibrationView(
            c.calibration_id, c.coefficients if isinstance(c.coefficients, dict) else {}, c.effective_from
        )
        for c in Calibration.objects.filter(device=device).order_by("effective_from", "id")
    ]
    return [
        resources.device_metric_resource(device_id=device.device_id, metric=m, calibrations=calibrations)
        for m in CALIBRATED_METRICS
    ]
