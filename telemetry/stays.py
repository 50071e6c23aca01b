"""Patient flow: admission, transfer, discharge and their cancellations, identity updates, and
which devices measure a patient. The ADT listener (telemetry/hl7/), `admit_patient`,
`discharge_patient` and the ward workflow pages (dashboard/flow.py) all call these.

Each function is one transaction: the rows, one audit event, and a `patient.flow` live frame
(telemetry.events.PatientFlowFrame) queued for after the commit. Content that cannot be applied
raises telemetry.errors.RegistryError with a stable code and changes nothing.

How the rows tell the story (docs/patient-flow.md):
- A PatientStay row per admission and per transfer: [start, end) on a ward, in a bed. `Patient`
  carries the current (or last) stay's ward, bed and times for the many readers that only need
  "where is the patient now". The access layer reads the stays: staff of a ward the patient left
  keep seeing the data of the time the patient lay there (audit/access/policy.py).
- An Assignment row per device and patient: [start, end). Ingest gives a reading to the patient
  whose assignment spans its sample time, so ending the assignments at discharge makes later
  readings of those devices unassigned (kept, as for any device without a patient).
- Discharge (and a cancelled admission) sends telemetry.signals.patient_discharged inside the
  transaction: the alarms app resolves the patient's open alarms in the same commit without
  telemetry importing it. The frame closes the patient's live sockets and drops the card from
  every open ward overview.
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction

from audit.trail import SYSTEM, Actor, audit_record
from config.live import iso, patient_group, publish_after_commit, ward_group
from telemetry.errors import RegistryError
from telemetry.events import PatientFlowFrame
from telemetry.models import Assignment, Device, Patient, PatientIdentity, PatientStay, Ward
from telemetry.signals import patient_discharged, patient_transferred

__all__ = [
    "RegistryError",
    "device_associate",
    "device_release",
    "device_swap",
    "patient_admit",
    "patient_admit_cancel",
    "patient_discharge",
    "patient_discharge_cancel",
    "patient_identity_update",
    "patient_transfer",
]

BED_MAX = 40


def _now(at: dt.datetime | None) -> dt.datetime:
    if at is not None and at.tzinfo is None:
        raise RegistryError("times must carry a UTC offset", code="invalid_time")
    return at or dt.datetime.now(dt.UTC)


def _ward(code: str) -> Ward:
    ward = Ward.objects.filter(code=code).first()
    if ward is None:
        raise RegistryError(f"unknown ward {code!r}", code="unknown_ward")
    return ward


def _bed(bed: str) -> str:
    bed = bed.strip()
    if len(bed) > BED_MAX:
        raise RegistryError(f"a bed label has at most {BED_MAX} characters", code="invalid_bed")
    return bed


def _locked(pseudonym: str) -> Patient:
    patient = Patient.objects.select_for_update().select_related("ward").filter(pseudonym=pseudonym).first()
    if patient is None:
        raise RegistryError(f"unknown patient {pseudonym!r}", code="unknown_patient")
    return patient


def _admitted(pseudonym: str) -> Patient:
    patient = _locked(pseudonym)
    if patient.discharged_at is not None:
        raise RegistryError(
            f"{pseudonym} is not admitted (discharged {iso(patient.discharged_at)})", code="not_admitted"
        )
    return patient


def _device(device_id: str) -> Device:
    device = Device.objects.select_for_update().filter(device_id=device_id).first()
    if device is None:
        raise RegistryError(f"unknown device {device_id!r}", code="unknown_device")
    return device


def _open_stay(patient: Patient) -> PatientStay | None:
    return PatientStay.objects.select_for_update().filter(patient=patient, end__isnull=True).first()


def _stay_close(patient: Patient, now: dt.datetime) -> None:
    stay = _open_stay(patient)
    if stay is None:
        return
    if now < stay.start:
        raise RegistryError(f"{iso(now)} is before the stay began ({iso(stay.start)})", code="before_stay")
    stay.end = now
    stay.save(update_fields=["end"])


def _stay_open(patient: Patient, ward: Ward, bed: str, now: dt.datetime) -> None:
    patient.ward, patient.bed = ward, bed
    PatientStay.objects.create(patient=patient, ward=ward, bed=bed, start=now)


def _identity_set(patient: Patient, *, mrn: str | None, name: str | None, date_of_birth: dt.date | None) -> list[str]:
    """Store the given identity fields; returns the names of the fields given (never values)."""
    given = {k: v for k, v in (("mrn", mrn), ("name", name), ("date_of_birth", date_of_birth)) if v is not None}
    if not given:
        return []
    if mrn and PatientIdentity.objects.filter(mrn=mrn).exclude(patient=patient).exists():
        raise RegistryError("that MRN belongs to another patient", code="mrn_in_use")
    identity, _ = PatientIdentity.objects.get_or_create(patient=patient)
    for field, value in given.items():
        setattr(identity, field, value)
    identity.save()
    return sorted(given)


def _assignments_end(patient: Patient, now: dt.datetime, *, keep: Device | None = None) -> list[str]:
    """End the patient's open device assignments (but `keep`'s); returns the device ids."""
    open_ = Assignment.objects.select_for_update().select_related("device").filter(patient=patient, end__isnull=True)
    ended = [a for a in open_ if keep is None or a.device_id != keep.id]
    for assignment in ended:
        assignment.end = max(now, assignment.start)
        assignment.save(update_fields=["end"])
    return sorted(a.device.device_id for a in ended)


def _device_attach(patient: Patient, device: Device, now: dt.datetime, *, steal: bool) -> bool:
    """Assign `device` to the patient from `now`; False when it already was. A device measures
    one patient at a time: with `steal` its assignment to someone else ends now, else that is
    refused (the workflow must release it from the other patient first)."""
    current = Assignment.objects.select_for_update().filter(device=device, end__isnull=True).first()
    if current is not None and current.patient_id == patient.id:
        return False
    if current is not None:
        if not steal:
            raise RegistryError(f"{device.device_id} is assigned to another patient", code="device_in_use")
        current.end = max(now, current.start)
        current.save(update_fields=["end"])
    Assignment.objects.create(device=device, patient=patient, start=now)
    return True


def _publish(patient: Patient, event: str, now: dt.datetime, *, previous_ward: str = "") -> None:
    groups = [patient_group(patient.pseudonym), ward_group(patient.ward.code)]
    if previous_ward and previous_ward != patient.ward.code:
        groups.append(ward_group(previous_ward))
    frame = PatientFlowFrame(
        patient=patient.pseudonym,
        event=event,
        ward=patient.ward.code,
        bed=patient.bed,
        at=iso(now),
        previous_ward=previous_ward,
    )
    publish_after_commit(groups, frame)


# ---- admission ----------------------------------------------------------------------------


def _admission(patient: Patient, ward: Ward, bed: str, now: dt.datetime) -> tuple[str, str]:
    """Put an existing patient on `ward` for an admission: (event, previous ward code)."""
    if patient.discharged_at is not None:
        if now < patient.discharged_at:
            raise RegistryError("a readmission cannot begin before the last discharge", code="before_stay")
        patient.discharged_at, patient.admitted_at = None, now
        _stay_open(patient, ward, bed, now)
        return "admitted", ""
    if patient.ward_id != ward.id:
        previous = patient.ward.code
        _stay_close(patient, now)
        _stay_open(patient, ward, bed, now)
        return "transferred", previous
    if bed and bed != patient.bed:
        _stay_close(patient, now)
        _stay_open(patient, ward, bed, now)
    return "admitted", ""


@transaction.atomic
def patient_admit(
    *,
    pseudonym: str,
    ward_code: str,
    device_id: str | None = None,
    mrn: str | None = None,
    name: str | None = None,
    date_of_birth: dt.date | None = None,
    bed: str = "",
    actor: Actor = SYSTEM,
    at: dt.datetime | None = None,
) -> Patient:
    """Create or readmit a subject on `ward_code` from `at` (default now); with `device_id`, that
    device measures the patient from then on (and no other one: an admission names the device).

    Admitting a patient who is on another ward moves them (a transfer, with its stays); on the
    same ward it changes the bed when one is given. A device assigned to someone else moves to
    this patient (the command-line admission's meaning since the first release)."""
    now = _now(at)
    ward = _ward(ward_code)
    bed = _bed(bed)
    device = _device(device_id) if device_id is not None else None
    patient = Patient.objects.select_for_update().select_related("ward").filter(pseudonym=pseudonym).first()
    event, previous, previous_ward_id = "admitted", "", 0
    if patient is None:
        patient = Patient.objects.create(pseudonym=pseudonym, ward=ward, bed=bed, admitted_at=now)
        PatientStay.objects.create(patient=patient, ward=ward, bed=bed, start=now)
    else:
        previous_ward_id = patient.ward_id
        event, previous = _admission(patient, ward, bed, now)
        patient.save(update_fields=["ward", "bed", "admitted_at", "discharged_at"])
    identity = _identity_set(patient, mrn=mrn, name=name, date_of_birth=date_of_birth)
    if device is not None:
        _assignments_end(patient, now, keep=device)
        _device_attach(patient, device, now, steal=True)
    audit_record(
        actor=actor,
        action="patient.admitted",
        subject=patient.pseudonym,
        detail={
            "ward": ward.code,
            "bed": patient.bed,
            "device": device.device_id if device else None,
            "identity_set": bool(identity),
            "identity_fields": identity,
            "from_ward": previous,
        },
    )
    if previous:
        patient_transferred.send(
            sender=Patient, patient=patient, previous_ward_id=previous_ward_id, at=now, actor=actor
        )
    _publish(patient, event, now, previous_ward=previous)
    return patient


@transaction.atomic
def patient_admit_cancel(*, pseudonym: str, actor: Actor = SYSTEM) -> Patient:
    """The admission was entered in error (ADT A11): the stay ends now and the patient leaves the
    ward with the effects of a discharge; the rows of the stay stay (nothing is erased)."""
    now = dt.datetime.now(dt.UTC)
    patient = _admitted(pseudonym)
    devices = _leave(patient, now, cause="admit_cancelled", actor=actor)
    audit_record(
        actor=actor,
        action="patient.admit_cancelled",
        subject=patient.pseudonym,
        detail={"ward": patient.ward.code, "bed": patient.bed, "devices": devices},
    )
    _publish(patient, "admit_cancelled", now)
    return patient


# ---- transfer -----------------------------------------------------------------------------


@transaction.atomic
def patient_transfer(
    *, pseudonym: str, ward_code: str, bed: str = "", actor: Actor = SYSTEM, at: dt.datetime | None = None
) -> Patient:
    """Move an admitted patient to `ward_code` (and `bed`) from `at` (default now). Devices go
    with the patient. From `at` on the new ward's staff see the patient; the old ward's staff
    keep the data of the stay that was theirs. The same ward and bed again changes nothing."""
    now = _now(at)
    ward = _ward(ward_code)
    bed = _bed(bed)
    patient = _admitted(pseudonym)
    if patient.ward_id == ward.id and patient.bed == bed:
        return patient
    previous = patient.ward
    _stay_close(patient, now)
    _stay_open(patient, ward, bed, now)
    patient.save(update_fields=["ward", "bed"])
    audit_record(
        actor=actor,
        action="patient.transferred",
        subject=patient.pseudonym,
        detail={"from_ward": previous.code, "ward": ward.code, "bed": bed, "at": iso(now)},
    )
    if previous.id != ward.id:
        patient_transferred.send(sender=Patient, patient=patient, previous_ward_id=previous.id, at=now, actor=actor)
    _publish(patient, "transferred", now, previous_ward=previous.code)
    return patient


# ---- discharge ----------------------------------------------------------------------------


def _leave(patient: Patient, now: dt.datetime, *, cause: str, actor: Actor) -> list[str]:
    """End the stay and the device assignments at `now`; the receivers of patient_discharged act
    in this transaction. Returns the devices released."""
    _stay_close(patient, now)
    patient.discharged_at = now
    patient.save(update_fields=["discharged_at"])
    devices = _assignments_end(patient, now)
    patient_discharged.send(sender=Patient, patient=patient, at=now, actor=actor, cause=cause)
    return devices


@transaction.atomic
def patient_discharge(*, pseudonym: str, actor: Actor = SYSTEM, at: dt.datetime | None = None) -> Patient:
    """End the patient's stay at `at` (default now): device assignments end (the devices' later
    readings are stored unassigned), open alarms resolve with cause `discharged`, live sockets of
    the patient close and the ward overviews drop the card. History stays readable to those
    allowed (audit/access/policy.py)."""
    now = _now(at)
    patient = _admitted(pseudonym)
    devices = _leave(patient, now, cause="discharged", actor=actor)
    audit_record(
        actor=actor,
        action="patient.discharged",
        subject=patient.pseudonym,
        detail={"ward": patient.ward.code, "bed": patient.bed, "devices": devices, "at": iso(now)},
    )
    _publish(patient, "discharged", now)
    return patient


@transaction.atomic
def patient_discharge_cancel(*, pseudonym: str, actor: Actor = SYSTEM) -> Patient:
    """The discharge was entered in error (ADT A13): the last stay is open again and the patient
    back on the ward's overview. Devices are not re-associated (they may measure someone else by
    now) and resolved alarms stay resolved; the workflow associates a device again."""
    patient = _locked(pseudonym)
    if patient.discharged_at is None:
        raise RegistryError(f"{pseudonym} is not discharged", code="not_discharged")
    stay = PatientStay.objects.select_for_update().filter(patient=patient).order_by("-start").first()
    if stay is not None:
        stay.end = None
        stay.save(update_fields=["end"])
    discharged_at = patient.discharged_at
    patient.discharged_at = None
    patient.save(update_fields=["discharged_at"])
    now = dt.datetime.now(dt.UTC)
    audit_record(
        actor=actor,
        action="patient.discharge_cancelled",
        subject=patient.pseudonym,
        detail={"ward": patient.ward.code, "bed": patient.bed, "discharged_at": iso(discharged_at)},
    )
    _publish(patient, "discharge_cancelled", now)
    return patient


# ---- identity and devices -----------------------------------------------------------------


@transaction.atomic
def patient_identity_update(
    *,
    pseudonym: str,
    mrn: str | None = None,
    name: str | None = None,
    date_of_birth: dt.date | None = None,
    actor: Actor = SYSTEM,
) -> Patient:
    """Correct the identity behind a pseudonym (ADT A08). The audit event names the fields, never
    their values (the identity map is read only through identity_reveal)."""
    patient = _locked(pseudonym)
    fields = _identity_set(patient, mrn=mrn, name=name, date_of_birth=date_of_birth)
    audit_record(actor=actor, action="patient.identity_updated", subject=patient.pseudonym, detail={"fields": fields})
    return patient


@transaction.atomic
def device_associate(
    *, pseudonym: str, device_id: str, actor: Actor = SYSTEM, at: dt.datetime | None = None
) -> Patient:
    """The device measures the admitted patient from `at` (default now), beside any others it
    has. A device measuring someone else is refused (`device_in_use`): release it first."""
    now = _now(at)
    patient = _admitted(pseudonym)
    device = _device(device_id)
    if _device_attach(patient, device, now, steal=False):
        audit_record(
            actor=actor,
            action="device.associated",
            subject=patient.pseudonym,
            detail={"device": device.device_id, "ward": patient.ward.code, "at": iso(now)},
        )
        _publish(patient, "devices", now)
    return patient


@transaction.atomic
def device_release(*, device_id: str, actor: Actor = SYSTEM, at: dt.datetime | None = None) -> Patient | None:
    """The device stops measuring its patient at `at` (default now); its later readings are stored
    unassigned. Returns the patient it measured, or None when it measured no one."""
    now = _now(at)
    device = _device(device_id)
    current = (
        Assignment.objects.select_for_update()
        .select_related("patient__ward")
        .filter(device=device, end__isnull=True)
        .first()
    )
    if current is None:
        return None
    if now < current.start:
        raise RegistryError(f"{iso(now)} is before the assignment began", code="before_stay")
    current.end = now
    current.save(update_fields=["end"])
    patient = current.patient
    audit_record(
        actor=actor,
        action="device.released",
        subject=patient.pseudonym,
        detail={"device": device.device_id, "ward": patient.ward.code, "at": iso(now)},
    )
    _publish(patient, "devices", now)
    return patient


@transaction.atomic
def device_swap(
    *, pseudonym: str, old_device_id: str, new_device_id: str, actor: Actor = SYSTEM, at: dt.datetime | None = None
) -> Patient:
    """Replace one of the patient's devices by another at one instant, in one transaction."""
    now = _now(at)
    patient = _admitted(pseudonym)
    current = Assignment.objects.filter(device__device_id=old_device_id, patient=patient, end__isnull=True).exists()
    if not current:
        raise RegistryError(f"{old_device_id} does not measure {pseudonym}", code="device_not_assigned")
    device_release(device_id=old_device_id, actor=actor, at=now)
    return device_associate(pseudonym=pseudonym, device_id=new_device_id, actor=actor, at=now)
