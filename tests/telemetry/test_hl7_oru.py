"""ORU^R01 results out, the filling half: the message as hl7apy validates it against v2.6, and the
outbox the engine fills from validated readings (one message per patient and interval, means,
corrections for late readings, nothing without a target)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection, transaction

from telemetry.engine import engine_batch, engine_tick, load_processors
from telemetry.hl7.er7 import header_read, unescape
from telemetry.hl7.oru import Addressing, Observation, Results, oru_build, oru_validate
from telemetry.hl7.outbox import OruClaim, OruProcessor, oru_claim, oru_text
from telemetry.models import Device, OruMessage, Patient, PatientIdentity
from telemetry.selectors import ReadingRow
from tests import factories
from tests.readings import Row, insert_readings

T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)  # an interval boundary (60 s, UTC-aligned)
MRN = "MRN-55012"


def _results(**overrides: Any) -> Results:
    values: dict[str, Any] = {
        "control_id": "PFU00000000000000042",
        "pseudonym": "pt-oru",
        "mrn": MRN,
        "ward": "icu-a",
        "bed": "B|7^x",
        "interval_start": T0,
        "interval_end": T0 + dt.timedelta(seconds=60),
        "observations": [
            Observation("tissue_o2", "lumee^0001", 61.25, 12),
            Observation("spo2", "lumee^0001", 97.0, 12),
            Observation("skin_temp", "thermo-2", 36.4, 6),
            Observation("tissue_po2", "lumee^0001", 41.5, 12),
        ],
    }
    values.update(overrides)
    return Results(**values)


def _obx(message: Any) -> list[Any]:
    order = message.oru_r01_patient_result.oru_r01_order_observation
    return [group.obx for group in order.oru_r01_observation]


def test_the_message_is_a_valid_v2_6_oru_r01_in_pcd_01_style() -> None:
    text = oru_build(_results(), addressing=Addressing(mrn_authority="HOSP", facility="ICU"), at=T0)
    message = oru_validate(text)  # raises on any violation of the v2.6 ORU_R01 structure
    msh = message.msh
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and msh.msh_12.to_er7() == "2.6"
    assert msh.msh_10.to_er7() == "PFU00000000000000042"
    assert msh.msh_21.to_er7() == "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
    assert msh.msh_15.to_er7() == "" and msh.msh_16.to_er7() == ""  # original-mode ACK
    patient = message.oru_r01_patient_result.oru_r01_patient
    assert [f.to_er7() for f in patient.pid.pid_3] == [f"{MRN}^^^HOSP^MR", "pt-oru^^^PERFUSE^PI"]
    assert patient.pid.pid_5.to_er7() == "^^^^^^U"  # the name never leaves Perfuse
    assert patient.oru_r01_visit.pv1.pv1_3.to_er7() == r"icu-a^^B\F\7\S\x"  # escaped by hl7apy
    obr = message.oru_r01_patient_result.oru_r01_order_observation.obr
    assert (obr.obr_7.to_er7(), obr.obr_8.to_er7()) == ("20260302120000+0000", "20260302120100+0000")
    assert obr.obr_4.to_er7() == "182777000^monitoring of patient^SCT" and obr.obr_25.to_er7() == "F"
    rows = [(o.obx_3.cwe_1.to_er7(), o.obx_3.cwe_3.to_er7(), o.obx_5.to_er7(), o.obx_6.to_er7()) for o in _obx(message)]
    assert rows == [
        ("TISSUE_O2", "99PRF", "61.25", "%^%^UCUM"),
        ("150456", "MDC", "97.00", "%^%^UCUM"),
        ("150388", "MDC", "36.40", "Cel^Cel^UCUM"),
        ("TISSUE_PO2", "99PRF", "41.50", "mm[Hg]^mm[Hg]^UCUM"),
    ]
    spo2 = _obx(message)[1]
    assert spo2.obx_3.to_er7() == "150456^MDC_PULS_OXIM_SAT_O2^MDC^59408-5^SpO2 by pulse oximetry^LN"
    assert spo2.obx_18.to_er7() == r"lumee\S\0001^PERFUSE" and spo2.obx_14.to_er7() == "20260302120100+0000"
    assert [o.obx_4.to_er7() for o in _obx(message)] == ["1.1.1.1", "1.1.1.2", "2.1.1.3", "1.1.1.4"]
    assert all(o.obx_11.to_er7() == "F" and o.obx_2.to_er7() == "NM" for o in _obx(message))


def test_without_an_mrn_pid_3_carries_the_pseudonym_alone_and_a_correction_says_c() -> None:
    message = oru_validate(oru_build(_results(mrn="", bed="", correction=True), addressing=Addressing(), at=T0))
    patient = message.oru_r01_patient_result.oru_r01_patient
    assert [f.to_er7() for f in patient.pid.pid_3] == ["pt-oru^^^PERFUSE^PI"]
    assert patient.oru_r01_visit.pv1.pv1_3.to_er7() == "icu-a"
    assert message.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.to_er7() == "C"
    assert {o.obx_11.to_er7() for o in _obx(message)} == {"C"}


@pytest.mark.parametrize("hostile", ["a|b^c", "~d\\e&f", "x\ry\nz", "Zoë 7", "MSH|X"])
def test_values_from_outside_are_escaped_and_read_back_unchanged(hostile: str) -> None:
    results = _results(mrn=hostile, bed=hostile, observations=[Observation("spo2", hostile, 95.0, 1)])
    text = oru_build(results, addressing=Addressing(mrn_authority=hostile, receiving_facility=hostile), at=T0)
    message = oru_validate(text)
    assert len(text.split("\r")) == 5  # MSH PID PV1 OBR OBX: nothing broke a segment or field
    encoding = header_read(text).encoding
    expected = " ".join(hostile.replace("\r", "\n").split("\n"))  # line breaks travel as spaces
    patient = message.oru_r01_patient_result.oru_r01_patient
    assert unescape(patient.pid.pid_3[0].cx_1.to_er7(), encoding) == expected
    assert unescape(patient.pid.pid_3[0].cx_4.to_er7(), encoding) == expected
    assert unescape(patient.oru_r01_visit.pv1.pv1_3.pl_3.to_er7(), encoding) == expected
    assert unescape(_obx(message)[0].obx_18.ei_1.to_er7(), encoding) == expected
    assert unescape(message.msh.msh_6.to_er7(), encoding) == expected


def test_long_ward_and_bed_names_are_cut_to_the_hl7_coded_value_length() -> None:
    text = oru_build(_results(ward="w" * 40, bed="b" * 40), addressing=Addressing(), at=T0)
    pv1 = oru_validate(text).oru_r01_patient_result.oru_r01_patient.oru_r01_visit.pv1
    assert pv1.pv1_3.to_er7() == f"{'w' * 20}^^{'b' * 20}"


def test_a_corrupted_message_fails_validation() -> None:
    text = oru_build(_results(), addressing=Addressing(), at=T0)
    without_pid = "\r".join(s for s in text.split("\r") if not s.startswith("PID"))
    with pytest.raises(Exception, match="PID"):
        oru_validate(without_pid)


# ---- the outbox the engine fills ----------------------------------------------------------------


@pytest.fixture
def oru(settings: Any) -> dict[str, Any]:
    settings.PERFUSE_HL7_ORU_TARGET = "127.0.0.1:9"
    settings.PERFUSE_HL7_ORU_INTERVAL = 60
    settings.PERFUSE_HL7_ORU_GRACE_SECONDS = 10
    factories.ward("icu-oru")
    factories.device(ward_code="icu-oru", device_id="lumee-oru-1", patient="pt-oru-1")
    factories.device(ward_code="icu-oru", device_id="lumee-oru-2", patient="pt-oru-2")
    patient = Patient.objects.get(pseudonym="pt-oru-1")
    patient.bed = "12"
    patient.save(update_fields=["bed"])
    PatientIdentity.objects.create(patient=patient, mrn=MRN, name="Ada Quintero")
    return {
        "patient": patient,
        "other": Patient.objects.get(pseudonym="pt-oru-2"),
        "device": Device.objects.get(device_id="lumee-oru-1"),
        "other_device": Device.objects.get(device_id="lumee-oru-2"),
    }


def _row(device: Device, patient: Patient | None, seq: int, at: dt.datetime, value: float, **kw: Any) -> ReadingRow:
    values: dict[str, Any] = {"metric": "tissue_o2", "signal_quality": 0.9, "calibration_id": None, "firmware": None}
    values.update(kw)
    return ReadingRow(device.pk, patient.pk if patient else None, seq=seq, sample_time=at, value=value, **values)


def _payload_means(message: OruMessage) -> dict[str, float]:
    return {o["metric"]: round(o["mean"], 6) for o in message.payload["observations"]}


@pytest.mark.django_db
def test_each_patient_gets_one_message_per_interval_with_the_means_of_validated_readings(oru: dict[str, Any]) -> None:
    dev, patient, other = oru["device"], oru["patient"], oru["other"]
    at = T0 + dt.timedelta(seconds=5)
    rows = [
        _row(dev, patient, 1, at, 60.0),
        _row(dev, patient, 2, at + dt.timedelta(seconds=10), 64.0, signal_quality=None),  # no quality: kept
        _row(dev, patient, 3, at + dt.timedelta(seconds=20), 5.0, signal_quality=0.2),  # artefact: left out
        _row(dev, patient, 4, at, 97.0, metric="spo2"),
        _row(dev, patient, 5, at, 99.0, metric="spo2"),
        _row(dev, patient, 6, at, 3900.0, metric="battery"),  # device telemetry, not a result
        _row(dev, None, 7, at, 10.0),  # unassigned
        _row(dev, patient, 8, at + dt.timedelta(seconds=60), 70.0),  # the next interval
        _row(oru["other_device"], other, 1, at, 50.0),
    ]
    processor = OruProcessor()
    processor.process(rows, now=T0 + dt.timedelta(seconds=61))
    processor.tick(now=T0 + dt.timedelta(seconds=69))  # the first interval's grace not over yet
    assert not OruMessage.objects.exists()
    processor.tick(now=T0 + dt.timedelta(seconds=71))
    first, second = OruMessage.objects.order_by("id")
    assert {first.patient_id, second.patient_id} == {patient.pk, other.pk}
    mine = first if first.patient_id == patient.pk else second
    assert _payload_means(mine) == {"tissue_o2": 62.0, "spo2": 98.0}
    assert (mine.interval_start, mine.interval_end, mine.correction) == (T0, T0 + dt.timedelta(seconds=60), False)
    assert mine.control_id == f"PFU{mine.pk:017d}" and mine.state == "queued" and mine.message == ""
    assert (mine.payload["pseudonym"], mine.payload["ward"], mine.payload["bed"]) == ("pt-oru-1", "icu-oru", "12")
    assert MRN not in str(mine.payload)  # the MRN is read when the text is built, for the sender only
    processor.tick(now=T0 + dt.timedelta(seconds=72))  # within the second: not even looked at
    processor.tick(now=T0 + dt.timedelta(seconds=200))
    assert OruMessage.objects.count() == 3
    third = OruMessage.objects.order_by("id").last()
    assert third is not None and _payload_means(third) == {"tissue_o2": 70.0}


@pytest.mark.django_db
def test_a_late_reading_sends_the_interval_again_as_a_correction_with_all_its_readings(oru: dict[str, Any]) -> None:
    dev, patient = oru["device"], oru["patient"]
    processor = OruProcessor()
    processor.process([_row(dev, patient, 1, T0, 60.0)], now=T0)
    processor.tick(now=T0 + dt.timedelta(seconds=80))
    processor.process([_row(dev, patient, 2, T0 + dt.timedelta(seconds=30), 66.0)], now=T0 + dt.timedelta(seconds=90))
    processor.tick(now=T0 + dt.timedelta(seconds=95))
    first, correction = OruMessage.objects.order_by("id")
    assert (first.correction, _payload_means(first)) == (False, {"tissue_o2": 60.0})
    assert (correction.correction, _payload_means(correction)) == (True, {"tissue_o2": 63.0})
    assert correction.interval_start == first.interval_start and correction.control_id != first.control_id
    processor.tick(now=T0 + dt.timedelta(seconds=120))
    assert OruMessage.objects.count() == 2  # nothing new: nothing sent again


@pytest.mark.django_db
def test_nothing_is_written_while_no_target_is_configured(oru: dict[str, Any], settings: Any) -> None:
    settings.PERFUSE_HL7_ORU_TARGET = ""
    processor = OruProcessor()
    processor.process([_row(oru["device"], oru["patient"], 1, T0, 60.0)], now=T0)
    processor.tick(now=T0 + dt.timedelta(seconds=600))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_orupartial")
        assert cursor.fetchone()[0] == 0
    assert not OruMessage.objects.exists()


@pytest.mark.django_db
def test_the_sender_builds_the_text_once_with_the_mrn_and_every_attempt_sends_it(oru: dict[str, Any]) -> None:
    processor = OruProcessor()
    processor.process([_row(oru["device"], oru["patient"], 1, T0, 60.0)], now=T0)
    processor.tick(now=T0 + dt.timedelta(seconds=80))
    [claim] = oru_claim(now=T0 + dt.timedelta(seconds=81), limit=10, lease=dt.timedelta(seconds=30))
    text = oru_text(claim=claim, at=T0 + dt.timedelta(seconds=81))
    pid = oru_validate(text).oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3[0].to_er7() == f"{MRN}^^^^MR" and "Quintero" not in text
    assert oru_validate(text).oru_r01_patient_result.oru_r01_patient.oru_r01_visit.pv1.pv1_3.to_er7() == "icu-oru^^12"
    again = OruClaim(claim.message_id, claim.control_id, claim.patient_id, claim.attempt + 1)
    assert oru_text(claim=again, at=T0 + dt.timedelta(hours=1)) == text  # same bytes, same MSH-7


@pytest.mark.django_db(transaction=True)
def test_the_engine_feeds_committed_readings_to_the_outbox(oru: dict[str, Any]) -> None:
    dev, patient = oru["device"], oru["patient"]
    with transaction.atomic(), connection.cursor() as cursor:
        rows = [Row(dev.pk, patient.pk, "spo2", i, T0 + dt.timedelta(seconds=i), 95.0 + i, 0.9) for i in range(1, 4)]
        insert_readings(cursor, rows)
    processors = load_processors()  # the configured list: the ORU processor is in it by default
    assert any(isinstance(p, OruProcessor) for p in processors)
    batch = engine_batch(processors, now=T0 + dt.timedelta(seconds=30))
    assert batch.readings == 3
    engine_tick(processors, now=T0 + dt.timedelta(seconds=75))
    [message] = OruMessage.objects.all()
    assert _payload_means(message) == {"spo2": 97.0}
