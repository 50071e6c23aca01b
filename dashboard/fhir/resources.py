"""FHIR R4 resources as JSON-ready dicts: pure builders, no queries (docs/fhir.md).

Codes: each metric's codings come from telemetry.codes (the project's metric code system first,
LOINC/MDC where they exist), units in UCUM. An aggregated Observation (a 1-minute or 1-hour
bucket) carries its mean as the value, and its minimum, maximum and reading count as components
coded with HL7's observation-statistics code system, so a short desaturation is never hidden by
the mean; an extension names the resolution (raw, 1m, 1h). Errors are OperationOutcome resources
(config.api_errors.operation_outcome) whose issue carries the stable Perfuse error code beside
FHIR's issue type.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from config.live import iso
from dashboard.fhir.ids import BucketId, bucket_id, raw_id
from telemetry.codes import (
    METRIC_SYSTEM,
    PIPELINE_VERSION,
    UCUM,
    VITAL_SIGNS,
    metric_codings,
    ucum_code,
)
from telemetry.selectors import ReadingSource, StoredReading
from telemetry.units import METRICS

FHIR_VERSION = "4.0.1"
PSEUDONYM_SYSTEM = "urn:perfuse:pseudonym"
DEVICE_SYSTEM = "urn:perfuse:device"
RESOLUTION_EXTENSION = "https://perfuse.example/fhir/StructureDefinition/resolution"
CALIBRATION_EXTENSION = "https://perfuse.example/fhir/StructureDefinition/calibration"
STATISTICS = "http://terminology.hl7.org/CodeSystem/observation-statistics"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SIGNAL_QUALITY = "signal_quality"  # a component code in METRIC_SYSTEM (0..1)


def information_outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


def _concept(metric: str) -> dict[str, Any]:
    return {
        "coding": [{"system": c.system, "code": c.code, "display": c.display} for c in metric_codings(metric)],
        "text": METRICS[metric].label,
    }


def _quantity(metric: str, value: float) -> dict[str, Any]:
    return {"value": value, "unit": METRICS[metric].symbol, "system": UCUM, "code": ucum_code(metric)}


def _ratio_quantity(value: float) -> dict[str, Any]:
    return {"value": round(value, 4), "unit": "1", "system": UCUM, "code": "1"}


def _component(system: str, code: str, display: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"code": {"coding": [{"system": system, "code": code, "display": display}]}, **value}


def _observation_base(observation_id: str, metric: str, pseudonym: str, resolution: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id,
        "extension": [{"url": RESOLUTION_EXTENSION, "valueCode": resolution}],
        "status": "final",
    }
    if metric in VITAL_SIGNS:
        base["category"] = [{"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}]
    base["code"] = _concept(metric)
    base["subject"] = {"reference": f"Patient/{pseudonym}"}
    return base


def observation_raw(reading: StoredReading, *, pseudonym: str) -> dict[str, Any]:
    """One stored reading: its value, time, device and signal quality."""
    observation_id = raw_id(
        device_pk=reading.device_pk, metric=reading.metric, seq=reading.seq, sample_time=reading.sample_time
    )
    resource = _observation_base(observation_id, reading.metric, pseudonym, "raw")
    resource["meta"] = {"lastUpdated": iso(reading.ingest_time)}
    resource["effectiveDateTime"] = iso(reading.sample_time)
    resource["issued"] = iso(reading.ingest_time)
    resource["valueQuantity"] = _quantity(reading.metric, reading.value)
    resource["device"] = {"reference": f"Device/{reading.device_id}"}
    if reading.signal_quality is not None:
        resource["component"] = [
            _component(
                METRIC_SYSTEM,
                SIGNAL_QUALITY,
                "Signal quality",
                {"valueQuantity": _ratio_quantity(reading.signal_quality)},
            )
        ]
    return resource


def observation_bucket(bucket: dict[str, Any], *, key: BucketId, pseudonym: str) -> dict[str, Any]:
    """One bucket of the history API's series: mean as value; minimum, maximum, count (and mean
    signal quality) as components."""
    metric = key.metric
    observation_id = bucket_id(resolution=key.resolution, patient_pk=key.patient_pk, metric=metric, start=key.start)
    resource = _observation_base(observation_id, metric, pseudonym, key.resolution)
    resource["effectivePeriod"] = {"start": iso(key.start), "end": iso(key.end)}
    resource["valueQuantity"] = _quantity(metric, bucket["avg"])
    components = [
        _component(STATISTICS, "minimum", "Minimum", {"valueQuantity": _quantity(metric, bucket["min"])}),
        _component(STATISTICS, "maximum", "Maximum", {"valueQuantity": _quantity(metric, bucket["max"])}),
        _component(STATISTICS, "count", "Count", {"valueInteger": int(bucket["count"])}),
    ]
    if bucket.get("quality") is not None:
        components.append(
            _component(
                METRIC_SYSTEM,
                SIGNAL_QUALITY,
                "Signal quality (mean)",
                {"valueQuantity": _ratio_quantity(bucket["quality"])},
            )
        )
    resource["component"] = components
    return resource


@dataclass(frozen=True)
class PatientView:
    pseudonym: str
    active: bool
    name: str = ""
    mrn: str = ""
    date_of_birth: dt.date | None = None


def patient_resource(patient: PatientView, *, mrn_system: str) -> dict[str, Any]:
    """The pseudonym as identifier; name, MRN and birth date only when revealed to this caller."""
    identifiers: list[dict[str, Any]] = [{"use": "secondary", "system": PSEUDONYM_SYSTEM, "value": patient.pseudonym}]
    if patient.mrn:
        identifiers.append(
            {
                "use": "usual",
                "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "MR", "display": "Medical record number"}]},
                "system": mrn_system,
                "value": patient.mrn,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient.pseudonym,
        "identifier": identifiers,
        "active": patient.active,
    }
    if patient.name:
        resource["name"] = [{"use": "official", "text": patient.name}]
    if patient.date_of_birth is not None:
        resource["birthDate"] = patient.date_of_birth.isoformat()
    return resource


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    ward: str
    active: bool
    firmware: str
    last_seen: dt.datetime | None


def device_resource(device: DeviceView) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device.device_id,
        "identifier": [{"system": DEVICE_SYSTEM, "value": device.device_id}],
        "status": "active" if device.active else "inactive",
        "deviceName": [{"name": device.device_id, "type": "user-friendly-name"}],
        "type": {"text": "Tissue oxygen sensor"},
    }
    if device.firmware:
        resource["version"] = [{"type": {"text": "firmware"}, "value": device.firmware}]
    return resource


@dataclass(frozen=True)
class CalibrationView:
    calibration_id: str
    coefficients: dict[str, Any]
    effective_from: dt.datetime


def _calibration(cal: CalibrationView) -> dict[str, Any]:
    numbers = [
        {"url": str(name), "valueDecimal": float(value)}
        for name, value in sorted(cal.coefficients.items())
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return {
        "extension": [
            {"url": CALIBRATION_EXTENSION, "extension": [{"url": "id", "valueString": cal.calibration_id}, *numbers]}
        ],
        "type": "unspecified",
        "state": "calibrated" if numbers else "unspecified",
        "time": iso(cal.effective_from),
    }


def device_metric_resource(*, device_id: str, metric: str, calibrations: Iterable[CalibrationView]) -> dict[str, Any]:
    """What a device measures; calibrations (oldest first) with their coefficients (an extension:
    R4 has no element for them) and the time they took effect."""
    return {
        "resourceType": "DeviceMetric",
        "id": f"{device_id}.{metric.replace('_', '')}",
        "type": _concept(metric),
        "unit": {"coding": [{"system": UCUM, "code": ucum_code(metric), "display": METRICS[metric].symbol}]},
        "source": {"reference": f"Device/{device_id}"},
        "category": "measurement",
        "calibration": [_calibration(c) for c in calibrations],
    }


def _entity(kind: str, value: str, display: str) -> dict[str, Any]:
    return {
        "role": "source",
        "what": {"identifier": {"system": f"urn:perfuse:{kind}", "value": value}, "display": display},
    }


def provenance_resource(
    *,
    observation_id: str,
    recorded: dt.datetime,
    sources: list[ReadingSource],
    calibrations: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, Any]:
    """Who produced an Observation: each device (with its firmware and calibration) and the
    ingest pipeline's version. `calibrations` maps (device id, calibration id) to coefficients."""
    agents: list[dict[str, Any]] = []
    entities: list[dict[str, Any]] = []
    for device_id in dict.fromkeys(s.device_id for s in sources):
        agents.append(
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "performer", "display": "Performer"}]},
                "who": {"reference": f"Device/{device_id}"},
            }
        )
    for source in sources:
        if source.firmware:
            entities.append(_entity("firmware", source.firmware, f"firmware {source.firmware} of {source.device_id}"))
        if source.calibration_id:
            coefficients = calibrations.get((source.device_id, source.calibration_id), {})
            shown = ", ".join(f"{k}={v}" for k, v in sorted(coefficients.items())) or "no coefficients"
            entities.append(
                _entity(
                    "calibration",
                    source.calibration_id,
                    f"calibration {source.calibration_id} of {source.device_id} ({shown})",
                )
            )
    entities.append(_entity("pipeline", PIPELINE_VERSION, f"Perfuse ingest pipeline {PIPELINE_VERSION}"))
    agents.append(
        {
            "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "assembler", "display": "Assembler"}]},
            "who": {"display": f"Perfuse ingest pipeline {PIPELINE_VERSION}"},
        }
    )
    return {
        "resourceType": "Provenance",
        "id": f"prov-{observation_id}"[:64],
        "target": [{"reference": f"Observation/{observation_id}"}],
        "recorded": iso(recorded),
        "agent": agents,
        "entity": entities,
    }


def searchset(
    entries: list[dict[str, Any]], *, base: str, total: int, self_url: str, next_url: str | None
) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": iso(dt.datetime.now(dt.UTC)),
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base}{e['resourceType']}/{e['id']}", "resource": e, "search": {"mode": "match"}}
            for e in entries
        ],
    }
