"""Patient-flow services (telemetry/stays.py) on the real PostgreSQL: stays, beds, devices, the
audit events, the refusals, and the readings of a device after its patient left."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from telemetry.models import Assignment, Patient, PatientIdentity, PatientStay, Ward
from telemetry.selectors import devices_by_patient, patient_by_mrn, patient_stays
from telemetry.signals import patient_discharged, patient_transferred
from telemetry.stays import (
    RegistryError,
    device_associate,
    device_release,
    device_swap,
    patient_admit,
    patient_admit_cancel,
    patient_discharge,
    patient_discharge_cancel,
    patient_identity_update,
    patient_transfer,
)
from tests import factories

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def _at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def _events(action: str, subject: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, subject=subject).order_by("id"))


def _open_devices(pseudonym: str) -> list[str]:
    patient = Patient.objects.get(pseudonym=pseudonym)
    return devices_by_patient(patient_ids=[patient.id])[patient.id]


def test_admit_without_a_device_creates_a_stay_with_a_bed(ward_a: Ward) -> None:
    patient = patient_admit(pseudonym="p-flow-1", ward_code=ward_a.code, bed="12B", mrn="M-1", at=_at(0))
    assert (patient.ward_id, patient.bed, patient.admitted_at, patient.discharged_at) == (
        ward_a.id,
        "12B",
        _at(0),
        None,
    )
    stays = patient_stays(patient_id=patient.id)
    assert [(s.ward_id, s.bed, s.start, s.end) for s in stays] == [(ward_a.id, "12B", _at(0), None)]
    assert _open_devices("p-flow-1") == []
    [event] = _events("patient.admitted", "p-flow-1")
    assert event.detail["device"] is None and event.detail["bed"] == "12B"
    assert event.detail["identity_fields"] == ["mrn"]
    assert "M-1" not in str(event.detail)  # the identity itself never enters the trail
    assert patient_by_mrn("M-1") == patient
    assert patient_by_mrn("M-unknown") is None and patient_by_mrn("") is None


def test_admit_with_a_device_assigns_it_and_replaces_the_patients_others(ward_a: Ward) -> None:
    first, second = factories.device(ward_a.code).device_id, factories.device(ward_a.code).device_id
    patient_admit(pseudonym="p-flow-2", ward_code=ward_a.code, device_id=first, at=_at(0))
    patient_admit(pseudonym="p-flow-2", ward_code=ward_a.code, device_id=second, at=_at(5))
    assert _open_devices("p-flow-2") == [second]
    assert Assignment.objects.get(device__device_id=first).end == _at(5)


def test_unknown_ward_device_and_bad_bed_change_nothing(ward_a: Ward) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ward_code": "nowhere"}, "unknown_ward"),
        ({"ward_code": ward_a.code, "device_id": "no-such-device"}, "unknown_device"),
        ({"ward_code": ward_a.code, "bed": "x" * 41}, "invalid_bed"),
        ({"ward_code": ward_a.code, "at": dt.datetime(2026, 3, 1, 8, 0)}, "invalid_time"),
    ]
    for kwargs, code in cases:
        with pytest.raises(RegistryError) as caught:
            patient_admit(pseudonym="p-flow-3", **kwargs)
        assert caught.value.code == code
    assert not Patient.objects.filter(pseudonym="p-flow-3").exists()


def test_transfer_closes_the_stay_and_opens_one_on_the_new_ward(ward_a: Ward, ward_b: Ward) -> None:
    device = factories.device(ward_a.code).device_id
    patient_admit(pseudonym="p-flow-4", ward_code=ward_a.code, device_id=device, bed="1", at=_at(0))
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    patient_transferred.connect(receiver)
    try:
        patient = patient_transfer(pseudonym="p-flow-4", ward_code=ward_b.code, bed="7", at=_at(30))
    finally:
        patient_transferred.disconnect(receiver)
    assert (patient.ward_id, patient.bed) == (ward_b.id, "7")
    stays = [(s.ward_id, s.bed, s.start, s.end) for s in patient_stays(patient_id=patient.id)]
    assert stays == [(ward_a.id, "1", _at(0), _at(30)), (ward_b.id, "7", _at(30), None)]
    assert _open_devices("p-flow-4") == [device]  # the device goes with the patient
    [event] = _events("patient.transferred", "p-flow-4")
    assert (event.detail["from_ward"], event.detail["ward"]) == (ward_a.code, ward_b.code)
    assert [r["previous_ward_id"] for r in received] == [ward_a.id]
    # The same ward and bed again is no change and no event.
    patient_transfer(pseudonym="p-flow-4", ward_code=ward_b.code, bed="7", at=_at(40))
    assert len(_events("patient.transferred", "p-flow-4")) == 1
    with pytest.raises(RegistryError) as caught:
        patient_transfer(pseudonym="p-flow-4", ward_code=ward_a.code, at=_at(10))  # before the stay began
    assert caught.value.code == "before_stay"


def test_discharge_ends_stay_and_devices_and_signals_once(ward_a: Ward) -> None:
    device = factories.device(ward_a.code).device_id
    patient_admit(pseudonym="p-flow-5", ward_code=ward_a.code, device_id=device, at=_at(0))
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    patient_discharged.connect(receiver)
    try:
        patient = patient_discharge(pseudonym="p-flow-5", at=_at(60))
    finally:
        patient_discharged.disconnect(receiver)
    assert patient.discharged_at == _at(60)
    assert PatientStay.objects.get(patient=patient).end == _at(60)
    assert Assignment.objects.get(device__device_id=device).end == _at(60)
    assert [(r["patient"].pseudonym, r["cause"], r["at"]) for r in received] == [("p-flow-5", "discharged", _at(60))]
    [event] = _events("patient.discharged", "p-flow-5")
    assert event.detail["devices"] == [device]
    with pytest.raises(RegistryError) as caught:
        patient_discharge(pseudonym="p-flow-5")
    assert caught.value.code == "not_admitted"
    with pytest.raises(RegistryError) as caught:
        patient_discharge(pseudonym="p-nobody")
    assert caught.value.code == "unknown_patient"


def test_discharge_cancel_reopens_the_last_stay_and_readmission_opens_a_new_one(ward_a: Ward) -> None:
    patient_admit(pseudonym="p-flow-6", ward_code=ward_a.code, at=_at(0))
    patient_discharge(pseudonym="p-flow-6", at=_at(10))
    patient = patient_discharge_cancel(pseudonym="p-flow-6")
    assert patient.discharged_at is None
    assert [s.end for s in patient_stays(patient_id=patient.id)] == [None]
    assert len(_events("patient.discharge_cancelled", "p-flow-6")) == 1
    with pytest.raises(RegistryError) as caught:
        patient_discharge_cancel(pseudonym="p-flow-6")
    assert caught.value.code == "not_discharged"
    patient_discharge(pseudonym="p-flow-6", at=_at(20))
    patient = patient_admit(pseudonym="p-flow-6", ward_code=ward_a.code, bed="3", at=_at(90))
    assert (patient.admitted_at, patient.discharged_at) == (_at(90), None)
    assert [(s.start, s.end) for s in patient_stays(patient_id=patient.id)] == [(_at(0), _at(20)), (_at(90), None)]


def test_admit_cancel_leaves_the_ward_like_a_discharge(ward_a: Ward) -> None:
    device = factories.device(ward_a.code).device_id
    patient_admit(pseudonym="p-flow-7", ward_code=ward_a.code, device_id=device)
    causes: list[str] = []

    def receiver(**kwargs: Any) -> None:
        causes.append(kwargs["cause"])

    patient_discharged.connect(receiver)
    try:
        patient = patient_admit_cancel(pseudonym="p-flow-7")
    finally:
        patient_discharged.disconnect(receiver)
    assert patient.discharged_at is not None
    assert causes == ["admit_cancelled"]
    assert _open_devices("p-flow-7") == []
    assert len(_events("patient.admit_cancelled", "p-flow-7")) == 1


def test_identity_update_and_mrn_uniqueness(ward_a: Ward) -> None:
    patient_admit(pseudonym="p-flow-8", ward_code=ward_a.code, mrn="M-8")
    patient_admit(pseudonym="p-flow-9", ward_code=ward_a.code, mrn="M-9")
    patient_identity_update(pseudonym="p-flow-8", name="Ada Example", date_of_birth=dt.date(1970, 5, 4))
    identity = PatientIdentity.objects.get(patient__pseudonym="p-flow-8")
    assert (identity.mrn, identity.name, identity.date_of_birth) == ("M-8", "Ada Example", dt.date(1970, 5, 4))
    [event] = _events("patient.identity_updated", "p-flow-8")
    assert event.detail == {"fields": ["date_of_birth", "name"]}
    with pytest.raises(RegistryError) as caught:
        patient_identity_update(pseudonym="p-flow-8", mrn="M-9")
    assert caught.value.code == "mrn_in_use"
    assert PatientIdentity.objects.get(patient__pseudonym="p-flow-8").mrn == "M-8"


def test_associate_release_and_swap(ward_a: Ward) -> None:
    one, two, three = (factories.device(ward_a.code).device_id for _ in range(3))
    patient_admit(pseudonym="p-flow-10", ward_code=ward_a.code, at=_at(0))
    patient_admit(pseudonym="p-flow-11", ward_code=ward_a.code, device_id=three, at=_at(0))
    device_associate(pseudonym="p-flow-10", device_id=one, at=_at(1))
    device_associate(pseudonym="p-flow-10", device_id=one, at=_at(2))  # already: no second event
    assert _open_devices("p-flow-10") == [one]
    assert len(_events("device.associated", "p-flow-10")) == 1
    with pytest.raises(RegistryError) as caught:
        device_associate(pseudonym="p-flow-10", device_id=three)
    assert caught.value.code == "device_in_use"
    device_swap(pseudonym="p-flow-10", old_device_id=one, new_device_id=two, at=_at(5))
    assert _open_devices("p-flow-10") == [two]
    assert Assignment.objects.get(device__device_id=one).end == _at(5)
    with pytest.raises(RegistryError) as caught:
        device_swap(pseudonym="p-flow-10", old_device_id=one, new_device_id=three)
    assert caught.value.code == "device_not_assigned"
    released = device_release(device_id=two, at=_at(9))
    assert released is not None and released.pseudonym == "p-flow-10"
    assert device_release(device_id=two) is None
    assert _open_devices("p-flow-10") == []
    assert [e.detail["device"] for e in _events("device.released", "p-flow-10")] == [one, two]


def test_discharge_command_prints_the_contract_json(ward_a: Ward, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("admit_patient", "p-flow-12", "--ward", ward_a.code, "--bed", "4", "--json")
    admitted = capsys.readouterr().out
    assert '"device_id": null' in admitted and '"ward": "' + ward_a.code + '"' in admitted
    assert Patient.objects.get(pseudonym="p-flow-12").bed == "4"
    call_command("discharge_patient", "p-flow-12", "--json")
    out = json.loads(capsys.readouterr().out)
    patient = Patient.objects.get(pseudonym="p-flow-12")
    assert set(out) == {"pseudonym", "discharged_at"}
    assert out["pseudonym"] == "p-flow-12"
    assert patient.discharged_at is not None
    assert dt.datetime.fromisoformat(out["discharged_at"]) == patient.discharged_at.replace(
        microsecond=patient.discharged_at.microsecond // 1000 * 1000
    )
