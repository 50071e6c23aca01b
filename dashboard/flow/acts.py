"""The acts of the ward workflow: what a charge nurse (on-call role) or a clinician does at the
bedside when no ADT feed does it, or after it did (picking a patient ADT admitted).

Each act runs in one transaction: the access layer decides (OTP-verified session, a role with
`manage_patient_flow`, the patient's or the admitting ward among the user's wards), then the
telemetry patient-flow service (telemetry/stays.py) writes the rows, its audit event and the
`patient.flow` frame every open overview hears. A refusal, or content the service cannot apply
(an unknown device, a device measuring someone else: a RegistryError, turned into a Refusal
with its code and status 400), rolls the transaction back and is audited once as a denial
(audit.access.refusals.refusals_audited). The confirmation step before each act is a read of
the patient's flow data, audited as `ward.flow.confirm`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from audit.access.policy import FLOW_REFUSED, access_refusal, user_can, ward_flow_authorize, ward_scope
from audit.access.refusals import refusals_audited
from audit.trail import Actor, audit_record
from config.refusal import Refusal
from config.users import StaffUser
from telemetry import stays
from telemetry.errors import RegistryError
from telemetry.models import Assignment, Patient, Ward
from telemetry.selectors import devices_by_patient


@dataclass(frozen=True)
class FlowPatient:
    """A patient as the workflow shows it: where, in which bed, measured by which devices."""

    pseudonym: str
    ward: str
    bed: str
    devices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FlowPage:
    patients: list[FlowPatient]
    admit_wards: list[Ward]  # the user's wards
    wards: list[Ward]  # every ward (transfer destinations)


@contextlib.contextmanager
def _applied(action: str, subject: str) -> Iterator[None]:
    """A RegistryError of the service becomes the act's refusal (400, the error's code)."""
    try:
        yield
    except RegistryError as error:
        raise Refusal(
            action=action, reason=error.code, code=error.code, status=400, detail=str(error), subject=subject[:80]
        ) from error


def _patient_ward(pseudonym: str) -> int | None:
    """The ward of an admitted patient, or None (unknown or discharged: refused alike)."""
    rows = Patient.objects.filter(pseudonym=pseudonym[:40], discharged_at__isnull=True).values_list(
        "ward_id", flat=True
    )
    return rows.first()


def _authorized(user: StaffUser, pseudonym: str, action: str) -> None:
    ward_flow_authorize(user, ward_id=_patient_ward(pseudonym), action=action, subject=pseudonym)


def _flow_patients(patients: list[Patient]) -> list[FlowPatient]:
    devices = devices_by_patient(patient_ids=[p.id for p in patients])
    return [FlowPatient(p.pseudonym, p.ward.code, p.bed, devices[p.id]) for p in patients]


@refusals_audited
def flow_page_read(*, user: StaffUser, actor: Actor) -> FlowPage:
    """The admitted patients of the user's wards, with beds and devices, audited as a read."""
    if not user_can(user, "manage_patient_flow"):
        raise access_refusal(user, action="ward.flow.view", detail=FLOW_REFUSED)
    scope = ward_scope(user)
    patients = list(
        Patient.objects.filter(scope.q(), discharged_at__isnull=True)
        .select_related("ward")
        .order_by("ward__code", "bed", "pseudonym")
    )
    audit_record(actor=actor, action="ward.flow.view", detail={"patients": [p.pseudonym for p in patients]})
    return FlowPage(
        patients=_flow_patients(patients),
        admit_wards=list(Ward.objects.filter(scope.q("id")).order_by("code")),
        wards=list(Ward.objects.order_by("code")),
    )


@refusals_audited
def flow_confirm_read(
    *, user: StaffUser, actor: Actor, act: str, pseudonym: str = "", ward_code: str = ""
) -> FlowPatient | None:
    """What the confirmation step shows before `act`: the patient (None for an admission, which
    is authorized for `ward_code`), audited as a read of the patient's flow data."""
    if not pseudonym:
        ward = Ward.objects.filter(code=ward_code).first()
        ward_flow_authorize(user, ward_id=ward.id if ward else None, action="ward.flow.confirm")
        audit_record(actor=actor, action="ward.flow.confirm", detail={"act": act, "ward": ward_code})
        return None
    _authorized(user, pseudonym, "ward.flow.confirm")
    patient = Patient.objects.select_related("ward").get(pseudonym=pseudonym)
    audit_record(actor=actor, action="ward.flow.confirm", subject=pseudonym, detail={"act": act})
    return _flow_patients([patient])[0]


@refusals_audited
def flow_admit(
    *, user: StaffUser, actor: Actor, ward_code: str, bed: str = "", device_id: str = "", mrn: str = "", name: str = ""
) -> Patient:
    """Admit a new patient (a fresh pseudonym) to one of the user's wards, optionally with a bed,
    a device and the identity (MRN, name) for the restricted identity map."""
    ward = Ward.objects.filter(code=ward_code).first()
    ward_flow_authorize(user, ward_id=ward.id if ward else None, action="patient.admitted")
    pseudonym = stays.pseudonym_new()
    with _applied("patient.admitted", pseudonym):
        patient = stays.patient_admit(
            pseudonym=pseudonym, ward_code=ward_code, mrn=mrn or None, name=name or None, bed=bed, actor=actor
        )
        if device_id:  # associated, not taken: a device measuring someone else is refused
            patient = stays.device_associate(pseudonym=pseudonym, device_id=device_id, actor=actor)
    return patient


@refusals_audited
def flow_associate(*, user: StaffUser, actor: Actor, pseudonym: str, device_id: str) -> Patient:
    _authorized(user, pseudonym, "device.associated")
    with _applied("device.associated", pseudonym):
        return stays.device_associate(pseudonym=pseudonym, device_id=device_id, actor=actor)


@refusals_audited
def flow_swap(*, user: StaffUser, actor: Actor, pseudonym: str, old_device_id: str, new_device_id: str) -> Patient:
    _authorized(user, pseudonym, "device.swapped")
    with _applied("device.swapped", pseudonym):
        return stays.device_swap(
            pseudonym=pseudonym, old_device_id=old_device_id, new_device_id=new_device_id, actor=actor
        )


@refusals_audited
def flow_release(*, user: StaffUser, actor: Actor, pseudonym: str, device_id: str) -> Patient:
    """Take a device off the patient (only one that measures this patient)."""
    _authorized(user, pseudonym, "device.released")
    measures = Assignment.objects.filter(
        device__device_id=device_id, patient__pseudonym=pseudonym, end__isnull=True
    ).exists()
    with _applied("device.released", pseudonym):
        if not measures:
            raise RegistryError(f"{device_id} does not measure {pseudonym}", code="device_not_assigned")
        stays.device_release(device_id=device_id, actor=actor)
    return Patient.objects.get(pseudonym=pseudonym)


@refusals_audited
def flow_transfer(*, user: StaffUser, actor: Actor, pseudonym: str, ward_code: str, bed: str = "") -> Patient:
    """Move a patient of the user's wards to any ward (the sending ward decides)."""
    _authorized(user, pseudonym, "patient.transferred")
    with _applied("patient.transferred", pseudonym):
        return stays.patient_transfer(pseudonym=pseudonym, ward_code=ward_code, bed=bed, actor=actor)


@refusals_audited
def flow_discharge(*, user: StaffUser, actor: Actor, pseudonym: str) -> Patient:
    _authorized(user, pseudonym, "patient.discharged")
    with _applied("patient.discharged", pseudonym):
        return stays.patient_discharge(pseudonym=pseudonym, actor=actor)
