"""Provenance of a stored batch: first sightings of firmware and calibrations, and the chart
annotations a change of either puts on the patient's chart (contract section 1).

Runs inside the store step's transaction, after the readings moved; a batch that changes nothing
(the common case) costs no statement here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from telemetry.ingest.auth import DeviceKeyRow
from telemetry.ingest.validate import Row

# An assignment spanning the batch: (patient_id, start, end, pseudonym, ward code).
Span = tuple[int, dt.datetime, dt.datetime | None, str, str]


@dataclass
class AnnotationRow:
    kind: str
    time: dt.datetime
    patient_id: int | None
    text: str
    data: dict[str, Any]
    id: int | None = None


def patient_at(spans: list[Span], t: dt.datetime) -> int | None:
    for patient_id, start, end, _, _ in spans:
        if start <= t and (end is None or t < end):
            return patient_id
    return None


async def provenance_record(
    cur: Any,
    *,
    key: DeviceKeyRow,
    firmware: str | None,
    rows: list[Row],
    state: tuple[Any, ...] | None,
    spans: list[Span],
    known: dict[str, Any],
    now: dt.datetime,
) -> list[AnnotationRow]:
    """Record firmware/calibration first sightings; a change for a device annotates its patient.
    `state` is the device's (firmware, calibration) before this batch, `known` its calibrations."""
    ordered = sorted(rows, key=lambda r: r.sample_time)
    first_time = ordered[0].sample_time
    calibration = _latest_calibration(ordered)
    cal_time = next((r.sample_time for r in ordered if r.calibration_id == calibration), first_time)
    old_firmware, old_calibration = state if state else ("", "")
    annotations: list[AnnotationRow] = []
    if calibration and calibration not in known:
        await cur.execute(
            "INSERT INTO telemetry_calibration (device_id, calibration_id, coefficients, effective_from, created_at) "
            "VALUES (%s, %s, '{}', %s, %s) ON CONFLICT DO NOTHING",
            [key.device_pk, calibration, cal_time, now],
        )
    if firmware and firmware != old_firmware:
        await cur.execute(
            "INSERT INTO telemetry_firmwarerecord (device_id, version, first_seen_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            [key.device_pk, firmware, first_time],
        )
        if old_firmware:
            annotations.append(_change("firmware", first_time, spans, key, old_firmware, firmware))
    if calibration and calibration != old_calibration and old_calibration:
        annotations.append(_change("calibration", cal_time, spans, key, old_calibration, calibration))
    for a in annotations:
        await cur.execute(
            "INSERT INTO telemetry_annotation (patient_id, device_id, kind, time, text, data, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            [a.patient_id, key.device_pk, a.kind, a.time, a.text, orjson.dumps(a.data).decode(), now],
        )
        a.id = (await cur.fetchone())[0]
    firmware, calibration = state_after(firmware=firmware, rows=rows, state=state)
    if (firmware, calibration) != (old_firmware, old_calibration):
        await cur.execute(
            "UPDATE telemetry_devicestate SET firmware = %s, calibration_id = %s WHERE device_id = %s",
            [firmware, calibration, key.device_pk],
        )
    return annotations


def state_after(*, firmware: str | None, rows: list[Row], state: tuple[Any, ...] | None) -> tuple[str, str]:
    """The device's (firmware, calibration) once this batch is recorded: what the next batch of the
    same device in one group commit sees as its `state` (telemetry/ingest/group.py)."""
    old_firmware, old_calibration = state if state else ("", "")
    calibration = _latest_calibration(sorted(rows, key=lambda r: r.sample_time))
    return firmware or old_firmware, calibration or old_calibration


def _latest_calibration(ordered: list[Row]) -> str | None:
    return next((r.calibration_id for r in reversed(ordered) if r.calibration_id), None)


def _change(kind: str, t: dt.datetime, spans: list[Span], key: DeviceKeyRow, old: str, new: str) -> AnnotationRow:
    return AnnotationRow(
        kind=kind,
        time=t,
        patient_id=patient_at(spans, t),
        text=f"{kind.capitalize()} {old} → {new}",
        data={"from": old, "to": new, "device": key.device_id},
    )
