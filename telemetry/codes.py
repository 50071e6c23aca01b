"""How Perfuse names its measurements to other systems (FHIR, HL7 v2): one coding list per metric,
the UCUM unit, and the version of the pipeline that produced a stored value.

Every metric carries the project's own code first (system METRIC_SYSTEM, code = the metric's
name), so a client can always select by it; standard codes follow where one really means the
same quantity: SpO2 by pulse oximetry (LOINC 59408-5 and the vital-signs 2708-6, MDC 150456
MDC_PULS_OXIM_SAT_O2) and skin temperature (MDC 150388 MDC_TEMP_SKIN; LOINC's "Temperature of
Skin" 39106-0 is a nominal finding, warm or cold, so it is not used for a value in °C). Tissue O2
and tissue pO2 from an implanted sensor, and the sensor's battery voltage, have no LOINC or MDC
term; they have the project's code only (docs/fhir.md lists the code system).
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry.units import METRICS

METRIC_SYSTEM = "https://perfuse.example/fhir/CodeSystem/metric"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"

# Bumped whenever validation, unit conversion or calibration change what a stored value means,
# so provenance (FHIR Provenance, archive manifests) can say which rules produced a value.
PIPELINE_VERSION = "perfuse-ingest/1"


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str


_STANDARD: dict[str, tuple[Coding, ...]] = {
    "spo2": (
        Coding(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        Coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood"),
        Coding(MDC, "150456", "MDC_PULS_OXIM_SAT_O2"),
    ),
    "skin_temp": (Coding(MDC, "150388", "MDC_TEMP_SKIN"),),
}

# Metrics measured on the patient (FHIR category vital-signs); the battery is the sensor's.
VITAL_SIGNS = frozenset({"tissue_o2", "tissue_po2", "spo2", "skin_temp"})


# Canonical units (telemetry.units) in UCUM's case-sensitive syntax; they agree but for mmHg.
_UCUM = {"mmHg": "mm[Hg]"}


def ucum_code(metric: str) -> str:
    canonical = METRICS[metric].canonical
    return _UCUM.get(canonical, canonical)


def metric_codings(metric: str) -> tuple[Coding, ...]:
    """The project's code for `metric`, then the standard codes that mean the same quantity."""
    own = Coding(METRIC_SYSTEM, metric, METRICS[metric].label)
    return (own, *_STANDARD.get(metric, ()))


def metric_for_code(*, system: str | None, code: str) -> list[str]:
    """The metrics a (system, code) token names; system None matches any system (FHIR `code=X`)."""
    return [
        metric
        for metric in METRICS
        if any(c.code == code and (system is None or c.system == system) for c in metric_codings(metric))
    ]
