"""ORU^R01 (HL7 v2.6, IHE PCD-01 style): one message per patient and results interval, one OBX per
metric and device with the interval's mean of validated readings.

Layout (docs/hl7-results.md, "What a message says", gives every field):

    MSH  PERFUSE → receiving application, ORU^R01^ORU_R01, MSH-10 the outbox row's control id,
         MSH-21 the IHE PCD-01 profile id; no MSH-15/16, so the EHR answers in original mode
    PID  PID-3 the MRN (type MR) when the identity map has one, and the pseudonym (type PI);
         PID-5 "unspecified" (^^^^^^U): the EHR files by MRN, the name never leaves Perfuse
    PV1  inpatient, PV1-3 the ward (point of care) and bed
    OBR  182777000 "monitoring of patient" (SNOMED CT, as PCD-01 does), OBR-7/8 the interval,
         OBR-25 F (or C when late readings changed an interval already sent)
    OBX  NM value, OBX-3 the metric's code, OBX-6 its UCUM unit, OBX-11 F/C, OBX-14 the
         interval's end, OBX-18 the device id

Codes: MDC (ISO/IEEE 11073-10101) where one exists — SpO2 150456 MDC_PULS_OXIM_SAT_O2, skin
temperature 150388 MDC_TEMP_SKIN, each with its LOINC code as the alternate — and Perfuse's own
local code system `99PRF` (HL7 table 0396 reserves "99zzz" for local systems) for tissue O2 and
tissue pO2, which have neither.

Written as ER7 text here and checked with hl7apy. Building through hl7apy's object model cost
~30 ms of CPU a message on an idle core here (~120 ms on the shared machine: bench/hl7.py), which
would cap one sender at a few messages a second; a join of escaped fields costs microseconds. Every
message shape the builder makes is parsed and validated against the v2.6 ORU_R01 structure with
hl7apy in the tests (`oru_validate`), so the library still decides what a valid message is. Every
value that comes from outside this module (MRN, pseudonym, ward, bed, device id, addressing) goes
through the shared ER7 escaping (telemetry/hl7/er7.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from telemetry.hl7.er7 import STANDARD_ENCODING, escape, hl7_time

VERSION = "2.6"
IS_LENGTH = 20
LOCAL_SYSTEM = "99PRF"
NAMESPACE = "PERFUSE"  # assigning authority of pseudonyms (PID-3.4), device ids (OBX-18.2), OBR-3
PCD_01_PROFILE = ("IHE_PCD_001", "IHE PCD", "1.3.6.1.4.1.19376.1.6.1.1.1", "ISO")
MONITORING = ("182777000", "monitoring of patient", "SCT")


@dataclass(frozen=True)
class Code:
    """OBX-3 (identifier, text, system, and an alternate) and OBX-6 (UCUM) of a metric."""

    code: str
    text: str
    system: str
    ucum: str
    alternate: tuple[str, str, str] | None = None


OBSERVATION_CODES: dict[str, Code] = {
    "spo2": Code("150456", "MDC_PULS_OXIM_SAT_O2", "MDC", "%", ("59408-5", "SpO2 by pulse oximetry", "LN")),
    "skin_temp": Code("150388", "MDC_TEMP_SKIN", "MDC", "Cel", ("39106-0", "Temperature of skin", "LN")),
    "tissue_o2": Code("TISSUE_O2", "Tissue oxygen saturation (implanted sensor)", LOCAL_SYSTEM, "%"),
    "tissue_po2": Code("TISSUE_PO2", "Tissue oxygen partial pressure (implanted sensor)", LOCAL_SYSTEM, "mm[Hg]"),
}


@dataclass(frozen=True)
class Observation:
    metric: str
    device_id: str
    mean: float
    count: int


@dataclass(frozen=True)
class Results:
    """What one ORU message says: whose results, where, for which interval, which values."""

    control_id: str
    pseudonym: str
    mrn: str
    ward: str
    bed: str
    interval_start: dt.datetime
    interval_end: dt.datetime
    observations: Sequence[Observation]
    correction: bool = False


@dataclass(frozen=True)
class Addressing:
    """MSH-3..6 and MSH-11 (settings PERFUSE_HL7_*), and PID-3's assigning authority for MRNs."""

    application: str = "PERFUSE"
    facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"
    mrn_authority: str = ""


def oru_build(results: Results, *, addressing: Addressing, at: dt.datetime) -> str:
    """The ER7 text of the ORU^R01 message (segments separated by CR)."""
    status = "C" if results.correction else "F"
    devices = sorted({o.device_id for o in results.observations})
    lines = [_msh(results.control_id, addressing, at), _pid(results, addressing), _pv1(results), _obr(results, status)]
    for index, observation in enumerate(results.observations, start=1):
        sub_id = f"{devices.index(observation.device_id) + 1}.1.1.{index}"
        lines.append(_obx(index, sub_id, observation, status, results.interval_end))
    return "\r".join(lines)


def oru_validate(text: str) -> Message:
    """Parse ER7 text against the v2.6 ORU_R01 structure; hl7apy raises on any violation."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    return message


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from its non-empty fields by number (already ER7 text), trailing empties dropped."""
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def _components(*parts: str) -> str:
    """Components from plain values: each is escaped, trailing empty components are dropped."""
    return "^".join(escape(part) for part in parts).rstrip("^")


def _coded(value: str) -> str:
    """A value of HL7 type IS (namespace ids, point of care, bed): at most 20 characters. Wards and
    beds usually came from the hospital's own ADT (where they were IS too); a longer local name
    is cut rather than have a strict receiver refuse every message of the ward."""
    return value[:IS_LENGTH]


def _msh(control_id: str, addressing: Addressing, at: dt.datetime) -> str:
    # MSH-1 is the field separator itself and MSH-2 the encoding characters: fields from MSH-3.
    fields = {
        1: STANDARD_ENCODING,
        2: escape(_coded(addressing.application)),
        3: escape(_coded(addressing.facility)),
        4: escape(_coded(addressing.receiving_application)),
        5: escape(_coded(addressing.receiving_facility)),
        6: hl7_time(at),
        8: "ORU^R01^ORU_R01",
        9: escape(control_id),
        10: escape(addressing.processing_id),
        11: VERSION,
        20: _components(*PCD_01_PROFILE),
    }
    return _segment("MSH", fields)


def _pid(results: Results, addressing: Addressing) -> str:
    identifiers = [_components(results.pseudonym, "", "", NAMESPACE, "PI")]
    if results.mrn:
        identifiers.insert(0, _components(results.mrn, "", "", _coded(addressing.mrn_authority), "MR"))
    return _segment("PID", {3: "~".join(identifiers), 5: "^^^^^^U"})


def _pv1(results: Results) -> str:
    return _segment("PV1", {2: "I", 3: _components(_coded(results.ward), "", _coded(results.bed))})


def _obr(results: Results, status: str) -> str:
    fields = {
        1: "1",
        3: _components(results.control_id, NAMESPACE),
        4: _components(*MONITORING),
        7: hl7_time(results.interval_start),
        8: hl7_time(results.interval_end),
        25: status,
    }
    return _segment("OBR", fields)


def _obx(index: int, sub_id: str, observation: Observation, status: str, at: dt.datetime) -> str:
    code = OBSERVATION_CODES[observation.metric]
    fields = {
        1: str(index),
        2: "NM",
        3: _components(code.code, code.text, code.system, *(code.alternate or ())),
        4: sub_id,
        5: f"{observation.mean:.2f}",
        6: _components(code.ucum, code.ucum, "UCUM"),
        11: status,
        14: hl7_time(at),
        18: _components(observation.device_id, NAMESPACE),
    }
    return _segment("OBX", fields)
