"""ORU^R01 (HL7 v2.6, IHE PCD-01 style) built with hl7apy: one message per patient and results
interval, one OBX per metric and device with the interval's mean of validated readings.

Layout (docs/hl7.md, "Results out", gives every field):

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
tissue pO2, which have neither. Values that come from outside this module (MRN, pseudonym,
ward, bed, device id) are set as hl7apy datatypes, so hl7apy escapes the encoding characters in
them; the rest is fixed or generated text without any.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment
from hl7apy.parser import parse_message
from hl7apy.v2_6 import ID, IS, ST

from telemetry.hl7.er7 import hl7_time

VERSION = "2.6"
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
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _msh(message.msh, results.control_id, addressing, at)
    group = message.add_group("ORU_R01_PATIENT_RESULT")
    patient = group.add_group("ORU_R01_PATIENT")
    _pid(patient.add_segment("PID"), results, addressing)
    _pv1(patient.add_group("ORU_R01_VISIT").add_segment("PV1"), results)
    order = group.add_group("ORU_R01_ORDER_OBSERVATION")
    status = "C" if results.correction else "F"
    _obr(order.add_segment("OBR"), results, status)
    devices = sorted({o.device_id for o in results.observations})
    for index, observation in enumerate(results.observations, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        sub_id = f"{devices.index(observation.device_id) + 1}.1.1.{index}"
        _obx(obx, index, sub_id, observation, status, results.interval_end)
    return str(message.to_er7())


def oru_validate(text: str) -> Message:
    """Parse ER7 text against the v2.6 ORU_R01 structure; hl7apy raises on any violation."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    return message


def _msh(msh: Segment, control_id: str, addressing: Addressing, at: dt.datetime) -> None:
    msh.msh_3.hd_1 = IS(addressing.application)
    if addressing.facility:
        msh.msh_4.hd_1 = IS(addressing.facility)
    if addressing.receiving_application:
        msh.msh_5.hd_1 = IS(addressing.receiving_application)
    if addressing.receiving_facility:
        msh.msh_6.hd_1 = IS(addressing.receiving_facility)
    # Fixed or generated values (no encoding characters in them) are given as ER7 text.
    msh.msh_7 = hl7_time(at)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id
    msh.msh_11 = addressing.processing_id
    msh.msh_12 = VERSION
    msh.msh_21 = "^".join(PCD_01_PROFILE)


def _pid(pid: Segment, results: Results, addressing: Addressing) -> None:
    if results.mrn:
        mrn = pid.add_field("PID_3")
        mrn.cx_1 = ST(results.mrn)
        if addressing.mrn_authority:
            mrn.cx_4.hd_1 = IS(addressing.mrn_authority)
        mrn.cx_5 = ID("MR")
    pseudonym = pid.add_field("PID_3")
    pseudonym.cx_1 = ST(results.pseudonym)
    pseudonym.cx_4.hd_1 = IS(NAMESPACE)
    pseudonym.cx_5 = ID("PI")
    pid.pid_5 = "^^^^^^U"


def _pv1(pv1: Segment, results: Results) -> None:
    pv1.pv1_2 = "I"
    pv1.pv1_3.pl_1 = IS(results.ward)
    if results.bed:
        pv1.pv1_3.pl_3 = IS(results.bed)


def _obr(obr: Segment, results: Results, status: str) -> None:
    obr.obr_1 = "1"
    obr.obr_3.ei_1 = ST(results.control_id)
    obr.obr_3.ei_2 = IS(NAMESPACE)
    obr.obr_4 = "^".join(MONITORING)
    obr.obr_7 = hl7_time(results.interval_start)
    obr.obr_8 = hl7_time(results.interval_end)
    obr.obr_25 = status


def _obx(obx: Segment, index: int, sub_id: str, observation: Observation, status: str, at: dt.datetime) -> None:
    code = OBSERVATION_CODES[observation.metric]
    obx.obx_1 = str(index)
    obx.obx_2 = "NM"
    obx.obx_3 = "^".join((code.code, code.text, code.system, *(code.alternate or ())))
    obx.obx_4 = sub_id
    obx.obx_5 = f"{observation.mean:.2f}"
    obx.obx_6 = f"{code.ucum}^{code.ucum}^UCUM"
    obx.obx_11 = status
    obx.obx_14 = hl7_time(at)
    # The device id is the device's own string: set as a datatype, so hl7apy escapes it.
    obx.obx_18.ei_1 = ST(observation.device_id)
    obx.obx_18.ei_2 = IS(NAMESPACE)
